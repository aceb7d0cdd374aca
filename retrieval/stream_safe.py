"""Bounded runs of combining marks (Unicode's Stream-Safe Text Format, UAX #15), so that
Unicode normalization takes linear time on any text.

CPython's `unicodedata.normalize` puts combining marks into canonical order with an insertion
sort, which takes time quadratic in the length of a run of marks ("a" followed by a hundred
thousand alternating U+0301 and U+0316 takes minutes, holding the GIL). No writing system needs
more than a few marks on one character; UAX #15 bounds runs at 30 by inserting U+034F COMBINING
GRAPHEME JOINER, an invisible starter that stops reordering across it. Text with no run longer
than 30 is returned unchanged, so applying this twice gives the same result as once.

Both ingest (normalization) and query (keyword terms) use it, so that a text gives the same
terms on both sides. It never logs text.
"""

from __future__ import annotations

import re
import unicodedata

# The longest run of non-starters kept together (UAX #15 section 13).
MAX_NON_STARTERS = 30
GRAPHEME_JOINER = "\u034f"


def _non_starter_ranges() -> str:
    """A regex class body of the characters whose compatibility decomposition begins with a
    non-starter (combining class > 0): combining marks, and a few precomposed characters such
    as U+0F73 and U+FF9E that are starters alone but decompose into marks. They exist only in
    planes 0, 1 and 14."""
    ranges: list[str] = []
    first = previous = -2
    for code in (*range(0x20000), *range(0xE0000, 0xE1000)):
        decomposed = unicodedata.normalize("NFKD", chr(code))
        if not (decomposed and unicodedata.combining(decomposed[0])):
            continue
        if code != previous + 1:
            if first >= 0:
                ranges.append(f"\\U{first:08x}-\\U{previous:08x}")
            first = code
        previous = code
    ranges.append(f"\\U{first:08x}-\\U{previous:08x}")
    return "".join(ranges)


_NON_STARTERS = _non_starter_ranges()
# A run longer than the limit, matched only from its first character (the lookbehind fails at
# once inside a run), so the scan is linear: each run is read once.
_LONG_RUN = re.compile(f"(?<![{_NON_STARTERS}])[{_NON_STARTERS}]{{{MAX_NON_STARTERS + 1},}}+")


def _split_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return GRAPHEME_JOINER.join(
        run[i : i + MAX_NON_STARTERS] for i in range(0, len(run), MAX_NON_STARTERS)
    )


def stream_safe(text: str) -> str:
    """`text` with a grapheme joiner after every 30 characters of each longer run of
    non-starters; unchanged when it has no such run."""
    return _LONG_RUN.sub(_split_run, text)
