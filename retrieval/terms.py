"""BM25 terms of a text, used for documents at ingest time and for queries at query time.

Ingest and query must tokenize identically, so this module is the one place that decides what a
term is. Terms are plain strings here; the crypto service turns them into keyed term ids before
anything is stored or indexed, so this module must never log, store or cache the terms it makes.

Rules:
- Unicode-aware: NFKC, then case folding; words are runs of letters, digits, combining marks and
  underscores in any script; everything else separates words.
- Code identifiers are kept whole and split into their parts: ``pbkdf2_hmac`` gives
  ``pbkdf2_hmac``, ``pbkdf2``, ``hmac``; ``getUserName`` gives ``getusername``, ``get``,
  ``user``, ``name``; a call ``Value(`` gives ``value(`` and ``value``.
- Han, Hiragana and Katakana, written without spaces, give one term per character.
- A small English stopword list (Lucene's) is dropped from plain words and parts, never from
  whole identifiers or calls. Terms longer than `MAX_TERM_CHARS` (blobs, not words) are dropped.
- A plain alphabetic word of more than 3 letters also gives its English (Snowball) stem, when
  that differs, as a term of its own: "locking" gives ``locking`` and ``lock``, so a question's
  inflection meets the document's while exact words still score higher (they match twice).
  Identifiers and their parts are never stemmed. Stems are terms like any other: keyed hashes
  before they leave the process, so the index stays free of plaintext. Chunks indexed before
  stems existed match on whole words until their project is reindexed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter

import Stemmer

from retrieval.stream_safe import stream_safe


def _mark_ranges() -> str:
    """A regex class body of the combining marks, which Python's \\w leaves out
    (without them Devanagari, Thai or decomposed accents would fall apart into pieces).
    Marks exist only in planes 0, 1 and 14; the other planes hold ideographs or nothing."""
    ranges: list[str] = []
    first = previous = -2
    for code in (*range(0x20000), *range(0xE0000, 0xE1000)):
        if unicodedata.category(chr(code))[0] != "M":
            continue
        if code != previous + 1:
            if first >= 0:
                ranges.append(f"\\U{first:08x}-\\U{previous:08x}")
            first = code
        previous = code
    ranges.append(f"\\U{first:08x}-\\U{previous:08x}")
    return "".join(ranges)


_WORD = re.compile(f"[\\w{_mark_ranges()}]+(?P<call>\\()?")
# Variation selectors only choose a glyph; "x" followed by one is still "x".
_VARIATION_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_CJK_RUN = re.compile(
    "([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f])"
)

MAX_TERM_CHARS = 128
STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into",
        "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then",
        "there", "these", "they", "this", "to", "was", "will", "with",
    }
)  # fmt: skip


_STEMMER = Stemmer.Stemmer("english")


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _STEMMER.stemWord(word)


def _stem_into(word: str, out: list[str]) -> None:
    """A plain word's English stem, as a term of its own beside the word, when it differs."""
    if len(word) > 3 and word.isalpha():
        stem = _stem(word)
        if stem != word:
            out.append(stem)


def _fold(term: str) -> str:
    return unicodedata.normalize("NFKC", term.casefold())


def _camel_parts(word: str) -> list[str]:
    """Split at lower-to-upper case changes and before the last capital of an acronym:
    "getUserName" -> get, User, Name; "HTTPServer" -> HTTP, Server; "pbkdf2" stays whole."""
    if word.islower() or word.isupper() or not any(c.isupper() for c in word[1:]):
        return [word]
    parts: list[str] = []
    begin = 0
    for index in range(1, len(word)):
        before, here = word[index - 1], word[index]
        after = word[index + 1] if index + 1 < len(word) else ""
        lower_to_upper = (before.islower() or before.isdigit()) and here.isupper()
        acronym_end = before.isupper() and here.isupper() and after.islower()
        if lower_to_upper or acronym_end:
            parts.append(word[begin:index])
            begin = index
    parts.append(word[begin:])
    return parts


def _word_terms(word: str, is_call: bool, out: list[str]) -> None:
    whole = _fold(word)
    parts = [_fold(p) for piece in word.split("_") if piece for p in _camel_parts(piece)]
    if is_call:
        out.append(whole + "(")
    if parts == [whole]:
        # A plain word. Called, it is kept even if it is a stopword: "is(" names a function.
        if is_call or whole not in STOPWORDS:
            out.append(whole)
            _stem_into(whole, out)
        return
    # An identifier: whole, then its parts.
    if is_call or whole not in STOPWORDS:
        out.append(whole)
    out.extend(p for p in parts if p not in STOPWORDS)


def _plain_ascii(word: str) -> bool:
    """An ASCII word without identifier parts ("Hello", "HTTP", "pbkdf2"): its only term is
    itself in lower case, which `_word_terms` would find at many times the cost (ASCII has
    no CJK runs, NFKC leaves it alone and case folding is lower())."""
    rest = word[1:]
    return word.isascii() and "_" not in word and (word.isupper() or rest == rest.lower())


def terms(text: str) -> list[str]:
    """Terms of `text` in order of appearance, repeated as often as they occur."""
    out: list[str] = []
    # Stream-safe first: NFKC takes time quadratic in a run of combining marks.
    text = _VARIATION_SELECTORS.sub("", unicodedata.normalize("NFKC", stream_safe(text)))
    for match in _WORD.finditer(text):
        word = match.group(0)
        is_call = match.group("call") is not None
        if is_call:
            word = word[:-1]
        if _plain_ascii(word):
            whole = word.lower()
            if is_call:
                out.append(whole + "(")
            if is_call or whole not in STOPWORDS:
                out.append(whole)
                _stem_into(whole, out)
            continue
        for run in _CJK_RUN.split(word):
            if not run:
                continue
            if _CJK_RUN.fullmatch(run):
                out.append(run)
            else:
                _word_terms(run, is_call and word.endswith(run), out)
    return [t for t in out if len(t) <= MAX_TERM_CHARS and t.strip("_(")]


def term_frequencies(text: str) -> dict[str, int]:
    """How often each term occurs in `text`, in order of first appearance."""
    return dict(Counter(terms(text)))
