"""Relevance on real text: paraphrased questions find the document that answers them.

The corpus is the public-domain documents shipped in examples/documents/: the Constitution
(its PDF's text split into the Preamble, each Article and each Amendment, one document each)
plus the Declaration of Independence, the Gettysburg Address and Lincoln's Second Inaugural
Address as .txt files — 38 documents, ingested through IngestDocument. Each question says in
other words what one document says; recall@5 counts the questions whose document is among the
documents of the top 5 passages. Run with `pytest -s` to see the figures and the misses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contextcache.v1 import ingest_pb2, query_pb2
from services.ingest.pipeline.extract import extract_pdf
from tests.conftest import new_project

pytestmark = pytest.mark.slow

DOCUMENTS = Path(__file__).resolve().parents[2] / "examples" / "documents"
TEXT_FILES = {
    "Declaration": "declaration-of-independence.txt",
    "Gettysburg": "gettysburg-address.txt",
    "Second Inaugural": "lincoln-second-inaugural-address.txt",
}
HEADING = re.compile(r"^(Article\. [IVX]+\.|Amendment [IVX]+ \(.*\))$", re.MULTILINE)
REQUIRED_RECALL = 0.8

# (question, the document that answers it). Worded unlike the documents on purpose.
QUESTIONS: list[tuple[str, str]] = [
    ("How old do you have to be to sit in the House of Representatives?", "Article I"),
    ("Which branch of government can declare war and raise an army?", "Article I"),
    ("For how many years does the President serve?", "Article II"),
    ("Who is in charge of the armed forces as their supreme commander?", "Article II"),
    ("How long do federal judges keep their jobs?", "Article III"),
    ("What counts as betraying the country by making war on it?", "Article III"),
    ("Must a state respect the court judgments and records of other states?", "Article IV"),
    ("What is the procedure for changing the Constitution?", "Article V"),
    ("Which laws take precedence over state laws and constitutions?", "Article VI"),
    ("How many states had to approve the Constitution for it to take effect?", "Article VII"),
    ("Can the government set up an official church or censor newspapers?", "Amendment I"),
    ("Do citizens have a right to own guns?", "Amendment II"),
    ("Can troops be lodged in private houses in peacetime?", "Amendment III"),
    ("Do police need a warrant to search my home?", "Amendment IV"),
    ("Can I be forced to be a witness against myself in a criminal case?", "Amendment V"),
    ("Does an accused person get a fast public trial and a lawyer?", "Amendment VI"),
    ("Are excessive bail and cruel punishments allowed?", "Amendment VIII"),
    ("When was slavery abolished?", "Amendment XIII"),
    ("Who is a citizen by birth, and who gets equal protection of the laws?", "Amendment XIV"),
    ("Can someone be kept from voting because of their race?", "Amendment XV"),
    ("May Congress tax people's incomes?", "Amendment XVI"),
    ("Are senators chosen directly by the voters of each state?", "Amendment XVII"),
    ("Which amendment banned making and selling alcoholic drinks?", "Amendment XVIII"),
    ("When did women win the right to vote?", "Amendment XIX"),
    ("What ended prohibition of liquor?", "Amendment XXI"),
    ("How many times can a person be elected president?", "Amendment XXII"),
    ("Does the national capital get electors for president?", "Amendment XXIII"),
    ("Can you be charged a fee in order to vote in federal elections?", "Amendment XXIV"),
    ("What happens when the president is too ill to do the job?", "Amendment XXV"),
    ("At what age can young people vote?", "Amendment XXVI"),
    ("When can a raise in congressional salaries take effect?", "Amendment XXVII"),
    (
        "Which rights are inherent to all people, like life and the pursuit of happiness?",
        "Declaration",
    ),
    ("What grievances did the colonies list against the British king?", "Declaration"),
    ("A short speech honouring soldiers who died at a battlefield cemetery", "Gettysburg"),
    (
        "Which speech asks the nation to heal its wounds and care for widows and orphans?",
        "Second Inaugural",
    ),
]


def constitution_parts() -> dict[str, str]:
    """The Constitution's text by part: "Preamble", "Article I" … "Amendment XXVII"."""
    text = extract_pdf((DOCUMENTS / "constitution-of-the-united-states.pdf").read_bytes()).text
    headings = list(HEADING.finditer(text))
    parts = {"Preamble": text[: headings[0].start()]}
    for heading, following in zip(headings, [*headings[1:], None], strict=True):
        end = following.start() if following else len(text)
        name = heading.group(1).split(" (")[0].replace("Article. ", "Article ").rstrip(".")
        parts[name] = text[heading.start() : end]
    return parts


async def ingest_corpus(stack, project_id: str, token) -> dict[str, str]:
    """Ingests every document; returns document ids by name."""
    requests = {
        name: ingest_pb2.IngestDocumentRequest(
            project_id=project_id, text=ingest_pb2.TextSource(title=name, body=body)
        )
        for name, body in constitution_parts().items()
    }
    for name, filename in TEXT_FILES.items():
        requests[name] = ingest_pb2.IngestDocumentRequest(
            project_id=project_id,
            file=ingest_pb2.FileSource(
                filename=filename, content=(DOCUMENTS / filename).read_bytes()
            ),
        )
    ids = {}
    for name, request in requests.items():
        document = (await stack.ingest.IngestDocument(request, metadata=token)).document
        assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, (name, document.error)
        ids[name] = document.id
    return ids


async def recall_at_5(stack, project_id, token, ids, mode) -> tuple[float, list[str]]:
    names = {document_id: name for name, document_id in ids.items()}
    misses = []
    for question, expected in QUESTIONS:
        response = await stack.query.Query(
            query_pb2.QueryRequest(project_id=project_id, query=question, top_k=5, mode=mode),
            metadata=token,
        )
        found = [names[p.document_id] for p in response.passages]
        if expected not in found:
            misses.append(f"{question!r}: expected {expected}, got {found}")
    return 1 - len(misses) / len(QUESTIONS), misses


async def test_recall_at_5_on_public_domain_documents(stack):
    project, token = await new_project(stack)
    ids = await ingest_corpus(stack, project.id, token)
    assert len(ids) >= 33 and {name for _, name in QUESTIONS} <= set(ids)

    recalls = {}
    for label, mode in (
        ("hybrid", query_pb2.RETRIEVAL_MODE_HYBRID),
        ("dense", query_pb2.RETRIEVAL_MODE_DENSE),
        ("keyword", query_pb2.RETRIEVAL_MODE_KEYWORD),
    ):
        recalls[label], misses = await recall_at_5(stack, project.id, token, ids, mode)
        print(
            f"\nrecall@5 ({label}) = {recalls[label]:.2f} over {len(QUESTIONS)} questions, "
            f"{len(ids)} documents"
        )
        for miss in misses:
            print(f"  miss: {miss}")

    assert recalls["hybrid"] >= REQUIRED_RECALL  # the default mode
