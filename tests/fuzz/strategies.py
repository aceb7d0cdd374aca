"""Hypothesis strategies for any protobuf message, derived from its descriptor.

`messages(descriptor, hints)` draws messages of that type with every field kind covered:
scalars at their boundaries, strings empty, huge and full of odd code points, bytes that are
not UTF-8, enums with values the schema does not know, nested messages, oneofs, repeated
fields and maps. Fields whose name says what they hold (`project_id`, `page_token`,
`passphrase`…) draw from `FieldHints` as well, so requests reach past validation into the
handlers: real ids and tokens mixed with malformed ones.

No hypothesis-protobuf package is used: the two on PyPI (hypothesis-protobuf 0.1, 2015;
hypothesis-pb 1.2, 2019) predate proto3 optional fields and current Hypothesis.

The strategies only build messages; they never send anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import descriptor as pb
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = pb.FieldDescriptor
HUGE_STRING = 70_000  # past every length rule of the API, well under the message limits
MAX_DEPTH = 3

INT_BOUNDS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}

MALFORMED_IDS = (
    "",
    " ",
    "0",
    "not-a-uuid",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "../../etc/passwd",
    "'; DROP TABLE projects; --",
    "%00",
    "\x00",
    "\ud7ff" * 3,
    "a" * 4096,
    "{project_id}",
)
MALFORMED_TOKENS = (
    "",
    "x",
    "AAAA",
    "====",
    "a" * 10_000,
    "\x00\x01",
    "v1.",
    "v1.AAAA.AAAA",
    "eyJhbGciOiJub25lIn0.e30.",
    "bm90IGEgdG9rZW4",
)


@dataclass
class FieldHints:
    """Values that mean something to the running services: the ids of real projects and
    documents, unlock tokens (of the right and of another project), page tokens the
    services issued, the passphrase of the fixture projects.

    The lists grow while a campaign runs. Strategies draw an index and read the list when
    the value is built, so the shape of what Hypothesis draws never depends on them (it
    insists on that) and one seed draws the same choices in every run.
    """

    ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    page_tokens: list[str] = field(default_factory=list)
    passphrases: list[str] = field(default_factory=list)

    def ids_strategy(self) -> st.SearchStrategy[str]:
        return st.one_of(
            known(self.ids, MALFORMED_IDS), st.sampled_from(MALFORMED_IDS), st.uuids().map(str)
        )

    def tokens_strategy(self) -> st.SearchStrategy[str]:
        return st.one_of(
            known(self.tokens, MALFORMED_TOKENS),
            st.sampled_from(MALFORMED_TOKENS),
            mutated(self.tokens),
        )

    def page_tokens_strategy(self) -> st.SearchStrategy[str]:
        return st.one_of(
            known(self.page_tokens, MALFORMED_TOKENS),
            st.sampled_from(MALFORMED_TOKENS),
            mutated(self.page_tokens),
        )

    def passphrases_strategy(self) -> st.SearchStrategy[str]:
        return st.one_of(known(self.passphrases, ("",)), texts())


def known(values: Sequence[str], fallback: Sequence[str]) -> st.SearchStrategy[str]:
    """One of `values` as they are when drawn (`fallback` while there are none)."""

    def pick(index: int) -> str:
        pool = values or fallback
        return pool[index % len(pool)]

    return st.integers(0, 2**16).map(pick)


def mutated(values: Sequence[str]) -> st.SearchStrategy[str]:
    """A real value cut short, with a character flipped, or doubled."""

    def mutate(index: int, position: int, how: int) -> str:
        if not values:
            return ""
        value = values[index % len(values)]
        if not value:
            return value
        position %= len(value)
        if how == 0:
            return value[:position]
        if how == 1:
            flipped = chr((ord(value[position]) ^ 1) or 65)
            return value[:position] + flipped + value[position + 1 :]
        return value + value

    return st.builds(mutate, st.integers(0, 2**16), st.integers(0, 10_000), st.integers(0, 2))


def texts() -> st.SearchStrategy[str]:
    """Strings a person would not type: empty, huge, control characters, astral planes,
    lone code points at the surrogate border, right-to-left marks."""
    return st.one_of(
        st.text(max_size=40),
        st.just(""),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=300),
        st.sampled_from(["\u202e", "\ufeff", "\x00", "\U0010ffff", "e\u0301" * 50, "\r\n"]),
        st.integers(1, HUGE_STRING).map(lambda n: "x" * n),
        st.integers(190, 1100).map(lambda n: "é" * n),  # around the API's length rules
    )


def binaries() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.just(b""),
        st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"%PDF-1.7\n", b"\x00" * 32]),
        st.integers(1, HUGE_STRING).map(lambda n: b"\x80" * n),
    )


def integers(kind: int) -> st.SearchStrategy[int]:
    low, high = INT_BOUNDS[kind]
    edges = sorted({low, low + 1, -1, 0, 1, 2, 5, 20, 50, 51, 100, 101, high - 1, high})
    return st.one_of(
        st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high)
    )


def floats(double: bool) -> st.SearchStrategy[float]:
    return st.floats(width=64 if double else 32, allow_nan=True, allow_infinity=True)


def enums(enum: pb.EnumDescriptor) -> st.SearchStrategy[int]:
    known = [value.number for value in enum.values]
    # Proto3 enums are open: numbers the schema does not name travel on the wire.
    return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))


# Fuzzed ingestion never leaves the machine: loopback, private and malformed URLs only
# (the services refuse private addresses unless configured otherwise).
URLS = (
    "http://127.0.0.1:1/",
    "http://localhost/",
    "https://[::1]/x",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "ftp://127.0.0.1/",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "http://",
    "http://127.0.0.1:99999/",
    "http://" + "a" * 2100,
    "http://user:pass@127.0.0.1/",
)


def _hinted(name: str, hints: FieldHints) -> st.SearchStrategy[str] | None:
    if name == "url":
        return st.sampled_from(URLS)
    if name == "page_token":
        return hints.page_tokens_strategy()
    if name == "id" or name.endswith("_id"):
        return hints.ids_strategy()
    if name.endswith("token") or name.endswith("grant"):
        return hints.tokens_strategy()
    if "passphrase" in name:
        return hints.passphrases_strategy()
    return None


def scalar(fd: F, hints: FieldHints, depth: int) -> st.SearchStrategy:
    if fd.type == F.TYPE_MESSAGE:
        return messages(fd.message_type, hints, depth + 1)
    if fd.type == F.TYPE_ENUM:
        return enums(fd.enum_type)
    if fd.type == F.TYPE_BOOL:
        return st.booleans()
    if fd.type == F.TYPE_STRING:
        hinted = _hinted(fd.name, hints)
        if fd.name == "url":
            return hinted
        return st.one_of(hinted, texts()) if hinted is not None else texts()
    if fd.type == F.TYPE_BYTES:
        return binaries()
    if fd.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return floats(fd.type == F.TYPE_DOUBLE)
    return integers(fd.type)


def _is_map(fd: F) -> bool:
    return fd.type == F.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry and fd.is_repeated


def _field_values(fd: F, hints: FieldHints, depth: int) -> st.SearchStrategy:
    """What to assign to `fd` (a dict for maps, a list for repeated fields)."""
    if _is_map(fd):
        key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        return st.dictionaries(scalar(key, hints, depth), scalar(value, hints, depth), max_size=4)
    if fd.is_repeated:
        limit = 0 if depth >= MAX_DEPTH and fd.type == F.TYPE_MESSAGE else 4
        return st.lists(scalar(fd, hints, depth), max_size=limit)
    return scalar(fd, hints, depth)


def _assign(message: Message, fd: F, value: object) -> None:
    if _is_map(fd):
        target = getattr(message, fd.name)
        for key, item in value.items():  # type: ignore[attr-defined]
            if fd.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif fd.is_repeated:
        target = getattr(message, fd.name)
        if fd.type == F.TYPE_MESSAGE:
            for item in value:  # type: ignore[attr-defined]
                target.add().CopyFrom(item)
        else:
            target.extend(value)  # type: ignore[arg-type]
    elif fd.type == F.TYPE_MESSAGE:
        getattr(message, fd.name).CopyFrom(value)  # type: ignore[arg-type]
    else:
        setattr(message, fd.name, value)


def messages(
    descriptor: pb.Descriptor, hints: FieldHints, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type; each field set or left unset, one member (or none)
    of each oneof, nested messages down to MAX_DEPTH levels."""
    cls = GetMessageClass(descriptor)
    plain = [fd for fd in descriptor.fields if fd.containing_oneof is None or _synthetic(fd)]
    oneofs = [o for o in descriptor.oneofs if not _synthetic_oneof(o)]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        if depth > MAX_DEPTH:
            return message
        for fd in plain:
            if draw(st.booleans()):
                _assign(message, fd, draw(_field_values(fd, hints, depth)))
        for oneof in oneofs:
            chosen = draw(st.sampled_from([None, *oneof.fields]))
            if chosen is not None:
                _assign(message, chosen, draw(_field_values(chosen, hints, depth)))
        return message

    return build()


def _synthetic_oneof(oneof: pb.OneofDescriptor) -> bool:
    """The hidden oneof of a proto3 `optional` field."""
    return len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name


def _synthetic(fd: F) -> bool:
    return _synthetic_oneof(fd.containing_oneof)
