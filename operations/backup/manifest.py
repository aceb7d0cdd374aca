"""A backup's manifest: what it holds, from which schema, with a checksum per file.

`read_manifest` refuses a backup whose files are missing, altered or truncated before a
restore touches anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from operations.backup.errors import BackupError

MANIFEST = "manifest.json"
FORMAT = 1
_KEY_ID_CONTEXT = b"contextcache backup: token sealing key id\0"


@dataclass
class Manifest:
    database: str  # "sqlite" (the embedded default's files) or "postgresql" (one pg_dump)
    created_at: str
    revisions: dict[str, str | None]
    counts: dict[str, object]
    # Which TOKEN_SEALING_KEY the deployment ran with (a one-way id, never the key): a
    # restore under another key cannot resume unfinished jobs or deliver pending events.
    token_sealing_key_id: str | None
    # Which file of the backup holds each service's tables.
    layout: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, object]] = field(default_factory=dict)
    format: int = FORMAT


def sealing_key_id(encoded_key: str | None) -> str | None:
    if not encoded_key:
        return None
    try:
        key = base64.b64decode(encoded_key, validate=True)
    except (binascii.Error, ValueError):
        return None
    return hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]


def file_digest(path: Path) -> dict[str, object]:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Written last, so a directory without a manifest is an unfinished backup."""
    for name in sorted(set(manifest.layout.values())):
        manifest.files[name] = file_digest(directory / name)
    partial = directory / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
    partial.replace(directory / MANIFEST)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupError(
            f"{directory} is not a finished backup: {MANIFEST} is missing (a backup that "
            "stopped half-way has none)"
        )
    try:
        raw = json.loads(path.read_text())
        manifest = Manifest(**raw)
    except (ValueError, TypeError) as error:
        raise BackupError(f"{path} is not a ContextCache backup manifest ({error})") from None
    if manifest.format != FORMAT:
        raise BackupError(
            f"{path} has format {manifest.format}; this ContextCache reads format {FORMAT}"
        )
    for name, expected in manifest.files.items():
        file = directory / name
        if not file.is_file():
            raise BackupError(f"the backup is incomplete: {file} is missing")
        if file_digest(file) != expected:
            raise BackupError(
                f"the backup is damaged: {file} does not match its checksum in {MANIFEST}"
            )
    return manifest
