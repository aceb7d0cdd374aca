"""Text normalization and content hashing: the canonical form every later step works on.

Chunk offsets, fact offsets and the content hash all refer to the output of `normalize_text`,
so this module must stay deterministic and change only with a migration plan (a change here
changes every content hash, and with it duplicate detection). It never logs text.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from retrieval.stream_safe import stream_safe

# Removed: control characters (C0 and C1, except newline and tab), lone surrogates (left by
# undecodable input), and invisible characters that carry no meaning in stored text: soft
# hyphen, zero width space, word joiner and byte order mark. ZWJ (U+200D) and ZWNJ (U+200C) are
# kept: they change meaning in emoji and in Indic and Persian scripts. Unassigned code points are
# kept, so the canonical form does not depend on the Unicode version of the running Python.
_DROPPED = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff\ud800-\udfff]+")
_LINE_BREAKS = re.compile(r"\r\n|[\r\u2028\u2029\x85\x0b\x0c]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
_READABLE = re.compile(r"[^\W_]")


def normalize_text(text: str) -> str:
    """Return the canonical form of extracted text.

    Every line break becomes "\\n"; control and invisible characters are removed; runs of
    more than 30 combining marks are cut by a grapheme joiner (UAX #15 stream-safe form, which
    keeps normalization linear in time); NFC; runs of horizontal whitespace become one space;
    spaces around line breaks are dropped; at most one blank line separates paragraphs; no
    leading or trailing whitespace.

    Every step is one linear scan (a regex with no backtracking, or NFC on stream-safe text).
    """
    text = _LINE_BREAKS.sub("\n", text)
    # Removed before NFC: a mark after a removed character then composes with the letter
    # before it, and two runs of marks around one make a single run that the stream-safe
    # step bounds.
    text = _DROPPED.sub("", text)
    text = unicodedata.normalize("NFC", stream_safe(text))
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def content_hash(text: str) -> str:
    """SHA-256 of the UTF-8 encoded text, hex. Call it on normalized text.

    The plain hash identifies content; anyone holding a copy of a document can confirm that
    it was stored. Store it where only the project's key holder can read it, or key it first.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def has_readable_text(text: str) -> bool:
    """True when the text holds at least one letter or digit in any script.

    A regex scan in C: "alphanumeric, not underscore" is exactly Unicode categories L* and N*
    (tests/unit/test_text_linear.py checks every code point).
    """
    return _READABLE.search(text) is not None
