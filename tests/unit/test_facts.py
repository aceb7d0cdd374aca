"""Fact extraction: subject–predicate–object statements with provenance, deterministically."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.pipeline.chunker import Chunk, Chunker
from services.ingest.pipeline.facts import Fact, extract_facts
from services.ingest.pipeline.normalize import normalize_text

DATA = Path(__file__).resolve().parent.parent / "data"


def triples(text: str) -> list[tuple[str, str, str]]:
    text = normalize_text(text)
    return [(f.subject, f.predicate, f.object) for f in extract_facts(text, Chunker().split(text))]


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Python is a programming language.", ("Python", "is", "a programming language")),
        ("Lions are large cats.", ("Lions", "are", "large cats")),
        ("Water is not a metal.", ("Water", "is not", "a metal")),
        (
            "ContextCache uses AES-GCM for encryption.",
            ("ContextCache", "uses", "AES-GCM for encryption"),
        ),
        (
            "Google was founded in 1998 by Larry Page and Sergey Brin.",
            ("Google", "was founded in", "1998 by Larry Page and Sergey Brin"),
        ),
        ("The Eiffel Tower is located in Paris.", ("The Eiffel Tower", "is located in", "Paris")),
        ("Abraham Lincoln was born in Kentucky.", ("Abraham Lincoln", "was born in", "Kentucky")),
        ("The ingest service depends on Redis.", ("The ingest service", "depends on", "Redis")),
        ("A keyring consists of three keys.", ("A keyring", "consists of", "three keys")),
        ("Rust is known as a safe language.", ("Rust", "is known as", "a safe language")),
        ("The worker runs on two cores.", ("The worker", "runs on", "two cores")),
        ("Postgres stores the documents.", ("Postgres", "stores", "the documents")),
        ("The index has 384 dimensions.", ("The index", "has", "384 dimensions")),
    ],
)
def test_simple_statements(sentence: str, expected: tuple[str, str, str]) -> None:
    assert triples(sentence) == [expected]


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        # The object ends where a relative or subordinate clause begins.
        ("The Eiffel Tower is located in Paris, which is in France.", "Paris"),
        ("The cache uses Redis because it is fast.", "Redis"),
        ("Redis stores jobs (and nothing else).", "jobs"),
        # An introductory phrase before the comma is not part of the subject.
        ("In 1998, Google was founded in a garage.", "a garage"),
    ],
)
def test_clause_boundaries(sentence: str, expected: str) -> None:
    (fact,) = triples(sentence)
    assert fact[2] == expected
    assert fact[0] in ("The Eiffel Tower", "The cache", "Redis", "Google")


@pytest.mark.parametrize(
    "sentence",
    [
        "Is Python fast?",  # a question
        "It is raining.",  # a pronoun subject
        "They use keys.",
        "If the key is lost, nothing helps.",  # "nothing" is a pronoun
        "When the service starts it uses Redis.",  # subordinate clause as subject
        "The system that uses keys.",  # relative clause in the subject
        "Keys.",  # no predicate
        "The very long subject phrase with many many words in it is hard.",  # > 8 words
        "",
    ],
)
def test_non_statements_give_no_fact(sentence: str) -> None:
    assert triples(sentence) == []


def test_each_clause_of_a_sentence_can_give_a_fact() -> None:
    assert triples("The service depends on Redis; Redis stores the job queue.") == [
        ("The service", "depends on", "Redis"),
        ("Redis", "stores", "the job queue"),
    ]


def test_provenance_offsets_and_chunk_point_into_the_normalized_text() -> None:
    text = normalize_text((DATA / "gettysburg.txt").read_text(encoding="utf-8")) + (
        "\n\nThe speech was delivered by Abraham Lincoln in 1863. Gettysburg is a borough in "
        "Pennsylvania. The address is one of the best-known speeches in American history."
    )
    chunks = Chunker(max_tokens=64, overlap_tokens=16).split(text)
    facts = extract_facts(text, chunks)
    assert len(facts) >= 3
    by_index = {chunk.index: chunk for chunk in chunks}
    for fact in facts:
        span = text[fact.start : fact.end]
        assert span.startswith(fact.subject) and span.endswith(fact.object)
        assert fact.predicate in " ".join(span.lower().split())
        chunk = by_index[fact.chunk_index]
        assert chunk.start <= fact.start < chunk.end
    assert (
        "The speech",
        "was delivered by",
        "Abraham Lincoln in 1863",
    ) in [(f.subject, f.predicate, f.object) for f in facts]
    assert ("Gettysburg", "is", "a borough in Pennsylvania") in [
        (f.subject, f.predicate, f.object) for f in facts
    ]


def test_a_fact_belongs_to_the_first_chunk_holding_all_of_it() -> None:
    text = "Alpha is first. Beta is second. Gamma is third."
    # Two overlapping chunks that both hold "Beta is second".
    chunks = [Chunk(0, text[:31], 0, 31), Chunk(1, text[16:], 16, len(text))]
    facts = extract_facts(text, chunks)
    assert [(f.subject, f.chunk_index) for f in facts] == [("Alpha", 0), ("Beta", 0), ("Gamma", 1)]


def test_sentences_repeated_by_overlap_give_their_fact_once() -> None:
    text = " ".join(f"Service{i} uses database{i}." for i in range(200))
    chunks = Chunker(max_tokens=32, overlap_tokens=12).split(text)
    assert any(b.start < a.end for a, b in itertools.pairwise(chunks))
    facts = extract_facts(text, chunks)
    assert len(facts) == 200
    assert len({(f.start, f.end) for f in facts}) == 200


def test_no_chunks_give_no_facts() -> None:
    assert extract_facts("Python is a language.", []) == []


def test_facts_are_deterministic() -> None:
    text = normalize_text((DATA / "gettysburg.txt").read_text(encoding="utf-8"))
    chunks = Chunker().split(text)
    first = extract_facts(text, chunks)
    assert first == extract_facts(text, Chunker().split(text))
    assert all(isinstance(f, Fact) for f in first)


WORDS = st.sampled_from(
    ["Python", "is", "was founded in", "uses", "the", "a", "key", "Redis", ",", ";", "which",
     "It", "?", ".", "depends on", "東京", "😀", "(", "and", "not"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=400), st.lists(WORDS, max_size=80).map(" ".join)))
def test_property_facts_are_well_formed_for_any_text(raw: str) -> None:
    text = normalize_text(raw)
    chunks = Chunker(max_tokens=24, overlap_tokens=6).split(text)
    facts = extract_facts(text, chunks)
    assert facts == extract_facts(text, chunks)
    indexes = {c.index for c in chunks}
    for fact in facts:
        assert 0 <= fact.start < fact.end <= len(text)
        assert fact.subject.strip() and fact.predicate and fact.object.strip()
        assert text[fact.start : fact.end].startswith(fact.subject)
        assert text[fact.start : fact.end].endswith(fact.object)
        assert fact.chunk_index in indexes
