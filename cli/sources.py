"""What `contextcache ingest` was asked to send: files, folders, URLs and stdin.

Folders are walked recursively in name order, skipping hidden files and folders; the
include/exclude globs are matched against each file's path relative to the folder and
against its name. Files are sent whatever their type: the server decides what it accepts
and says why it refuses a file, so a stray `.doc` is reported, not silently left out.
"""

from __future__ import annotations

import enum
import fnmatch
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.errors import CliError, ExitCode
from contextcache.v1 import ingest_pb2

# The API's upload limit (FileSource.content): a larger file is not read into memory only to
# be refused.
MAX_FILE_BYTES = 50 * 1024 * 1024


class Kind(enum.StrEnum):
    FILE = "file"
    URL = "url"
    TEXT = "text"


class UnreadableSource(Exception):
    """A source that cannot be sent; the message says why."""


@dataclass(frozen=True)
class Source:
    kind: Kind
    label: str  # as the user knows it: the path, the URL, or "stdin"
    path: Path | None = None
    url: str = ""
    title: str = ""
    body: str = ""

    def request(self, project_id: str, background: bool) -> ingest_pb2.IngestDocumentRequest:
        """The request that ingests this source; reads the file now."""
        request = ingest_pb2.IngestDocumentRequest(project_id=project_id, background=background)
        if self.kind is Kind.URL:
            request.url.url = self.url
        elif self.kind is Kind.TEXT:
            request.text.title = self.title
            request.text.body = self.body
        else:
            assert self.path is not None
            request.file.filename = self.path.name
            request.file.content = _read(self.path)
        return request


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UnreadableSource("File too large. Maximum size is 50 MB")
        return path.read_bytes()
    except OSError as error:
        raise UnreadableSource(f"Cannot read the file: {error.strerror or error}") from None


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def collect(
    inputs: Iterable[str],
    include: list[str],
    exclude: list[str],
    stdin_title: str,
) -> list[Source]:
    sources: list[Source] = []
    seen: set[str] = set()

    def add(source: Source) -> None:
        key = str(source.path.resolve()) if source.path else source.url or source.label
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for item in inputs:
        if item == "-":
            add(_from_stdin(stdin_title))
        elif is_url(item):
            add(Source(Kind.URL, item, url=item))
        else:
            path = Path(item)
            if path.is_dir():
                for found in walk(path, include, exclude):
                    add(Source(Kind.FILE, str(found), path=found))
            elif path.exists():
                add(Source(Kind.FILE, item, path=path))
            else:
                raise CliError(f"No such file or folder: {item}", ExitCode.USAGE)
    return sources


def walk(folder: Path, include: list[str], exclude: list[str]) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if include and not _matches(relative, name, include):
                continue
            if _matches(relative, name, exclude):
                continue
            yield path


def _matches(relative: str, name: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(name, pattern) for pattern in patterns
    )


def _from_stdin(title: str) -> Source:
    data = sys.stdin.buffer.read()
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError("stdin is not UTF-8 text.", ExitCode.USAGE) from None
    return Source(Kind.TEXT, "stdin", title=title, body=body)
