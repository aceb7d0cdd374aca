"""Chunk boundaries at headings or paragraphs: a variant of the ingest chunker for the lab.

The ingest chunker (services.ingest.pipeline.chunker) ends a chunk at the latest sentence
boundary that keeps it at least half full. This variant first looks, in the same range, for a
boundary before a heading line ("headings") or at any blank line ("paragraphs"), so that a
chunk starts with the heading of what it holds instead of carrying the previous section's
tail. Every guarantee of the base chunker holds: only the choice among allowed ends changes.

Used by tools/corpus_cache.py and tools/retrieval_lab.py only; never logs text.
"""

from __future__ import annotations

import re

from services.ingest.pipeline.chunker import _PARAGRAPH, _SENTENCE, _WORD, Chunker

_HEADING = _PARAGRAPH + 1
# A numbered section ("8.2. Monetary Types", "F.33.2. Functions"), a man page section
# ("DESCRIPTION", "RETURN VALUE"), or an identifier that opens a definition list entry
# ("O_CLOEXEC (since Linux 2.6.23)", "MAP_FIXED").
_HEADING_LINE = re.compile(
    r"(?:[A-Z]?\d+(?:\.\d+)*\.?\s+\S.{0,70}"
    r"|[A-Z][A-Z0-9 ]{2,30}"
    r"|[A-Z][A-Z0-9]*_[A-Z0-9_]+(?:\s.{0,50})?"
    r"|(?:Table|Example|Figure)\s+[\dA-Z.]+\s.{0,60})"
)


def is_heading(line: str) -> bool:
    line = line.strip()
    return bool(line) and len(line) <= 80 and _HEADING_LINE.fullmatch(line) is not None


class HeadingChunker(Chunker):
    def __init__(self, *args, prefer: str = "headings", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if prefer not in ("headings", "paragraphs"):
            raise ValueError("prefer 'headings' or 'paragraphs'")
        self.prefer = prefer
        first = _HEADING if prefer == "headings" else _PARAGRAPH
        self._preferred_breaks = (first, _SENTENCE, _WORD)

    def _units(self, text: str):
        units = super()._units(text)
        if self.prefer == "headings":
            starts, ends, breaks = units.starts, units.ends, units.breaks
            for i in range(len(starts) - 1):
                gap = text[ends[i] : starts[i + 1]]
                if "\n" not in gap:
                    continue
                line_end = text.find("\n", starts[i + 1])
                line = text[starts[i + 1] : line_end if line_end >= 0 else len(text)]
                if is_heading(line):
                    breaks[i] = _HEADING
        return units
