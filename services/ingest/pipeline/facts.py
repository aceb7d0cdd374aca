"""Subject–predicate–object facts extracted from sentences by simple, deterministic rules.

A fact is a plain statement found in one clause: "X is Y", "X uses Y", "X was founded in Y",
"X depends on Y", and similar copula and verb patterns. Each fact keeps its provenance: the
chunk it came from and its character offsets in the normalized text. The rules favour precision
over recall: questions, clauses whose subject is only a pronoun, and subjects or objects too long
to be one noun phrase are skipped. The same text always gives the same facts in the same order.
Facts are document content: this module never logs them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.ingest.pipeline.chunker import Chunk
from services.ingest.pipeline.sentences import split_sentences

_BE = r"(?:is|are|was|were)(?:\s+not)?"
_PARTICIPLES = (
    r"(?:founded|created|developed|invented|designed|written|built|made|released|published|"
    r"established|launched|acquired|owned|maintained|located|based|born|used|headquartered|"
    r"introduced|discovered|replaced|powered|funded|managed|run|hosted|stored|encrypted|"
    r"delivered|given|signed|elected|appointed|adopted|awarded|composed|directed|produced|"
    r"led|ruled|named|defined|described|caused|followed|supported|required|needed|sold|"
    r"bought|merged|renamed|translated|printed|painted|recorded|implemented|deployed)"
)
_PREPOSITIONS = r"(?:in|by|on|at|for|from|as|with|to|into)"
_COMPLEMENTS = (
    r"(?:called|named|known\s+as|part\s+of|one\s+of|a\s+type\s+of|a\s+kind\s+of|similar\s+to|"
    r"equal\s+to|responsible\s+for|capable\s+of|compatible\s+with)"
)
_VERBS = (
    r"(?:(?:runs|run|ran)\s+on|(?:depends|depend|depended)\s+on|(?:consists|consist|consisted)"
    r"\s+of|(?:belongs|belong|belonged)\s+to|(?:relies|rely|relied)\s+on|uses|use|used|"
    r"contains|contain|contained|includes|include|included|supports|support|supported|"
    r"requires|require|required|provides|provide|provided|produces|produce|produced|"
    r"stores|store|stored|encrypts|encrypt|encrypted|implements|implement|implemented|"
    r"replaces|replace|replaced|creates|create|created|has|have|had|became|becomes|become|"
    r"means|meant|owns|own|owned|offers|offer|offered|measures|measure|measured)"
)
# At one position the first alternative that matches wins, so longer predicates come first.
_PREDICATE = re.compile(
    rf"\b(?:{_BE}\s+{_PARTICIPLES}\s+{_PREPOSITIONS}|{_BE}\s+{_COMPLEMENTS}|{_VERBS}|{_BE})\b",
    re.IGNORECASE,
)
# Where the object's clause ends: a relative or subordinate clause, a parenthesis, a dash.
_OBJECT_END = re.compile(
    r",\s*(?:which|who|whom|whose|where|when|but|and|although|though|while|whereas|so)\b"
    r"|\s(?:because|although|though|while|whereas|unless|if)\s|\s[(—–]|\s-\s|[;:]"
)
_CLAUSES = re.compile(r"[^;]+")
_SUBORDINATORS = frozenset(
    "if when while although though because since unless whether after before as so and but or "
    "how what why where which who whom whose once until".split()
)
_PRONOUNS = frozenset(
    "it this that these those they them he she him her we us i you one there here which who "
    "what something someone everything everyone nothing each all some many most".split()
)
_RELATIVES = frozenset("that which who whom whose".split())
_CLOSING = "\"'”’»)]"
_TRAILING = ".!?…:," + _CLOSING
MAX_SUBJECT_WORDS = 8
MAX_OBJECT_WORDS = 20


@dataclass(frozen=True, slots=True)
class Fact:
    """One statement: `subject` `predicate` `object`, found at text[start:end] of chunk
    `chunk_index` (offsets into the normalized document text)."""

    subject: str
    predicate: str
    object: str
    chunk_index: int
    start: int
    end: int


def extract_facts(text: str, chunks: Sequence[Chunk]) -> list[Fact]:
    """Facts of the normalized `text`, each attributed to one of its `chunks`.

    A fact belongs to the first chunk that contains all of it, else to the chunk in which it
    starts. Sentences repeated by chunk overlap give their facts once.
    """
    if not chunks:
        return []
    chunk_starts = [chunk.start for chunk in chunks]
    facts: list[Fact] = []
    for sentence in split_sentences(text):
        if text[sentence.start : sentence.end].rstrip(_CLOSING).endswith("?"):
            continue  # a question asserts nothing
        for clause in _CLAUSES.finditer(text, sentence.start, sentence.end):
            found = _clause_fact(text, clause.start(), clause.end())
            if found is None:
                continue
            subject, predicate, obj, start, end = found
            facts.append(
                Fact(
                    subject, predicate, obj, _chunk_of(chunks, chunk_starts, start, end), start, end
                )
            )
    return facts


def _clause_fact(text: str, start: int, end: int) -> tuple[str, str, str, int, int] | None:
    match = _PREDICATE.search(text, start, end)
    if match is None:
        return None
    subject_start, subject_end = _subject_span(text, start, match.start())
    subject = text[subject_start:subject_end]
    if not _valid_subject(subject):
        return None
    object_start = match.end()
    while object_start < end and text[object_start].isspace():
        object_start += 1
    stop = _OBJECT_END.search(text, object_start, end)
    object_end = stop.start() if stop else end
    while object_end > object_start and (
        text[object_end - 1].isspace() or text[object_end - 1] in _TRAILING
    ):
        object_end -= 1
    obj = text[object_start:object_end]
    words = obj.split()
    if not words or len(words) > MAX_OBJECT_WORDS or not any(c.isalnum() for c in obj):
        return None
    predicate = " ".join(match.group(0).lower().split())
    return subject, predicate, obj, subject_start, object_end


def _subject_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The subject before the predicate: after the last comma of an introductory phrase
    ("In 1998, Google was founded ..."), without surrounding spaces and quotes."""
    comma = text.rfind(",", start, end)
    if comma >= 0:
        start = comma + 1
    while start < end and (text[start].isspace() or text[start] in "\"'“‘«(["):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ","):
        end -= 1
    return start, end


def _valid_subject(subject: str) -> bool:
    words = subject.split()
    if not words or len(words) > MAX_SUBJECT_WORDS:
        return False
    lowered = [w.lower().strip("\"'“”‘’()[]") for w in words]
    if lowered[0] in _SUBORDINATORS:
        return False
    if len(lowered) == 1 and lowered[0] in _PRONOUNS:
        return False
    if any(w in _RELATIVES for w in lowered):
        return False
    return any(c.isalnum() for c in subject)


def _chunk_of(chunks: Sequence[Chunk], starts: list[int], start: int, end: int) -> int:
    """The first chunk holding all of [start, end), else the last one in which it starts.

    Chunk starts and ends both strictly increase, so the chunks holding `start` are a run
    ending at the last chunk that starts at or before it.
    """
    last = max(bisect.bisect_right(starts, start) - 1, 0)
    first = last
    while first > 0 and chunks[first - 1].end > start:
        first -= 1
    for index in range(first, last + 1):
        if chunks[index].end >= end:
            return chunks[index].index
    return chunks[last].index
