"""The restore drill (docs/operations.md): back up a deployment, destroy it, restore it
with `python -m operations.backup` (a separate process, as an operator runs it), start it
again, and check through the public gRPC API that it answers as before.

Runs on the embedded default (SQLite files, embedded index) and on the real PostgreSQL
(a database of the test's own). The backup is taken while the stack runs.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sys
from pathlib import Path

import grpc
import psycopg
import pytest

from contextcache.v1 import crypto_pb2, ingest_pb2, projects_pb2, query_pb2
from tests.conftest import PASSPHRASE, eventually, new_project, running_stack
from tests.query.test_query import ingest_text

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
OTHER_PASSPHRASE = "a second passphrase, long enough 7"
ALPHA = {
    "Tides": "Tides are the rise and fall of sea levels caused by the gravity of the Moon "
    "and the Sun acting on the rotating Earth.",
    "Bread": "Bread rises because yeast ferments the sugars in the dough and releases "
    "carbon dioxide, which the gluten traps in small bubbles.",
    "Chess": "In chess the bishop moves diagonally any number of squares, and castling moves "
    "the king two squares towards a rook.",
}
BETA = {
    "Lighthouse": "The keeper of the lighthouse trimmed the lamp wick every evening so ships "
    "could pass the reef safely.",
    "Comets": "Comets grow bright tails of gas and dust that always point away from the Sun.",
}
QUESTIONS = ["what makes the sea rise and fall?", "how does dough rise?", "bright tails of gas"]
MODES = (query_pb2.RETRIEVAL_MODE_HYBRID, query_pb2.RETRIEVAL_MODE_KEYWORD)


async def operator_command(settings, *args: str) -> tuple[int, str, str]:
    """`python -m operations.backup ARGS` with the deployment's configuration."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "QDRANT_URL", "QDRANT_PATH", "TLS_DIR"}
    }
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'gen'}",
        ENVIRONMENT="test",
        DATA_DIR=str(settings.data_dir),
        TOKEN_SEALING_KEY=settings.token_sealing_key,
    )
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "operations.backup",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=240)
    return process.returncode, out.decode(), err.decode()


async def ingest(stack, project_id: str, token, texts: dict[str, str]) -> None:
    for title, body in texts.items():
        await ingest_text(stack, project_id, token, title, body)


async def answers(stack, project_id: str, token) -> list[list[tuple]]:
    """Every question in every mode: the passages (document, chunk, offsets, text, score)."""
    found = []
    for question in QUESTIONS:
        for mode in MODES:
            response = await stack.query.Query(
                query_pb2.QueryRequest(project_id=project_id, query=question, top_k=5, mode=mode),
                metadata=token,
            )
            found.append(
                [
                    (
                        p.document_id,
                        p.document_title,
                        p.chunk_index,
                        p.start_offset,
                        p.end_offset,
                        p.text,
                        round(p.score, 4),
                    )
                    for p in response.passages
                ]
            )
    return found


async def documents(stack, project_id: str, token) -> list[ingest_pb2.Document]:
    listed = await stack.ingest.ListDocuments(
        ingest_pb2.ListDocumentsRequest(project_id=project_id, page_size=100), metadata=token
    )
    return list(listed.documents)


async def audit(stack, project) -> crypto_pb2.VerifyAuditChainResponse:
    return await stack.crypto.VerifyAuditChain(
        crypto_pb2.VerifyAuditChainRequest(project_id=project.id, public_key=project.public_key)
    )


async def unlock(stack, project_id: str, passphrase: str):
    unlocked = await stack.projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=project_id, passphrase=passphrase)
    )
    return (("x-unlock-token", unlocked.unlock_token),)


def one_deployment(make_settings, **fixed):
    """Settings of one deployment across restarts: the same token sealing key every time
    (it is kept beside backups, never in them)."""
    sealing_key = base64.b64encode(os.urandom(32)).decode()
    return lambda **overrides: make_settings(token_sealing_key=sealing_key, **fixed, **overrides)


def destroy(settings) -> None:
    """What a lost machine leaves: no data directory (index, TLS, SQLite files), no tables."""
    shutil.rmtree(settings.data_dir)
    if settings.database_url:
        with psycopg.connect(settings.database_url, autocommit=True) as connection:
            connection.execute("DROP SCHEMA public CASCADE")
            connection.execute("CREATE SCHEMA public")


async def test_restore_drill(database, make_settings, tmp_path):
    deployment = one_deployment(make_settings, database_url=database)

    backup = tmp_path / "backup"
    async with running_stack(deployment) as stack:
        settings = stack.settings
        alpha, alpha_token = await new_project(stack, "alpha")
        beta, beta_token = await new_project(stack, "beta", passphrase=OTHER_PASSPHRASE)
        await ingest(stack, alpha.id, alpha_token, ALPHA)
        await ingest(stack, beta.id, beta_token, BETA)
        before = {
            alpha.id: await answers(stack, alpha.id, alpha_token),
            beta.id: await answers(stack, beta.id, beta_token),
        }
        listed = {
            alpha.id: await documents(stack, alpha.id, alpha_token),
            beta.id: await documents(stack, beta.id, beta_token),
        }
        chains = {p.id: await audit(stack, p) for p in (alpha, beta)}
        assert all(chain.valid and chain.events_verified >= 4 for chain in chains.values())
        assert [len(a) for a in before[alpha.id]] != [0] * len(before[alpha.id])

        # Taken while the deployment runs.
        code, out, err = await operator_command(settings, "create", "--to", str(backup))
        assert code == 0, err
        assert "2 projects" in out and "5 completed" in out

    destroy(settings)

    # A damaged backup is refused before anything is written.
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    victim = next(
        p for p in sorted(damaged.rglob("*")) if p.is_file() and p.name != "manifest.json"
    )
    victim.write_bytes(victim.read_bytes()[:-1])
    code, _, err = await operator_command(settings, "restore", "--from", str(damaged))
    assert code == 1 and "damaged" in err and "does not match its checksum" in err
    assert not settings.data_dir.exists() or not any(settings.data_dir.glob("*.db"))

    code, out, err = await operator_command(settings, "restore", "--from", str(backup))
    assert code == 0, err
    assert "vector index rebuilt with" in out

    async with running_stack(deployment) as stack:
        # The chains are exactly as backed up, before anyone unlocks (which appends).
        for project in (alpha, beta):
            head = await stack.crypto.GetAuditHead(
                crypto_pb2.GetAuditHeadRequest(project_id=project.id)
            )
            assert head.head == chains[project.id].head
            restored_chain = await audit(stack, project)
            assert restored_chain.valid, restored_chain.reason
            assert restored_chain.events_verified == chains[project.id].events_verified

        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await unlock(stack, alpha.id, OTHER_PASSPHRASE)
        assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
        tokens = {
            alpha.id: await unlock(stack, alpha.id, PASSPHRASE),
            beta.id: await unlock(stack, beta.id, OTHER_PASSPHRASE),
        }
        for project_id, token in tokens.items():
            assert await answers(stack, project_id, token) == before[project_id]
            assert await documents(stack, project_id, token) == listed[project_id]

        # The restored deployment takes new content (its sequences and keys are whole).
        await ingest(
            stack,
            alpha.id,
            tokens[alpha.id],
            {"Bees": "Honey bees dance to point their hive mates towards flowers."},
        )
        response = await stack.query.Query(
            query_pb2.QueryRequest(project_id=alpha.id, query="how do bees talk?", top_k=1),
            metadata=tokens[alpha.id],
        )
        assert response.passages[0].document_title == "Bees"
        for project in (alpha, beta):
            chain = await audit(stack, project)
            assert chain.valid and chain.events_verified > chains[project.id].events_verified

        if not settings.database_url:
            # The embedded index is open: a restore over the running deployment is refused.
            code, _, err = await operator_command(
                settings, "restore", "--from", str(backup), "--replace"
            )
            assert code == 1 and "in use by another process" in err
            assert await documents(stack, alpha.id, tokens[alpha.id]) != listed[alpha.id]
            after = await answers(stack, beta.id, tokens[beta.id])

    if not settings.database_url:
        # A lost index alone is rebuilt from the tables.
        shutil.rmtree(settings.index_path)
        code, out, err = await operator_command(settings, "rebuild-index")
        assert code == 0, err
        assert f"rebuilt with {len(ALPHA) + len(BETA) + 1} points" in out
        async with running_stack(deployment) as stack:
            token = await unlock(stack, beta.id, OTHER_PASSPHRASE)
            assert await answers(stack, beta.id, token) == after == before[beta.id]


async def test_restore_refuses_a_deployment_that_has_data(make_settings, tmp_path):
    async with running_stack(make_settings) as stack:
        settings = stack.settings
        await new_project(stack, "kept")
    backup = tmp_path / "backup"
    assert (await operator_command(settings, "create", "--to", str(backup)))[0] == 0

    code, _, err = await operator_command(settings, "restore", "--from", str(backup))
    assert code == 1
    assert "already has databases" in err and "--replace" in err

    code, out, err = await operator_command(settings, "restore", "--from", str(backup), "--replace")
    assert code == 0, err
    assert "1 projects" in out

    code, _, err = await operator_command(settings, "create", "--to", str(backup))
    assert code == 1 and "not empty" in err


LEDGER = " ".join(
    f"Ledger line {n}: crane {n} of the harbour lifted {n * 7} crates of tea, and the tally "
    f"clerk signed sheet {n}."
    for n in range(250)
)


async def test_a_document_being_ingested_at_backup_time_completes_after_the_restore(
    make_settings, tmp_path
):
    deployment = one_deployment(make_settings)

    backup = tmp_path / "backup"
    async with running_stack(deployment) as stack:
        settings = stack.settings
        project, token = await new_project(stack)
        await ingest(stack, project.id, token, {"Tides": ALPHA["Tides"]})
        # The query service is away: the document is embedded and stored, and its job keeps
        # retrying the index step, so it is surely in flight when the backup is taken.
        await stack.stop_service("query")
        ledger = (
            await stack.ingest.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id=project.id,
                    text=ingest_pb2.TextSource(title="Ledger", body=LEDGER),
                    background=True,
                ),
                metadata=token,
            )
        ).document

        async def retrying() -> bool:
            document = (
                await stack.ingest.GetDocument(
                    ingest_pb2.GetDocumentRequest(project_id=project.id, document_id=ledger.id),
                    metadata=token,
                )
            ).document
            assert document.status == ingest_pb2.DOCUMENT_STATUS_PROCESSING, document
            return document.transient_failures > 0

        await eventually(retrying, timeout=180, every=0.2)
        code, out, err = await operator_command(settings, "create", "--to", str(backup))
        assert code == 0, err
        assert "1 completed, 1 processing" in out

    destroy(settings)
    code, out, err = await operator_command(settings, "restore", "--from", str(backup))
    assert code == 0, err
    assert err == ""  # same sealing key: nothing is left that cannot resume

    # The job's lease, taken before the backup, lapses after the restore and ingest runs it
    # again (a shorter lease from now on shortens the wait).
    async with running_stack(deployment, ingest_lease_seconds=5) as stack:
        token = await unlock(stack, project.id, PASSPHRASE)

        async def completed() -> bool:
            listed = await documents(stack, project.id, token)
            assert all(d.status != ingest_pb2.DOCUMENT_STATUS_FAILED for d in listed), listed
            return [d.status for d in listed] == [ingest_pb2.DOCUMENT_STATUS_COMPLETED] * 2

        await eventually(completed, timeout=180, every=0.5)
        response = await stack.query.Query(
            query_pb2.QueryRequest(
                project_id=project.id, query="crane 212 of the harbour lifted crates", top_k=1
            ),
            metadata=token,
        )
        assert response.passages[0].document_id == ledger.id
        assert "crane 212 " in response.passages[0].text
        chain = await audit(stack, project)
        assert chain.valid, chain.reason


async def test_restoring_an_older_backup_forgets_what_came_after(
    make_settings, redis_url, tmp_path
):
    """--replace over a deployment that moved on: its later documents and audit events are
    gone, and no query ranking cached after the backup (Redis) is served."""
    deployment = one_deployment(make_settings, redis_url=redis_url)

    backup = tmp_path / "backup"
    async with running_stack(deployment) as stack:
        settings = stack.settings
        project, token = await new_project(stack)
        await ingest(stack, project.id, token, ALPHA)
        then = await answers(stack, project.id, token)
        listed = await documents(stack, project.id, token)
        chain = await audit(stack, project)
        code, _, err = await operator_command(settings, "create", "--to", str(backup))
        assert code == 0, err

        await ingest(stack, project.id, token, BETA)
        assert await answers(stack, project.id, token) != then  # cached at the new generation

    code, _, err = await operator_command(settings, "restore", "--from", str(backup))
    assert code == 1 and "--replace" in err
    code, _, err = await operator_command(settings, "restore", "--from", str(backup), "--replace")
    assert code == 0, err

    async with running_stack(deployment) as stack:
        head = await stack.crypto.GetAuditHead(
            crypto_pb2.GetAuditHeadRequest(project_id=project.id)
        )
        assert head.head == chain.head
        token = await unlock(stack, project.id, PASSPHRASE)
        assert await documents(stack, project.id, token) == listed
        assert await answers(stack, project.id, token) == then
        restored = await audit(stack, project)
        assert restored.valid and restored.events_verified == chain.events_verified + 1
