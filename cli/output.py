"""How results are shown: Rich for people on stdout, plain JSON for scripts (`--json`).

Results go to stdout; progress, prompts and errors to stderr, so `--json` output can be
piped as it is.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from contextcache.v1 import crypto_pb2, ingest_pb2, query_pb2

# Wide when piped, so ids and paths are never cut or wrapped for the script reading them.
_PIPED_WIDTH = 1000
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # paths unbroken
for _console in (out, err):
    if not _console.is_terminal:
        _console.width = _PIPED_WIDTH


def as_dict(message: Message) -> dict[str, Any]:
    """A message as the API's JSON mapping, with proto field names and every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def when(timestamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp in local time; empty when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return timestamp.ToDatetime().astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _label(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower().replace("_", " ")


def document_status(value: int) -> str:
    return _label(ingest_pb2.DocumentStatus.Name(value), "DOCUMENT_STATUS_")


def source_type(value: int) -> str:
    return _label(ingest_pb2.SourceType.Name(value), "SOURCE_TYPE_")


def audit_event_type(value: int) -> str:
    return _label(crypto_pb2.AuditEventType.Name(value), "AUDIT_EVENT_TYPE_")


def retrieval_mode(value: int) -> str:
    return _label(query_pb2.RetrievalMode.Name(value), "RETRIEVAL_MODE_")


STATUS_STYLES = {
    ingest_pb2.DOCUMENT_STATUS_QUEUED: "cyan",
    ingest_pb2.DOCUMENT_STATUS_PROCESSING: "yellow",
    ingest_pb2.DOCUMENT_STATUS_COMPLETED: "green",
    ingest_pb2.DOCUMENT_STATUS_FAILED: "red",
}


def styled_status(value: int) -> str:
    style = STATUS_STYLES.get(value, "")
    label = document_status(value)
    return f"[{style}]{label}[/]" if style else label


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def progress_bars() -> Progress:
    """Bars on stderr, shown only on a terminal (scripts get the result lines alone)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
    )
