"""Question sets over public corpora for measuring retrieval quality (bench/hybrid_retrieval.py).

Each `<name>.json` names a corpus assembled from Debian packages or shipped public-domain text,
how to load it (`loader`), its documents, and questions with answer strings. The questions
were written and committed before any tuning against them. A question belongs to the tuning
half when its position in the file is even and to the held-back half when it is odd; tuning
looks only at the tuning half, and the figures reported are the held-back half's.

A question is answered when its answer string (whitespace-insensitive) appears in a returned
passage. `load_set` checks that every answer is in its document, so a set cannot silently rot.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.ingest.pipeline.extract import extract_html
from services.ingest.pipeline.normalize import normalize_text

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SET_NAMES = ("postgresql", "manpages", "prose")
POSTGRESQL_MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
MAN_ROOT = Path("/usr/share/man")
PROSE_ROOTS = {
    "debian-history/": Path("/usr/share/doc/debian-history"),
    "common-licenses/": Path("/usr/share/common-licenses"),
    "examples/": REPO_ROOT / "examples" / "documents",
}
INSTALL_HINT = {
    "postgresql-html": "apt-get install postgresql-doc-15",
    "man": "apt-get install man-db manpages manpages-dev",
    "prose": "apt-get install debian-history",
}


class MissingCorpus(Exception):
    """The corpus is not installed on this machine; the message says how to install it."""


@dataclass(frozen=True, slots=True)
class Question:
    document: str
    kind: str  # "keyword" (an identifier or its words) or "paraphrase"
    question: str
    answer: str
    held_back: bool


@dataclass(frozen=True, slots=True)
class QuestionSet:
    name: str
    kind: str
    source: str
    documents: dict[str, tuple[str, str]]  # name -> (title, normalized text)
    questions: list[Question]


def squeeze(text: str) -> str:
    return " ".join(text.split())


def _render_man(name: str) -> tuple[str, str]:
    section_dir, page = name.split("/", 1)
    candidates = sorted((MAN_ROOT / section_dir).glob(page + ".*")) + [MAN_ROOT / name]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise MissingCorpus(f"man page {name} is not installed")
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    rendered = subprocess.run(
        ["man", "--nh", "--nj", "-P", "cat", "-l", str(path)],
        check=True,
        capture_output=True,
        env=env,
    ).stdout
    plain = subprocess.run(["col", "-bx"], input=rendered, check=True, capture_output=True).stdout
    return page, plain.decode()


def _load_prose(name: str) -> tuple[str, str]:
    root = next((r for prefix, r in PROSE_ROOTS.items() if name.startswith(prefix)), None)
    if root is None:
        raise ValueError(f"no known place for {name}")
    path = root / name.split("/", 1)[1]
    if not path.exists():
        raise MissingCorpus(f"{path} is not installed")
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if ".htm" in path.name:
        extracted = extract_html(data)
        return extracted.title or path.name, extracted.text
    return path.name.removesuffix(".gz"), data.decode()


def _load_document(loader: str, name: str) -> tuple[str, str]:
    if loader == "postgresql-html":
        path = POSTGRESQL_MANUAL / name
        if not path.exists():
            raise MissingCorpus(f"{path} is not installed")
        extracted = extract_html(path.read_bytes())
        title, text = extracted.title or name, extracted.text
    elif loader == "man":
        title, text = _render_man(name)
    elif loader == "prose":
        title, text = _load_prose(name)
    else:
        raise ValueError(f"unknown loader {loader!r}")
    return title, normalize_text(text)


def load_set(name: str) -> QuestionSet:
    """The named set with its documents loaded; raises MissingCorpus or ValueError."""
    spec = json.loads((HERE / f"{name}.json").read_text())
    loader = spec["loader"]
    try:
        documents = {doc: _load_document(loader, doc) for doc in spec["documents"]}
    except MissingCorpus as missing:
        raise MissingCorpus(f"{missing}. Install it with: {INSTALL_HINT[loader]}") from None
    questions = [
        Question(q["document"], q["kind"], q["question"], q["answer"], held_back=i % 2 == 1)
        for i, q in enumerate(spec["questions"])
    ]
    problems = [
        f"{q.document}: answer {q.answer!r} is not in the document"
        for q in questions
        if q.document not in documents or squeeze(q.answer) not in squeeze(documents[q.document][1])
    ]
    if len(documents) != len(spec["documents"]):
        problems.append("a document is listed twice")
    if problems:
        raise ValueError(f"set {name} is inconsistent:\n  " + "\n  ".join(problems))
    return QuestionSet(name, spec["kind"], spec["source"], documents, questions)
