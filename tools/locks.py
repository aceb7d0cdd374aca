"""The dependency locks and their inputs: requirements.in → requirements.txt (runtime) and
requirements-dev.in → requirements-dev.txt (development tools), compiled with hashes by
pip-compile (`make lock`).

    python tools/locks.py stamp   # after pip-compile: record each input's digest in its lock
    python tools/locks.py check   # the locks match their inputs (tests/unit/test_locks.py)

A lock matches its input when it was compiled from the input as it is now (the digest of the
input's requirement lines, comments aside, is the one recorded in the lock), pins every input
requirement at a version the input allows, pins every package exactly with at least one
hash, and (the development lock) agrees with the runtime lock on every package both hold.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"requirements.txt": "requirements.in", "requirements-dev.txt": "requirements-dev.in"}
STAMP = "# input digest (tools/locks.py stamp): "


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]


def input_lines(path: Path) -> list[str]:
    """The requirement and option lines of an input file, without comments or blanks."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def input_requirements(path: Path) -> list[Requirement]:
    return [Requirement(line) for line in input_lines(path) if not line.startswith("-")]


def digest(path: Path) -> str:
    return hashlib.sha256("\n".join(input_lines(path)).encode()).hexdigest()


def read_lock(path: Path) -> dict[str, Pin]:
    """name → pin, from pip-compile's output (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --")
        name, _, version = requirement.strip().partition("==")
        hashes = tuple(o.removeprefix("hash=").strip() for o in options if o.startswith("hash="))
        pins[canonicalize_name(name)] = Pin(name.strip(), version.strip(), hashes)
    return pins


def recorded_digest(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(STAMP):
            return line.removeprefix(STAMP).strip()
    return None


def stamp(root: Path = ROOT) -> None:
    for lock, source in LOCKS.items():
        path = root / lock
        lines = [x for x in path.read_text().splitlines() if not x.startswith(STAMP)]
        # After pip-compile's header (its first comment block).
        end = next(i for i, x in enumerate(lines) if not x.startswith("#"))
        lines.insert(end, f"{STAMP}{digest(root / source)}")
        path.write_text("\n".join(lines) + "\n")


def problems(root: Path = ROOT) -> list[str]:
    found = []
    locks = {lock: read_lock(root / lock) for lock in LOCKS}
    for lock, source in LOCKS.items():
        pins = locks[lock]
        if recorded_digest(root / lock) != digest(root / source):
            found.append(f"{lock} was not compiled from the current {source}: run `make lock`")
        for requirement in input_requirements(root / source):
            pin = pins.get(canonicalize_name(requirement.name))
            if pin is None:
                found.append(f"{lock} does not pin {requirement.name} ({source})")
            elif not requirement.specifier.contains(pin.version, prereleases=True):
                found.append(f"{lock} pins {pin.name}=={pin.version}, {source} wants {requirement}")
        for name, pin in pins.items():
            if not pin.version or not pin.hashes:
                found.append(f"{lock}: {name} is not pinned exactly with a hash")
    runtime, dev = locks["requirements.txt"], locks["requirements-dev.txt"]
    for name in runtime.keys() & dev.keys():
        if runtime[name].version != dev[name].version:
            found.append(
                f"{name}: {runtime[name].version} in requirements.txt, "
                f"{dev[name].version} in requirements-dev.txt"
            )
    return found


def main(argv: list[str]) -> int:
    if argv[1:] == ["stamp"]:
        stamp()
        return 0
    if argv[1:] == ["check"]:
        found = problems()
        for problem in found:
            print(problem, file=sys.stderr)
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
