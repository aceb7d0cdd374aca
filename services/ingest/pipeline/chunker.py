"""Splits normalized text into overlapping chunks that fit the embedding model's token window.

Guarantees, for any input string (checked by property tests):
- every chunk counts at most `max_tokens` word pieces including the model's special tokens,
  as counted by the real tokenizer (one pass over the whole text, whose pieces never cross
  whitespace; chunks holding parts of a word cut apart are tokenized again on their own),
  never by an estimate alone;
- every non-whitespace character lies in at least one chunk;
- consecutive chunks overlap by at most `overlap_tokens` word pieces, and start and end
  strictly later than the chunk before;
- the loop terminates (see `_plan`).

Chunks prefer to end at sentence boundaries; over-long sentences are split between words and
over-long words (no whitespace for hundreds of characters: CJK paragraphs, minified code,
base64) between characters, preferring positions after punctuation. This module never logs
text.
"""

from __future__ import annotations

import bisect
import operator
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise

from services.ingest.pipeline.sentences import split_sentences

TokenCounter = Callable[[Sequence[str]], Sequence[int]]
"""Counts word pieces, without special tokens, of each text of a batch."""
TokenStarts = Callable[[str], Sequence[int]]
"""Character offsets, ascending, at which the word pieces of a text start (no special
tokens): one tokenizer pass gives the count of every unit of the text at once."""

# Characters the BERT tokenizer treats as whitespace (after its cleanup, which deletes other
# control characters). Cutting text only at these keeps token counts additive: the count of
# "a b" is the count of "a" plus the count of "b". Python's \s is wider (it includes \x1c-\x1f,
# which the tokenizer deletes, joining the words around them).
_GAP_CHARS = " \t\n\r\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_UNIT = re.compile(f"[^{_GAP_CHARS}]+")
# Matched (anchored, never searched) over a range: ends after its last gap character, in one
# scan to the range's end and back.
_LAST_GAP = re.compile(f"(?s:.*)[{_GAP_CHARS}]")
# Characters per tokenizer call when counting the word pieces of a long text.
_SEGMENT_CHARS = 1 << 16

# Strength of the boundary after a unit, for choosing where a chunk ends.
_JOINED = 0  # inside an over-long word: no whitespace follows
_WORD = 1
_SENTENCE = 2
_PARAGRAPH = 3

# A chunk ending at a sentence boundary must still hold at least this share of the token
# budget; otherwise the chunk is filled up to a word boundary instead.
_MIN_FILL = 0.5
# Pieces of an over-long word are cut down to at most this share of the budget, so that the
# packer can fill chunks well when it puts them back together.
_PIECE_SHARE = 4
# Smallest supported window: one character can take a few word pieces (a Hangul syllable
# decomposes into three), and the packer needs room for at least one of any character.
MIN_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class Chunk:
    """A passage of the normalized text: `text == normalized[start:end]`."""

    index: int
    text: str
    start: int
    end: int


@dataclass(slots=True)
class _Units:
    """Parallel arrays describing the text's units (words or pieces of over-long words)."""

    starts: list[int]
    ends: list[int]
    counts: list[int]
    breaks: list[int]
    # Units i (ascending) whose join with unit i + 1 is inside a word where the tokenizer
    # would not have split it: a chunk holding both may count differently from their sum.
    inexact_joins: list[int] = field(default_factory=list)


def _default_counters() -> tuple[TokenCounter, TokenStarts]:
    from retrieval.embeddings import count_tokens_batch, token_starts

    return count_tokens_batch, token_starts


class Chunker:
    """Cuts text into chunks for all-MiniLM-L6-v2 (or any model whose tokenizer counts given).

    `count_tokens` defaults to the embedding model's own tokenizer (loaded without the model),
    which also gives `token_starts`; with another counter, each distinct unit is counted alone.
    """

    # Boundary strengths a chunk end is looked for at, strongest first.
    _preferred_breaks: tuple[int, ...] = (_SENTENCE, _WORD)

    def __init__(
        self,
        max_tokens: int = 256,
        overlap_tokens: int = 32,
        count_tokens: TokenCounter | None = None,
        *,
        token_starts: TokenStarts | None = None,
        special_tokens: int = 2,
        max_chars: int | None = None,
    ) -> None:
        if max_tokens - special_tokens < MIN_MAX_TOKENS - 2:
            raise ValueError(f"max_tokens must leave at least {MIN_MAX_TOKENS - 2} word pieces")
        budget = max_tokens - special_tokens
        if not 0 <= overlap_tokens <= budget // 2:
            raise ValueError("overlap_tokens must be between 0 and half the token budget")
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.special_tokens = special_tokens
        # A cap on characters as well as tokens: the tokenizer turns any word longer than 100
        # characters into a single [UNK], so a megabyte without spaces would otherwise be one
        # "chunk" of three tokens. 8 characters per token is far above any natural language.
        self.max_chars = max_chars if max_chars is not None else 8 * max_tokens
        if self.max_chars < 1:
            raise ValueError("max_chars must be positive")
        self._budget = budget
        if count_tokens is None:
            count_tokens, default_starts = _default_counters()
            token_starts = token_starts or default_starts
        self._count = count_tokens
        self._starts = token_starts

    def split(self, text: str) -> list[Chunk]:
        """Chunks of `text` in order. Empty or whitespace-only text gives no chunks."""
        units = self._units(text)
        if not units.starts:
            return []
        spans = self._plan(units, text, verified=False)
        # Counts taken from one tokenizer pass over the text are exact for any run of whole
        # words: the tokenizer makes no piece across whitespace, so a chunk tokenized alone
        # gives the pieces of that pass which start inside it. The same holds for pieces of
        # a word cut where the tokenizer splits words anyway (at punctuation and CJK). Only
        # pieces cut elsewhere and joined again, or another counter's counts, need checking.
        # (None: check every chunk.)
        joins = units.inexact_joins if self._starts is not None else None
        if joins != [] and not self._all_within_limits(text, units, spans, joins):
            # The estimate (a sum over units) was off somewhere, which happens only where
            # pieces of an over-long word are joined again. Plan again, checking each chunk
            # with the tokenizer as it is made.
            spans = self._plan(units, text, verified=True)
        return [
            Chunk(i, text[units.starts[s] : units.ends[e - 1]], units.starts[s], units.ends[e - 1])
            for i, (s, e) in enumerate(spans)
        ]

    # Units -------------------------------------------------------------------------------

    def _units(self, text: str) -> _Units:
        starts: list[int] = []
        ends: list[int] = []
        breaks: list[int] = []
        for sentence in split_sentences(text):
            for match in _UNIT.finditer(text, sentence.start, sentence.end):
                start, end = match.span()
                if text[start].isspace() or text[end - 1].isspace():
                    # Other whitespace (\x1c-\x1f, \x85, ...), which the tokenizer deletes:
                    # kept off the edges of chunks; units made only of it are skipped.
                    span = _trimmed(text, start, end)
                    if span is None:
                        continue
                    start, end = span
                starts.append(start)
                ends.append(end)
                breaks.append(_WORD)
            if breaks:
                breaks[-1] = _PARAGRAPH if sentence.ends_paragraph else _SENTENCE
        max_chars = self.max_chars
        token_starts = None
        if self._starts is not None:
            token_starts = self._token_starts(text)
            counts = _counts_by_offsets(token_starts, starts, ends)
        else:
            # Units over the character cap are cut whatever their count: not counting them
            # saves tokenizing megabytes of text without spaces as one word.
            counts = self._count_unique(
                [text[s:e] if e - s <= max_chars else "" for s, e in zip(starts, ends, strict=True)]
            )
        units = _Units(starts, ends, counts, breaks)
        # max over map: the checks run in C (one Python-level step per word otherwise).
        if max(counts, default=0) > self._budget or (
            max(map(operator.sub, ends, starts), default=0) > max_chars
        ):
            units = self._split_long_units(text, units, token_starts)
        return units

    def _token_starts(self, text: str) -> list[int]:
        """`token_starts` of the whole text, asked of the tokenizer a segment at a time.

        A tokenizer call holds the GIL throughout (seconds for megabytes); segments cut at
        whitespace, where no word piece can cross, keep each call short and give the same
        pieces. A stretch without whitespace longer than a segment is cut anyway: it lies in a
        unit over the character cap, whose pieces are counted again on their own.
        """
        assert self._starts is not None
        if len(text) <= _SEGMENT_CHARS:
            return list(self._starts(text))
        starts: list[int] = []
        position, length = 0, len(text)
        while position < length:
            end = min(position + _SEGMENT_CHARS, length)
            if end < length:
                gap = _LAST_GAP.match(text, position + _SEGMENT_CHARS // 2, end)
                if gap is not None:
                    end = gap.end()
            starts.extend(position + offset for offset in self._starts(text[position:end]))
            position = end
        return starts

    def _count_unique(self, texts: list[str]) -> list[int]:
        """Counts of each text, asking the tokenizer once per distinct text."""
        distinct = list(dict.fromkeys(texts))
        counted = dict(zip(distinct, self._count(distinct), strict=True))
        return [counted[t] for t in texts]

    def _split_long_units(self, text: str, units: _Units, token_starts: list[int] | None) -> _Units:
        """Replace each unit over the token budget or the character cap by smaller pieces."""
        out = _Units([], [], [], [])
        for start, end, count, brk in zip(
            units.starts, units.ends, units.counts, units.breaks, strict=True
        ):
            if count <= self._budget and end - start <= self.max_chars:
                out.starts.append(start)
                out.ends.append(end)
                out.counts.append(count)
                out.breaks.append(brk)
                continue
            pieces = self._pieces(text, start, end, token_starts)
            first = len(out.starts)
            for number, ((_, p_end, _), (next_start, _, _)) in enumerate(pairwise(pieces)):
                if not (
                    _splits_words_at(text, p_end, start, end)
                    and _splits_words_at(text, next_start, start, end)
                ):
                    out.inexact_joins.append(first + number)
            for p_start, p_end, p_count in pieces:
                out.starts.append(p_start)
                out.ends.append(p_end)
                out.counts.append(p_count)
                out.breaks.append(_JOINED)
            out.breaks[-1] = brk
        return out

    def _pieces(
        self, text: str, start: int, end: int, token_starts: list[int] | None
    ) -> list[tuple[int, int, int]]:
        """Cut one over-long word into pieces within the character cap and a share of the
        token budget.

        A piece over the limit is cut into as many parts as its count suggests (usually one
        round suffices), then the parts are counted again. Terminates: every cut point lies
        strictly inside its span, so each round makes every span it cuts strictly shorter, and
        spans of one character are never cut.

        A piece whose both ends are where the tokenizer splits words anyway is counted from
        the whole text's tokenizer pass (`token_starts`); other pieces are tokenized alone.
        """
        pending: list[tuple[int, int]] = []
        position = start
        while end - position > self.max_chars:
            cut = _cut_point(text, position, end, self.max_chars)
            pending.append((position, cut))
            position = cut
        pending.append((position, end))
        limit = max(1, self._budget // _PIECE_SHARE)
        done: list[tuple[int, int, int]] = []
        while pending:
            # Cuts may land next to characters the tokenizer deletes (\x1c-\x1f, \x85): trim
            # them before counting, so that every count is of exactly the piece's text.
            pending = [span for span in (_trimmed(text, s, e) for s, e in pending) if span]
            counts = self._piece_counts(text, pending, start, end, token_starts)
            parts: list[tuple[int, int]] = []
            for (s, e), count in zip(pending, counts, strict=True):
                if count <= limit or e - s == 1:
                    done.append((s, e, count))
                    continue
                # Aim a little under the limit: counts of parts need not add up exactly.
                wanted = min(e - s, -(-count * 5 // (limit * 4)))
                position = s
                for remaining in range(wanted, 1, -1):
                    cut = _cut_point(text, position, e, (e - position) // remaining)
                    parts.append((position, cut))
                    position = cut
                parts.append((position, e))
            pending = parts
        done.sort()
        return done

    def _piece_counts(
        self,
        text: str,
        spans: list[tuple[int, int]],
        start: int,
        end: int,
        token_starts: list[int] | None,
    ) -> list[int]:
        counts: list[int | None] = []
        alone: list[tuple[int, int]] = []
        for s, e in spans:
            if (
                token_starts is not None
                and _splits_words_at(text, s, start, end)
                and _splits_words_at(text, e, start, end)
            ):
                low = bisect.bisect_left(token_starts, s)
                counts.append(bisect.bisect_left(token_starts, e, low) - low)
            else:
                counts.append(None)
                alone.append((s, e))
        if alone:
            counted = iter(self._count([text[s:e] for s, e in alone]))
            return [next(counted) if c is None else c for c in counts]
        return counts  # type: ignore[return-value]

    # Planning ----------------------------------------------------------------------------

    def _plan(self, units: _Units, text: str, *, verified: bool) -> list[tuple[int, int]]:
        """Group units into chunks: a list of unit ranges [s, e).

        Termination: every iteration appends one chunk whose end `e` is greater than the
        previous chunk's end `covered` (e starts at covered + 1 and never shrinks below it),
        so the loop runs at most once per unit. Each inner loop moves one index monotonically
        within [s, n]. A single unit always fits alone: units were cut to the budget and the
        character cap, and a one-unit chunk's text is exactly the text that was counted.
        """
        starts, ends, counts, breaks = units.starts, units.ends, units.counts, units.breaks
        n = len(starts)
        prefix = [0, *accumulate(counts)]
        budget, max_chars = self._budget, self.max_chars

        def fits(s: int, e: int) -> bool:
            return prefix[e] - prefix[s] <= budget and ends[e - 1] - starts[s] <= max_chars

        spans: list[tuple[int, int]] = []
        s, covered = 0, 0
        while covered < n:
            # Start from the overlap carried over; drop it if the next unit does not fit with it.
            while not fits(s, covered + 1):
                s += 1
            e = covered + 1
            while e < n and fits(s, e + 1):
                e += 1
            if e < n:
                e = self._preferred_end(s, covered, e, prefix, breaks)
            if verified:
                while not self._chunk_fits(text, starts[s], ends[e - 1]):
                    if e - 1 > covered:
                        e -= 1
                    elif s < covered:
                        s += 1
                    else:
                        raise AssertionError("a single unit exceeds the token budget")
            spans.append((s, e))
            if e == n:
                break
            s, covered = self._overlap_start(s, e, counts, text, units, verified), e
        return spans

    def _preferred_end(
        self, s: int, covered: int, e: int, prefix: list[int], breaks: list[int]
    ) -> int:
        """The latest sentence boundary, else word boundary, in (covered, e] that keeps the
        chunk at least half full; `e` itself when there is none."""
        floor = prefix[s] + _MIN_FILL * self._budget
        for strength in self._preferred_breaks:
            b = e
            while b > covered and prefix[b] >= floor:
                if breaks[b - 1] >= strength:
                    return b
                b -= 1
        return e

    def _overlap_start(
        self, s: int, e: int, counts: list[int], text: str, units: _Units, verified: bool
    ) -> int:
        """First unit of the next chunk: the trailing units of [s, e) that fit in the overlap.

        Always greater than `s`, so chunk starts strictly advance.
        """
        start, tokens = e, 0
        while start - 1 > s and tokens + counts[start - 1] <= self.overlap_tokens:
            start -= 1
            tokens += counts[start]
        if verified:
            while (
                start < e
                and self._count([text[units.starts[start] : units.ends[e - 1]]])[0]
                > self.overlap_tokens
            ):
                start += 1
        return start

    # Verification ------------------------------------------------------------------------

    def _chunk_fits(self, text: str, start: int, end: int) -> bool:
        return self._count([text[start:end]])[0] <= self._budget

    def _all_within_limits(
        self, text: str, units: _Units, spans: list[tuple[int, int]], joins: list[int] | None
    ) -> bool:
        """Check the chunks and overlaps of a plan with the tokenizer, in two batches: those
        holding one of `joins` (see `_Units.inexact_joins`), or all when `joins` is None."""
        starts, ends = units.starts, units.ends

        def unsure(s: int, e: int) -> bool:  # units [s, e) hold a join i: s <= i < e - 1
            if joins is None:
                return True
            index = bisect.bisect_left(joins, s)
            return index < len(joins) and joins[index] < e - 1

        chunk_texts = [text[starts[s] : ends[e - 1]] for s, e in spans if unsure(s, e)]
        if chunk_texts and any(c > self._budget for c in self._count(chunk_texts)):
            return False
        overlaps = [
            text[starts[nxt_s] : ends[e - 1]]
            for (_, e), (nxt_s, _) in pairwise(spans)
            if nxt_s < e and unsure(nxt_s, e)
        ]
        return not overlaps or all(c <= self.overlap_tokens for c in self._count(overlaps))


def _counts_by_offsets(
    token_starts: Sequence[int], starts: list[int], ends: list[int]
) -> list[int]:
    """Word pieces of each unit [starts[i], ends[i]): those of the whole text's that start
    within it. The tokenizer never makes a piece across whitespace, so this equals counting
    each unit alone; an estimate that is off anyway is caught by `_all_within_limits`."""
    counts: list[int] = []
    low = 0
    for start, end in zip(starts, ends, strict=True):
        low = bisect.bisect_left(token_starts, start, low)
        high = bisect.bisect_left(token_starts, end, low)
        counts.append(high - low)
        low = high
    return counts


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    """[start, end) without whitespace at either edge; None if nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _cut_point(text: str, start: int, end: int, offset: int) -> int:
    """A position in (start, end) near start + offset to cut an over-long word.

    Prefers the position right after punctuation or a CJK character (where the tokenizer
    splits anyway, so the pieces count as they do in the word) within the last half before
    the target; never cuts before a combining mark unless there is no other choice.
    """
    target = min(max(start + offset, start + 1), end - 1)
    window = max(1, (target - start) // 2)
    for position in range(target, max(start, target - window), -1):
        if _is_token_boundary_char(text[position - 1]):
            return position
    position = target
    while position > start + 1 and unicodedata.category(text[position])[0] == "M":
        position -= 1
    if unicodedata.category(text[position])[0] == "M":
        position = target
    return position


def _splits_words_at(text: str, position: int, start: int, end: int) -> bool:
    """Whether the model's tokenizer splits the word text[start:end] at `position` anyway:
    at its ends, or next to a character it always makes a word of its own (punctuation as
    BERT defines it, or a CJK ideograph). Pieces cut there count as they do in the word."""
    return (
        position <= start
        or position >= end
        or _is_bert_word_char(text[position - 1])
        or _is_bert_word_char(text[position])
    )


def _is_bert_word_char(char: str) -> bool:
    """Characters BERT's pre-tokenizer always splits off: ASCII punctuation and symbols,
    Unicode punctuation (P*), and the CJK ideographs its normalizer pads with spaces (not
    kana or Hangul)."""
    code = ord(char)
    if code < 128:
        return 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126
    return unicodedata.category(char)[0] == "P" or (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B81F
        or 0x2B920 <= code <= 0x2CEAF  # (sic: the tokenizer's own ranges)
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


def _is_token_boundary_char(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] == "P" or (category == "Lo" and _is_cjk(char))


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x3040 <= code <= 0x30FF  # Hiragana, Katakana
        or 0x3400 <= code <= 0x4DBF  # CJK Extension A
        or 0x4E00 <= code <= 0x9FFF  # CJK Unified Ideographs
        or 0xF900 <= code <= 0xFAFF  # CJK Compatibility Ideographs
        or 0x20000 <= code <= 0x2FA1F  # CJK Extensions B-F, Compatibility Supplement
    )
