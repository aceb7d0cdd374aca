"""Chunker: token window, coverage, overlap and termination on any input.

Every limit is checked against the embedding model's real tokenizer, never an estimate.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.embeddings import MAX_TOKENS, count_tokens, count_tokens_batch
from services.ingest.pipeline.chunker import Chunk, Chunker
from services.ingest.pipeline.normalize import normalize_text
from services.ingest.pipeline.sentences import split_sentences

DATA = Path(__file__).resolve().parent.parent / "data"
PROPERTY_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def assert_chunk_invariants(
    text: str, chunks: Sequence[Chunk], chunker: Chunker, count=count_tokens_batch
) -> None:
    """The chunker's contract, checked with `count` (the real tokenizer by default)."""
    budget = chunker.max_tokens - chunker.special_tokens
    counts = count([c.text for c in chunks])
    for position, (chunk, tokens) in enumerate(zip(chunks, counts, strict=True)):
        assert chunk.index == position
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text and not chunk.text[0].isspace() and not chunk.text[-1].isspace()
        assert tokens <= budget, f"chunk {position} has {tokens} word pieces"
        assert len(chunk.text) <= chunker.max_chars
    covered = bytearray(len(text))
    for chunk in chunks:
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    uncovered = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not uncovered, f"characters not in any chunk at {uncovered[:5]}"
    for before, after in itertools.pairwise(chunks):
        assert after.start > before.start and after.end > before.end
        if after.start < before.end:
            overlap = count([text[after.start : before.end]])[0]
            assert overlap <= chunker.overlap_tokens


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker()


@pytest.fixture(scope="module")
def small_chunker() -> Chunker:
    """A small window, so that short generated texts still need many chunks."""
    return Chunker(max_tokens=24, overlap_tokens=6, max_chars=120)


@pytest.fixture(scope="module")
def speech() -> str:
    return normalize_text((DATA / "gettysburg.txt").read_text(encoding="utf-8"))


def prose(sentences: int) -> str:
    words = (
        "privacy keys rotate inside the context store while queries search encrypted "
        "chunks and every vector stays within one project so tenants never meet"
    ).split()
    out = []
    for i in range(sentences):
        length = 6 + (i * 7) % 19
        sentence = " ".join(words[(i + j * 3) % len(words)] for j in range(length))
        out.append(sentence.capitalize() + ("." if i % 5 else "!"))
        if i % 9 == 8:
            out.append("\n\n")
    return " ".join(out)


# Examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n", "\u3000\u00a0"])
def test_empty_or_blank_text_gives_no_chunks(chunker: Chunker, text: str) -> None:
    assert chunker.split(text) == []


def test_short_text_is_one_chunk_without_surrounding_space(chunker: Chunker) -> None:
    text = "  Hello, world. This is short.  "
    assert chunker.split(text) == [Chunk(0, "Hello, world. This is short.", 2, 30)]


def test_real_speech_chunks_fit_the_model_window(speech: str) -> None:
    chunker = Chunker(max_tokens=64, overlap_tokens=8)
    chunks = chunker.split(speech)
    assert len(chunks) > 3
    assert_chunk_invariants(speech, chunks, chunker)
    assert chunks[0].text.startswith("The Gettysburg Address")
    assert chunks[-1].text.endswith("November 19, 1863")


def test_default_window_is_the_embedding_models(chunker: Chunker) -> None:
    assert chunker.max_tokens == MAX_TOKENS == 256
    assert chunker.overlap_tokens == 32
    text = prose(400)
    chunks = chunker.split(text)
    counts = count_tokens_batch([c.text for c in chunks])
    # Chunks are filled: all but the last hold at least half of the 254-piece budget.
    assert all(127 <= n <= 254 for n in counts[:-1])
    assert_chunk_invariants(text, chunks, chunker)


def test_chunks_end_at_sentence_boundaries_when_sentences_are_short(chunker: Chunker) -> None:
    text = prose(300)
    chunks = chunker.split(text)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text[-1] in ".!", chunk.text[-30:]


def test_overlap_carries_the_configured_number_of_word_pieces(chunker: Chunker) -> None:
    text = prose(300)
    chunks = chunker.split(text)
    for before, after in itertools.pairwise(chunks):
        overlap = text[after.start : before.end]
        assert before.text.endswith(overlap)
        # Whole words are carried: up to 32 pieces, and within one short word of 32.
        assert 28 <= count_tokens(overlap) <= 32


def test_zero_overlap_gives_disjoint_chunks() -> None:
    chunker = Chunker(overlap_tokens=0)
    text = prose(200)
    chunks = chunker.split(text)
    assert len(chunks) > 2
    for before, after in itertools.pairwise(chunks):
        assert after.start > before.end
    assert_chunk_invariants(text, chunks, chunker)


def test_over_long_sentence_is_split_between_words(chunker: Chunker) -> None:
    text = " ".join(f"word{i} and more" for i in range(400))  # no sentence end at all
    chunks = chunker.split(text)
    assert len(chunks) > 2
    assert_chunk_invariants(text, chunks, chunker)
    for chunk in chunks:
        assert chunk.start == 0 or text[chunk.start - 1] == " "
        assert chunk.end == len(text) or text[chunk.end] == " "


@pytest.mark.parametrize(
    "word",
    [
        "ab,cd;" * 600,  # minified-code-like: the tokenizer splits at every punctuation
        "東京は日本の首都です。" * 80,  # CJK: one token per character, no spaces
        "é" * 5000,  # one 5000-letter word: a single [UNK] to the tokenizer
        ("한국어" * 10 + ",") * 30,  # Hangul: up to three word pieces per syllable
        "😀👍🏽" * 700,
    ],
    ids=["punctuation", "cjk", "long-latin", "hangul", "emoji"],
)
def test_over_long_words_are_split_by_characters(chunker: Chunker, word: str) -> None:
    text = f"Before the blob. {word} After the blob."
    chunks = chunker.split(text)
    assert len(chunks) >= 2
    assert_chunk_invariants(text, chunks, chunker)


def test_character_cap_bounds_chunks_of_unknown_tokens() -> None:
    chunker = Chunker(max_chars=500)
    text = "x" * 10_000  # one [UNK] token however long: only the character cap splits it
    chunks = chunker.split(text)
    assert len(chunks) == 20
    assert all(len(c.text) == 500 for c in chunks)
    assert_chunk_invariants(text, chunks, chunker)


def test_combining_marks_stay_with_their_base_letter() -> None:
    chunker = Chunker(max_chars=64)
    text = "e\u0301" * 200  # decomposed "é", one word
    for chunk in chunker.split(text):
        assert chunk.text[0] == "e"


def test_one_megabyte_of_text_is_chunked_within_limits(chunker: Chunker) -> None:
    text = (prose(400) + " ") * 40
    text = text[:1_000_000]
    chunks = chunker.split(text)
    assert 500 < len(chunks) < 2000
    assert_chunk_invariants(text, chunks, chunker)


def test_same_text_gives_same_chunks(chunker: Chunker, speech: str) -> None:
    assert chunker.split(speech) == Chunker().split(speech)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 10}, "max_tokens"),
        ({"overlap_tokens": -1}, "overlap_tokens"),
        ({"overlap_tokens": 200}, "overlap_tokens"),
        ({"max_chars": 0}, "max_chars"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Chunker(**kwargs)


# Properties ----------------------------------------------------------------------------------

EMOJI = st.sampled_from(["😀", "👍🏽", "👩‍💻", "🇫🇷", "❤️"])
SCRIPTS = st.sampled_from(
    [
        "hello",
        "World.",
        "Straße",
        "naïve",
        "東京",
        "は",
        "한국어",
        "مرحبا",
        "नमस्ते",
        "Ελλάδα",
        "x" * 150,
    ]
)
TEXTS = st.one_of(
    st.text(max_size=3000),
    st.text(min_size=500, max_size=4000),
    # No whitespace at all: one huge "word".
    st.text(
        alphabet=st.characters(blacklist_categories=["Zs", "Zl", "Zp", "Cc"]),
        min_size=200,
        max_size=4000,
    ),
    # Only punctuation.
    st.text(alphabet=".,;:!?-()[]{}'\"…。", min_size=1, max_size=2000),
    # Words of mixed scripts, emoji, sentence ends and paragraph breaks.
    st.lists(
        st.one_of(SCRIPTS, EMOJI, st.sampled_from([" ", "\n", "\n\n", ". ", "。", "? "])),
        min_size=1,
        max_size=800,
    ).map("".join),
    st.lists(st.text(min_size=1, max_size=400), max_size=20).map(" ".join),
)


@PROPERTY_SETTINGS
@given(text=TEXTS)
def test_property_small_window_invariants_hold_for_any_text(
    small_chunker: Chunker, text: str
) -> None:
    assert_chunk_invariants(text, small_chunker.split(text), small_chunker)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_property_default_window_invariants_hold_for_any_text(chunker: Chunker, text: str) -> None:
    assert_chunk_invariants(text, chunker.split(text), chunker)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_property_one_tokenizer_pass_counts_each_word_as_counting_it_alone(text: str) -> None:
    """The default chunker counts every word from one pass over the whole text (offsets of
    its word pieces); counting each distinct word on its own must give the same chunks."""
    one_pass = Chunker(max_tokens=24, overlap_tokens=6, max_chars=120)
    word_by_word = Chunker(
        max_tokens=24, overlap_tokens=6, max_chars=120, count_tokens=count_tokens_batch
    )
    assert one_pass.split(text) == word_by_word.split(text)


def superadditive_count(texts: Sequence[str]) -> list[int]:
    """A counter under which joined pieces cost more than their parts, so estimates made from
    word counts are always too low and the chunker must fall back to checking every chunk."""
    return [len(t) + len(t) ** 2 // 200 for t in texts]


@PROPERTY_SETTINGS
@given(text=TEXTS)
def test_property_limits_hold_even_when_counts_do_not_add_up(text: str) -> None:
    chunker = Chunker(max_tokens=40, overlap_tokens=10, count_tokens=superadditive_count)
    chunks = chunker.split(text)
    assert_chunk_invariants(text, chunks, chunker, count=superadditive_count)


def test_fallback_path_is_taken_and_still_covers_everything() -> None:
    chunker = Chunker(max_tokens=40, overlap_tokens=10, count_tokens=superadditive_count)
    text = "abcdefghij" * 300  # one word: pieces joined again cost more than their sum
    chunks = chunker.split(text)
    assert_chunk_invariants(text, chunks, chunker, count=superadditive_count)
    # Summing the pieces' counts would have made 110 chunks over the budget; checking each
    # chunk as it is made gives more, smaller chunks that still overlap.
    assert len(chunks) > 110
    assert all(b.start < a.end for a, b in itertools.pairwise(chunks))


@PROPERTY_SETTINGS
@given(text=st.text(max_size=1500))
def test_property_chunking_is_deterministic(small_chunker: Chunker, text: str) -> None:
    assert small_chunker.split(text) == small_chunker.split(text)


# Sentence boundaries (what "sentence-aware" means) -------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Dr. Smith met J. R. R. Tolkien. Then he left.", ["Dr. Smith met J. R. R. Tolkien.",
                                                            "Then he left."]),
        ("It costs approx. five, i.e. cheap.", ["It costs approx. five, i.e. cheap."]),
        ("Pi is 3.14159 exactly. Next.", ["Pi is 3.14159 exactly.", "Next."]),
        ('He said "Stop." She stopped.', ['He said "Stop."', "She stopped."]),
        ("東京は首都です。大阪も大きい。", ["東京は首都です。", "大阪も大きい。"]),
        ("A heading\n\nA paragraph without end", ["A heading", "A paragraph without end"]),
        ("line one\nline two.", ["line one\nline two."]),
    ],
)  # fmt: skip
def test_sentence_boundaries(text: str, sentences: list[str]) -> None:
    assert [text[s.start : s.end] for s in split_sentences(text)] == sentences


def test_paragraph_ends_are_marked() -> None:
    found = split_sentences("First. Second.\n\nThird.")
    assert [s.ends_paragraph for s in found] == [False, True, False]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_property_sentences_cover_all_non_whitespace_in_order(text: str) -> None:
    found = split_sentences(text)
    covered = [False] * len(text)
    previous_end = 0
    for sentence in found:
        assert previous_end <= sentence.start < sentence.end <= len(text)
        assert not text[sentence.start].isspace() and not text[sentence.end - 1].isspace()
        covered[sentence.start : sentence.end] = [True] * (sentence.end - sentence.start)
        previous_end = sentence.end
    assert all(covered[i] or c.isspace() for i, c in enumerate(text))
