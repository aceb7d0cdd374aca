"""What the command line keeps between runs, under one directory readable only by its user.

`$XDG_CONFIG_HOME/contextcache/` (`~/.config/contextcache/` by default):
- `tokens/<project id>.json` — an unlock token and its expiry (mode 0600): whoever reads it
  can read the project's content until it expires, so it is never written any other way;
- `current` — the project `unlock` opened last, used when a command names no project;
- `pins/<project id>.json` — the project's public key and the audit head last verified, so
  `audit verify` detects a swapped key or a truncated chain (trust on first use).

Never stores a passphrase.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "contextcache"


@dataclass(frozen=True)
class StoredToken:
    project_id: str
    project_name: str
    token: str
    expires_at: str  # ISO 8601, UTC

    @property
    def expiry(self) -> datetime:
        return datetime.fromisoformat(self.expires_at)

    @property
    def expired(self) -> bool:
        return self.expiry <= datetime.now(UTC)


@dataclass(frozen=True)
class Pin:
    public_key: str  # base64
    head_seq: int = 0
    head_hash: str = ""  # base64
    head_signature: str = ""  # base64


class LocalState:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or config_dir()

    # -- unlock tokens -----------------------------------------------------------------

    def token_path(self, project_id: str) -> Path:
        return self.root / "tokens" / f"{project_id}.json"

    def save_token(self, token: StoredToken) -> Path:
        path = self.token_path(token.project_id)
        self._write(path, json.dumps(asdict(token)))
        return path

    def token(self, project_id: str) -> StoredToken | None:
        data = _read_json(self.token_path(project_id))
        return StoredToken(**data) if data else None

    def forget_token(self, project_id: str) -> bool:
        path = self.token_path(project_id)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    # -- the current project -----------------------------------------------------------

    def current(self) -> str | None:
        try:
            return (self.root / "current").read_text().strip() or None
        except FileNotFoundError:
            return None

    def set_current(self, project_id: str) -> None:
        self._write(self.root / "current", project_id + "\n")

    def forget_current(self, project_id: str) -> None:
        if self.current() == project_id:
            (self.root / "current").unlink(missing_ok=True)

    # -- audit pins --------------------------------------------------------------------

    def pin(self, project_id: str) -> Pin | None:
        data = _read_json(self.root / "pins" / f"{project_id}.json")
        return Pin(**data) if data else None

    def save_pin(self, project_id: str, pin: Pin) -> None:
        self._write(self.root / "pins" / f"{project_id}.json", json.dumps(asdict(pin)))

    def _write(self, path: Path, text: str) -> None:
        """Into a directory only the owner can enter (the root and its subdirectory)."""
        for directory in (self.root, path.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        _write_private(path, text)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable or corrupt: as if absent; the next save replaces it


def _write_private(path: Path, text: str) -> None:
    """Writes `text` atomically to a file only its owner can read: created 0600 (never wider,
    even for a moment), then renamed over the old one."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
