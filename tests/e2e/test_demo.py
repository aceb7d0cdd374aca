"""`make demo` as a newcomer runs it: `python -m examples.demo` starts the whole stack, ingests
every sample document, answers each question from the document that holds the answer, stops
everything and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from examples.demo import DOCUMENTS, QUESTIONS, TOP_K

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.envoy

DOCUMENT_LINE = re.compile(
    r"^  (?P<status>[A-Z]+)\s+(?P<file>\S+\.(?:pdf|txt))\s+(?P<chunks>\d+) chunks"
)
QUESTION_LINE = re.compile(r"^Q(?P<number>\d+)\. (?P<text>.+)$")
PASSAGE_LINE = re.compile(r"^  (?P<rank>\d+)\. score (?P<score>[\d.]+)  \[(?P<source>[^\]]+)\]")
DATA_DIR_LINE = re.compile(r"^Data directory (?P<path>\S+) ")


def processes_with(variable: str) -> list[int]:
    """Ids of the processes whose environment holds `variable` (the demo's services and
    Envoy all carry the demo's DATA_DIR)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if variable.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # the process ended, or is not ours to read
            continue
    return found


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_demo_exits_zero_and_stops_the_stack(demo):
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.rstrip().splitlines()[-1].startswith("Stopped."), demo.stdout
    data_dir = next(
        DATA_DIR_LINE.match(line)
        for line in demo.stdout.splitlines()
        if line.startswith("Data directory")
    )
    assert not Path(data_dir["path"]).exists()  # the temporary data directory is gone
    assert not processes_with(f"DATA_DIR={data_dir['path']}")  # no service or Envoy is left


def test_every_sample_document_is_ingested(demo):
    documents = {
        m["file"]: m for line in demo.stdout.splitlines() if (m := DOCUMENT_LINE.match(line))
    }
    shipped = {p.name for p in DOCUMENTS.iterdir() if p.suffix in {".pdf", ".txt"}}
    assert set(documents) == shipped, demo.stdout
    assert any(name.endswith(".pdf") for name in shipped)
    for name, line in documents.items():
        assert line["status"] == "COMPLETED", name
        assert int(line["chunks"]) > 0, name


def test_each_question_is_answered_from_the_expected_document(demo):
    answers: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in demo.stdout.splitlines():
        if question := QUESTION_LINE.match(line):
            current = answers.setdefault(question["text"], [])
        elif (passage := PASSAGE_LINE.match(line)) and current is not None:
            current.append(passage["source"])
    assert len(QUESTIONS) >= 5
    assert list(answers) == [q.text for q in QUESTIONS], demo.stdout
    for question in QUESTIONS:
        sources = answers[question.text]
        assert len(sources) == TOP_K, question.text
        assert sources[0] == question.expected_source, (question.text, sources)
