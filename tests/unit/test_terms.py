"""BM25 terms: the same function tokenizes documents and queries."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.terms import MAX_TERM_CHARS, STOPWORDS, term_frequencies, terms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("hashlib.pbkdf2_hmac", ["hashlib", "pbkdf2_hmac", "pbkdf2", "hmac"]),
        ("x = Value(3)", ["x", "value(", "value", "valu", "3"]),
        ("pbkdf2_hmac(pw, salt)", ["pbkdf2_hmac(", "pbkdf2_hmac", "pbkdf2", "hmac", "pw", "salt"]),
        ("getUserName", ["getusername", "get", "user", "name"]),
        ("HTTPServer", ["httpserver", "http", "server"]),
        ("__init__", ["__init__", "init"]),
        ("MAX_TOKENS", ["max_tokens", "max", "tokens"]),
        ("iS", ["i", "s"]),  # folds to a stopword: dropped like one
    ],
)
def test_words_and_code_identifiers(text: str, expected: list[str]) -> None:
    assert terms(text) == expected


def test_stopwords_are_dropped_from_plain_words_only() -> None:
    assert terms("The keys of the project are in the store") == ["keys", "key", "project", "store"]
    assert terms("is(x) and the_end") == ["is(", "is", "x", "the_end", "end"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ＰＹＴＨＯＮ", ["python"]),  # full-width letters (NFKC)
        ("ﬁle", ["file"]),  # ligature (NFKC)
        ("Straße STRASSE", ["strasse", "strass", "strasse", "strass"]),  # case folding
        ("café cafe\u0301", ["café", "café"]),  # composed and decomposed accents
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # combining vowel signs stay in the word
        ("Ελληνικά Русский", ["ελληνικά", "русский"]),
        ("東京は日本", ["東", "京", "は", "日", "本"]),  # CJK: one term per character
        ("x\ufe0f", ["x"]),  # variation selectors only pick a glyph
        ("😀 — …", []),
    ],
)
def test_unicode_handling(text: str, expected: list[str]) -> None:
    assert terms(text) == expected


def test_blobs_longer_than_the_limit_are_not_terms() -> None:
    sha256 = "a" * 64
    assert terms(f"{sha256} {'b' * (MAX_TERM_CHARS + 1)}") == [sha256]


def test_term_frequencies_count_repeats_in_first_appearance_order() -> None:
    frequencies = term_frequencies("Keys rotate. The KEYS rotate; rotate(keys)")
    assert frequencies == {"keys": 3, "key": 3, "rotate": 3, "rotat": 3, "rotate(": 1}
    assert list(frequencies) == ["keys", "key", "rotate", "rotat", "rotate("]


def test_plain_words_also_give_their_stem_so_inflections_meet() -> None:
    assert terms("locking flushes") == ["locking", "lock", "flushes", "flush"]
    assert set(terms("How is locking done?")) & set(terms("the table lock")) == {"lock"}
    # Identifiers, their parts and short words are kept as they are.
    assert terms("pg_locks getRunningJobs runs") == [
        "pg_locks", "pg", "locks", "getrunningjobs", "get", "running", "jobs", "runs", "run"
    ]  # fmt: skip


def test_query_and_document_terms_meet() -> None:
    document = set(terms("Derive the key with hashlib.pbkdf2_hmac('sha256', pw, salt, 600000)."))
    assert {"pbkdf2_hmac", "pbkdf2", "hmac", "pbkdf2_hmac("} <= document
    assert set(terms("PBKDF2")) <= document
    assert set(terms("pbkdf2_hmac(")) <= document


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500))
def test_property_terms_are_folded_non_empty_and_stable(text: str) -> None:
    result = terms(text)
    assert result == terms(text)
    for term in result:
        assert term and len(term) <= MAX_TERM_CHARS
        assert not any(c.isspace() for c in term)
        assert term == unicodedata.normalize("NFKC", term.casefold())
        # A stopword survives only as the name of a call: "is(" gives "is(" and "is".
        assert term not in STOPWORDS or term + "(" in result
    assert sum(term_frequencies(text).values()) == len(result)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_property_terms_of_a_normalized_text_are_the_same(text: str) -> None:
    assert terms(unicodedata.normalize("NFKC", text)) == terms(text)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("aAbBzZ09_ (.-xXyYiIsS\u00e9\u6771"), max_size=80)
    | st.text(max_size=200)
)
def test_property_the_ascii_shortcut_gives_what_the_general_rules_give(text: str) -> None:
    fast = terms(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("retrieval.terms._plain_ascii", lambda word: False)
        assert fast == terms(text)
