"""The main flow end to end through the services: create, ingest text, query, cite."""

from __future__ import annotations

from contextcache.v1 import ingest_pb2, query_pb2
from tests.conftest import new_project

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by the "
    "engineering company of Gustave Eiffel and built between 1887 and 1889.\n\n"
    "Photosynthesis is the process by which green plants use sunlight to make food from "
    "carbon dioxide and water. Chlorophyll absorbs the light energy."
)


async def test_ingest_text_then_query_it(stack):
    project, token = await new_project(stack)
    document = (
        await stack.ingest.IngestDocument(
            ingest_pb2.IngestDocumentRequest(
                project_id=project.id,
                text=ingest_pb2.TextSource(title="Notes", body=TEXT),
            ),
            metadata=token,
        )
    ).document
    assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error
    assert document.chunk_count >= 1 and document.title == "Notes"

    response = await stack.query.Query(
        query_pb2.QueryRequest(project_id=project.id, query="how do plants make food?"),
        metadata=token,
    )
    top = response.passages[0]
    assert "Photosynthesis" in top.text
    assert top.document_id == document.id and top.document_title == "Notes"
