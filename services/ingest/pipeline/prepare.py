"""extract → normalize → hash: a document's bytes (or a text body) made ready to store.

Pure and deterministic, like every step of this package; `text_workers` runs it in a worker
process. Never logs document text or titles.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.ingest.pipeline.errors import UnreadableDocument
from services.ingest.pipeline.extract import extract
from services.ingest.pipeline.normalize import content_hash, has_readable_text, normalize_text


@dataclass(frozen=True)
class Prepared:
    """A document's text, ready to store: normalized, hashed and titled."""

    text: str
    content_hash: str
    title: str


def prepare(
    content: bytes,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    fallback_title: str = "",
) -> Prepared:
    """extract → normalize → hash. Raises IngestError for unusable content."""
    extracted = extract(content, content_type=content_type, filename=filename)
    return prepare_text(extracted.text, extracted.title or fallback_title)


def prepare_text(text: str, title: str) -> Prepared:
    normalized = normalize_text(text)
    if not has_readable_text(normalized):
        raise UnreadableDocument(
            "The document contains no readable text (letters or digits). Check that it is "
            "the right file."
        )
    return Prepared(normalized, content_hash(normalized), title.strip()[:500])
