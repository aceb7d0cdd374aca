"""Sentence boundaries in normalized text, shared by the chunker and the fact extractor.

Rule-based and deterministic: a sentence ends at terminal punctuation followed by whitespace
(unless the period belongs to a known abbreviation, an initial or a lower-case continuation), at
CJK full stops, and at blank lines. The same text always gives the same spans. Never logs text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Terminal punctuation, then closing quotes or brackets (Latin scripts; a boundary only when
# whitespace follows, which `split_sentences` checks) — or CJK terminal punctuation, which needs
# no following space — or a blank line.
#
# Linear time on any input: every quantifier is possessive, and the whitespace that must follow
# Latin punctuation is tested after the match rather than by a lookahead. With the lookahead
# (`[.!?…]+...(?=\s)`), a run of n periods not followed by whitespace was scanned to its end
# from each of its n positions, backtracking each time (quadratic time, and the regex engine
# holds the GIL throughout). Without it, a run is consumed once and the scan resumes after it.
_BOUNDARY = re.compile(
    r"(?P<latin>[.!?…]++[\"'”’»)\]]*+)"
    r"|(?P<cjk>[。！？]++[」』”’）]*+)"
    r"|(?P<para>\n[^\S\n]*+\n)"
)
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf",
        "inc", "ltd", "co", "corp", "no", "fig", "figs", "al", "approx", "dept", "est",
        "vol", "pp", "ed", "eds", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
        "sept", "oct", "nov", "dec", "u.s", "u.k",
    }
)  # fmt: skip
_WORD_BEFORE = re.compile(r"(\S+)$")


@dataclass(frozen=True, slots=True)
class Sentence:
    """A sentence as character offsets [start, end) into the text it was found in."""

    start: int
    end: int
    # True when a blank line (paragraph break) follows the sentence.
    ends_paragraph: bool


def _is_abbreviation(text: str, dot_at: int) -> bool:
    """Whether the period at `dot_at` ends an abbreviation or an initial rather than a sentence."""
    match = _WORD_BEFORE.search(text, max(0, dot_at - 12), dot_at)
    if match is None:
        return False
    word = match.group(1).lstrip("(\"'“‘").lower()
    if len(word) == 1 and word.isalpha():
        return True  # an initial, as in "J. R. R. Tolkien"
    return word in _ABBREVIATIONS


def _continues_lower_case(text: str, after: int) -> bool:
    """Whether the next word starts with a lower-case letter: "approx. five", "vs. them"."""
    index = after
    length = len(text)
    while index < length and text[index].isspace():
        index += 1
    return index < length and text[index].islower()


# The last text split and its sentences: the chunker and the fact extractor split the same
# document one after the other (in a text worker), and a document of many short sentences
# spends much of its time here.
_last: tuple[str, list[Sentence]] | None = None


def split_sentences(text: str) -> list[Sentence]:
    """Sentences of `text` in order; whitespace between sentences belongs to none of them.

    Every non-whitespace character of the text lies in exactly one sentence.
    """
    global _last
    last = _last
    if last is not None and last[0] == text:
        return list(last[1])
    sentences = _split(text)
    _last = (text, sentences)
    return list(sentences)


def _split(text: str) -> list[Sentence]:
    sentences: list[Sentence] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        kind = match.lastgroup
        if kind == "latin":
            after = match.end()
            if after == len(text) or not text[after].isspace():
                continue  # "3.14", "...and", "?!x": not the end of a sentence
            punctuation = match.group("latin")
            if punctuation.startswith(".") and len(punctuation.rstrip("\"'”’»)]")) == 1:
                if _is_abbreviation(text, match.start()) or _continues_lower_case(
                    text, match.end()
                ):
                    continue
            end = match.end()
        elif kind == "cjk":
            end = match.end()
        else:
            end = match.start()
        _append(sentences, text, start, end, ends_paragraph=kind == "para")
        start = match.end()
    _append(sentences, text, start, len(text), ends_paragraph=False)
    return sentences


def _append(
    sentences: list[Sentence], text: str, start: int, end: int, ends_paragraph: bool
) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        sentences.append(Sentence(start, end, ends_paragraph))
    elif ends_paragraph and sentences:
        last = sentences[-1]
        sentences[-1] = Sentence(last.start, last.end, True)
