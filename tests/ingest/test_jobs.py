"""Background ingestion through RQ on the real PostgreSQL and Redis: a worker subprocess
(`python -m services.ingest.worker`) runs the jobs; the reaper inside the ingest service
requeues a document whose worker was killed, or fails it once it used up its attempts.

Each test has its own database and its own RQ queue name, so parallel runs never share jobs.
Worker subprocesses run in their own session and are killed with kill -9 (the RQ parent and
its work horse) in `finally`; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from rq import Queue, Worker
from rq.job import Job

from contextcache.v1 import ingest_pb2
from runtime.ports import free_port
from runtime.protos import INGEST_SERVICE
from runtime.telemetry import tracer_provider
from tests.conftest import Stack, eventually, new_project, running_stack
from tests.ingest.test_documents import SPEECH, documents_of, failure, text_request

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WORKER_READY_TIMEOUT = 120.0
LEASE_SECONDS = 3


def large_text(sentences: int = 3000) -> str:
    """Distinct sentences, so no chunk's embedding is reused (3000 sentences: 350 chunks)."""
    return "\n\n".join(
        " ".join(
            f"Entry {p}.{s}: the keeper of lighthouse {p * 31 + s} logged ship number "
            f"{(p * 17 + s) * 13} passing the northern reef at {s % 24} hours."
            for s in range(10)
        )
        for p in range(sentences // 10)
    )


@contextlib.contextmanager
def rq_queue_name(redis_url: str) -> Iterator[str]:
    """A queue of this test's own; its keys (and its jobs) are removed afterwards."""
    name = f"test-ingest-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        connection = redis.Redis.from_url(redis_url)
        try:
            queue = Queue(name, connection=connection)
            job_ids = set(queue.job_ids)
            for registry in (
                queue.started_job_registry,
                queue.finished_job_registry,
                queue.failed_job_registry,
                queue.canceled_job_registry,
            ):
                job_ids.update(registry.get_job_ids())
            keys = [f"rq:job:{job_id}" for job_id in job_ids]
            keys += [key for key in connection.scan_iter(match=f"*{name}*")]
            if keys:
                connection.delete(*keys)
        finally:
            connection.close()


def children_of(pid: int) -> list[int]:
    """Every descendant of a process, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                found.append(child)
                frontier.append(child)
    return found


class WorkerProcess:
    """`python -m services.ingest.worker` for the given stack, in its own process group."""

    def __init__(self, stack: Stack, log_path: Path) -> None:
        settings = stack.settings
        self.health_port = free_port()
        env = {
            **os.environ,
            "ENVIRONMENT": "test",
            "DATABASE_URL": str(settings.database_url),
            "REDIS_URL": str(settings.redis_url),
            "INGEST_QUEUE": settings.ingest_queue,
            "INGEST_LEASE_SECONDS": str(settings.ingest_lease_seconds),
            "INGEST_MAX_ATTEMPTS": str(settings.ingest_max_attempts),
            "CRYPTO_ADDR": settings.crypto_addr,
            "QUERY_ADDR": settings.query_addr,
            "DATA_DIR": str(settings.data_dir),
            "TOKENIZERS_PARALLELISM": "false",
            "LISTEN_HOST": "127.0.0.1",
            "HEALTH_PORT": str(self.health_port),
            # Never the default metrics port: other stacks may run on this machine.
            "METRICS_PORT": str(free_port()),
        }
        self.queue_name = settings.ingest_queue
        self.redis_url = str(settings.redis_url)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.ingest.worker"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def registered(self) -> bool:
        """True once RQ knows the worker (it loads the model before registering)."""
        if self.process.poll() is not None:
            raise AssertionError(f"the worker exited early:\n{self.log()}")
        connection = redis.Redis.from_url(self.redis_url)
        try:
            workers = Worker.all(queue=Queue(self.queue_name, connection=connection))
            return any(w.pid == self.process.pid for w in workers)
        finally:
            connection.close()

    async def ready(self) -> WorkerProcess:
        await eventually(self.registered, timeout=WORKER_READY_TIMEOUT, every=0.2)
        return self

    def kill(self) -> None:
        """kill -9 of the worker and its work horse, as when its container is killed (the
        horse runs in a process group of its own, so it is found as a child)."""
        doomed = [self.process.pid, *children_of(self.process.pid)]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def worker(stack: Stack, tmp_path: Path) -> AsyncIterator[WorkerProcess]:
    process = WorkerProcess(stack, tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log")
    try:
        yield await process.ready()
    finally:
        process.kill()


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    with rq_queue_name(redis_url) as name:
        yield name


async def get_document(stack: Stack, project_id: str, document_id: str, token):
    return (
        await stack.ingest.GetDocument(
            ingest_pb2.GetDocumentRequest(project_id=project_id, document_id=document_id),
            metadata=token,
        )
    ).document


async def watch_to_the_end(stack: Stack, project_id: str, document_id: str, token, timeout=300):
    seen = []
    async for update in stack.ingest.WatchDocument(
        ingest_pb2.WatchDocumentRequest(project_id=project_id, document_id=document_id),
        metadata=token,
        timeout=timeout,
    ):
        seen.append(update.document)
    return seen


async def embedding_started(stack: Stack, project_id: str, document_id: str, token):
    """Waits until the document is being embedded (progress persisted, not finished)."""

    async def check():
        document = await get_document(stack, project_id, document_id, token)
        assert document.status != ingest_pb2.DOCUMENT_STATUS_COMPLETED, "finished too soon"
        running = document.status == ingest_pb2.DOCUMENT_STATUS_PROCESSING
        return document if running and document.chunks_embedded > 0 else None

    return await eventually(check, timeout=180, every=0.1)


def stored_rows(postgres_url: str, document_id: str) -> tuple[int, int, int]:
    """(chunk rows, distinct chunk indexes, fact rows) of a document, read from the database."""
    with psycopg.connect(postgres_url) as connection:
        chunks, distinct = connection.execute(
            "SELECT count(*), count(DISTINCT chunk_index) FROM chunks WHERE document_id = %s",
            (document_id,),
        ).fetchone()
        (facts,) = connection.execute(
            "SELECT count(*) FROM facts WHERE document_id = %s", (document_id,)
        ).fetchone()
    return chunks, distinct, facts


async def indexed_chunks(stack: Stack, project_id: str) -> list[tuple[str, str, int]]:
    """(chunk id, document id, chunk index) of every point the query service's index holds."""
    index = stack.app("query").index
    return [(c.chunk_id, c.document_id, c.chunk_index) async for c in index.scroll(project_id)]


async def test_background_job_runs_in_a_worker_and_carries_the_trace(
    make_settings, postgres_url, redis_url, queue_name, tmp_path
):
    spans = InMemorySpanExporter()
    tracer_provider("tests", SimpleSpanProcessor(spans))
    async with running_stack(
        make_settings, database_url=postgres_url, redis_url=redis_url, ingest_queue=queue_name
    ) as stack:
        project, token = await new_project(stack)
        async with worker(stack, tmp_path) as running:
            queued = (
                await stack.ingest.IngestDocument(
                    text_request(project.id, SPEECH, title="Gettysburg", background=True),
                    metadata=token,
                )
            ).document
            assert queued.status == ingest_pb2.DOCUMENT_STATUS_QUEUED
            assert queued.chunk_count == 0

            seen = await watch_to_the_end(stack, project.id, queued.id, token, timeout=120)
            # The kubelet's liveness probe of the worker (HEALTH_PORT, plain HTTP).
            probe = f"http://127.0.0.1:{running.health_port}/livez"
            with await asyncio.to_thread(urllib.request.urlopen, probe, timeout=5) as answer:
                assert answer.status == 200
        done = seen[-1]
        assert done.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, done.error
        assert done.chunk_count >= 1 and done.chunks_embedded == done.chunk_count
        assert done.attempts == 1
        assert stored_rows(postgres_url, queued.id)[0] == done.chunk_count
        assert len(await indexed_chunks(stack, project.id)) == done.chunk_count

        # The job carries the trace of the IngestDocument call into the worker.
        job = Job.fetch(f"document-{queued.id}-1", connection=redis.Redis.from_url(redis_url))
        traceparent = job.meta["trace"]["traceparent"]
        server_span = next(
            s
            for s in spans.get_finished_spans()
            if s.kind == SpanKind.SERVER and s.name.endswith("IngestService/IngestDocument")
        )
        assert traceparent.split("-")[1] == format(server_span.context.trace_id, "032x")


def session_of(pid: int) -> list[int]:
    """The processes of the session `pid` leads (its work horses and what they started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == pid:
                found.append(int(stat.parent.name))
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()
    except OSError:
        return "(ended)"


async def test_jobs_share_the_workers_processes_and_a_stopped_worker_leaves_none(
    make_settings, postgres_url, redis_url, queue_name, tmp_path
):
    # The worker does not fork per job: its text worker processes start once and serve
    # every job (a forking worker left a set of orphans of about 100 MB per job), and none
    # outlives the worker once it stops.
    async with running_stack(
        make_settings, database_url=postgres_url, redis_url=redis_url, ingest_queue=queue_name
    ) as stack:
        project, token = await new_project(stack)
        async with worker(stack, tmp_path) as running:
            pid = running.process.pid
            sessions = []
            for n in range(3):
                queued = (
                    await stack.ingest.IngestDocument(
                        text_request(project.id, f"{SPEECH} ({n})", background=True),
                        metadata=token,
                    )
                ).document
                seen = await watch_to_the_end(stack, project.id, queued.id, token, timeout=120)
                assert seen[-1].status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, seen[-1].error
                sessions.append(sorted(session_of(pid)))
            assert sessions[0] == sessions[1] == sessions[2], [
                [command_of(p) for p in session] for session in sessions
            ]

            running.process.send_signal(signal.SIGTERM)  # RQ's warm shutdown, as a pod stops
            running.process.wait(timeout=60)
            with contextlib.suppress(AssertionError):
                await eventually(lambda: session_of(pid) == [], timeout=15, every=0.2)
            left = session_of(pid)
            commands = [command_of(p) for p in left]
            for orphan in left:  # ours to clean up, whatever the assertion says
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)
            assert left == [], commands


async def test_killed_worker_is_replaced_and_the_document_completes_once(
    make_settings, postgres_url, redis_url, queue_name, tmp_path
):
    async with running_stack(
        make_settings,
        database_url=postgres_url,
        redis_url=redis_url,
        ingest_queue=queue_name,
        ingest_lease_seconds=LEASE_SECONDS,
        ingest_reaper_interval=0.5,
    ) as stack:
        project, token = await new_project(stack)
        first = await WorkerProcess(stack, tmp_path / "first.log").ready()
        try:
            queued = (
                await stack.ingest.IngestDocument(
                    text_request(project.id, large_text(), title="Logbook", background=True),
                    metadata=token,
                )
            ).document
            assert queued.status == ingest_pb2.DOCUMENT_STATUS_QUEUED
            progress = await embedding_started(stack, project.id, queued.id, token)
            assert progress.chunks_total >= 300
        finally:
            first.kill()

        # The reaper notices the lapsed lease and queues the document again.
        async def requeued():
            document = await get_document(stack, project.id, queued.id, token)
            return document.status == ingest_pb2.DOCUMENT_STATUS_QUEUED

        await eventually(requeued, timeout=LEASE_SECONDS * 5)

        async with worker(stack, tmp_path):
            seen = await watch_to_the_end(stack, project.id, queued.id, token)
        done = seen[-1]
        assert done.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, done.error
        assert done.attempts == 2
        assert done.chunk_count == progress.chunks_total

        chunks, distinct, facts = stored_rows(postgres_url, queued.id)
        assert chunks == distinct == done.chunk_count
        assert facts == done.fact_count
        points = await indexed_chunks(stack, project.id)
        assert await stack.app("query").index.count(project.id) == done.chunk_count
        assert len(points) == len(set(points)) == done.chunk_count
        assert {p[1] for p in points} == {queued.id}
        assert sorted(p[2] for p in points) == list(range(done.chunk_count))


async def test_a_document_whose_workers_keep_dying_ends_failed(
    make_settings, postgres_url, redis_url, queue_name, tmp_path
):
    async with running_stack(
        make_settings,
        database_url=postgres_url,
        redis_url=redis_url,
        ingest_queue=queue_name,
        ingest_lease_seconds=LEASE_SECONDS,
        ingest_reaper_interval=0.5,
        ingest_max_attempts=2,
    ) as stack:
        project, token = await new_project(stack)
        queued = None
        for attempt in (1, 2):
            dying = await WorkerProcess(stack, tmp_path / f"dying-{attempt}.log").ready()
            try:
                if queued is None:
                    queued = (
                        await stack.ingest.IngestDocument(
                            text_request(project.id, large_text(1000), background=True),
                            metadata=token,
                        )
                    ).document
                progress = await embedding_started(stack, project.id, queued.id, token)
                assert progress.attempts == attempt
            finally:
                dying.kill()

        # No worker replaces the second one: the reaper fails the document, it is not left
        # processing (or queued) forever, and the reason says what to do.
        seen = await watch_to_the_end(stack, project.id, queued.id, token, timeout=60)
        failed = seen[-1]
        assert failed.status == ingest_pb2.DOCUMENT_STATUS_FAILED
        assert failed.attempts == 2
        assert "interrupted 2 times" in failed.error
        assert "RetryDocument" in failed.error
        assert stored_rows(postgres_url, queued.id) == (0, 0, 0)
        assert await stack.app("query").index.count(project.id) == 0

        # Once a worker runs again, a retry completes it.
        async with worker(stack, tmp_path):
            await stack.ingest.RetryDocument(
                ingest_pb2.RetryDocumentRequest(
                    project_id=project.id, document_id=queued.id, background=True
                ),
                metadata=token,
            )
            seen = await watch_to_the_end(stack, project.id, queued.id, token)
        assert seen[-1].status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, seen[-1].error
        assert stored_rows(postgres_url, queued.id)[0] == seen[-1].chunk_count


async def test_a_job_waiting_for_a_worker_is_not_queued_twice(
    make_settings, postgres_url, redis_url, queue_name, tmp_path
):
    async with running_stack(
        make_settings,
        database_url=postgres_url,
        redis_url=redis_url,
        ingest_queue=queue_name,
        ingest_lease_seconds=1,
        ingest_reaper_interval=0.2,
    ) as stack:
        project, token = await new_project(stack)
        queued = (
            await stack.ingest.IngestDocument(
                text_request(project.id, SPEECH, background=True), metadata=token
            )
        ).document
        queue = Queue(queue_name, connection=redis.Redis.from_url(redis_url))
        await asyncio.sleep(4)  # four leases go by while no worker runs
        assert queue.job_ids == [f"document-{queued.id}-1"]
        waiting = await get_document(stack, project.id, queued.id, token)
        assert (waiting.status, waiting.attempts) == (ingest_pb2.DOCUMENT_STATUS_QUEUED, 0)

        async with worker(stack, tmp_path):
            seen = await watch_to_the_end(stack, project.id, queued.id, token, timeout=120)
        assert seen[-1].status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, seen[-1].error
        assert seen[-1].attempts == 1


async def test_in_process_jobs_run_a_few_at_a_time_and_the_rest_wait_their_turn(make_settings):
    """Without Redis, background documents run INGEST_BACKGROUND_JOBS at once. The others
    wait for a slot with their lease kept, leases far shorter than the wait: the reaper
    sees a backlog, not lost jobs, so each document runs once."""
    async with running_stack(
        make_settings,
        ingest_background_jobs=1,
        ingest_lease_seconds=1,
        ingest_reaper_interval=0.2,
    ) as stack:
        project, token = await new_project(stack)
        sent = [
            (
                await stack.ingest.IngestDocument(
                    text_request(project.id, f"{large_text(400)} Copy {n}.", background=True),
                    metadata=token,
                )
            ).document.id
            for n in range(4)
        ]
        most_at_once = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            documents = await documents_of(stack, project.id, token)
            statuses = [d.status for d in documents]
            most_at_once = max(most_at_once, statuses.count(ingest_pb2.DOCUMENT_STATUS_PROCESSING))
            if all(s == ingest_pb2.DOCUMENT_STATUS_COMPLETED for s in statuses):
                break
            assert ingest_pb2.DOCUMENT_STATUS_FAILED not in statuses, [d.error for d in documents]
            await asyncio.sleep(0.05)
        assert sorted(d.id for d in documents) == sorted(sent)
        assert all(d.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED for d in documents)
        assert most_at_once == 1
        assert [d.attempts for d in documents] == [1, 1, 1, 1]
        assert [d.transient_failures for d in documents] == [0, 0, 0, 0]


@contextlib.contextmanager
def own_redis(port: int) -> Iterator[subprocess.Popen]:
    """A redis-server of this test's own (never the shared one), which it may kill."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed to test a Redis outage"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if process.poll() is not None:
                raise AssertionError(f"redis-server on :{port} exited")
            time.sleep(0.1)
        else:
            raise AssertionError(f"redis-server on :{port} did not start")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def test_redis_outage_refuses_background_ingestion_and_inline_still_works(
    make_settings, postgres_url
):
    port = free_port()
    queue_name = f"test-ingest-{uuid.uuid4().hex[:12]}"
    with own_redis(port) as server:
        async with running_stack(
            make_settings,
            database_url=postgres_url,
            redis_url=f"redis://127.0.0.1:{port}/0",
            ingest_queue=queue_name,
        ) as stack:
            project, token = await new_project(stack)
            accepted = (
                await stack.ingest.IngestDocument(
                    text_request(project.id, "The first note waits for a worker.", background=True),
                    metadata=token,
                )
            ).document
            assert accepted.status == ingest_pb2.DOCUMENT_STATUS_QUEUED
            assert Queue(queue_name, connection=redis.Redis(port=port)).job_ids == [
                f"document-{accepted.id}-1"
            ]

            health = health_pb2_grpc.HealthStub(stack.channels["ingest"])

            async def ingest_health(name: str) -> int:
                request = health_pb2.HealthCheckRequest(service=name)
                return (await health.Check(request, timeout=3)).status

            assert await ingest_health(INGEST_SERVICE) == health_pb2.HealthCheckResponse.SERVING
            server.kill()
            server.wait(timeout=10)
            error = await failure(
                stack.ingest.IngestDocument(
                    text_request(project.id, SPEECH, background=True), metadata=token
                )
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "Redis" in error.details() and "without background" in error.details()
            # Its background jobs' Redis gone, ingest is not ready (the gateway stops routing
            # to it), though alive and still answering a direct inline call.
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

            async def not_ready() -> bool:
                return await ingest_health(INGEST_SERVICE) == not_serving

            await eventually(not_ready, timeout=15)
            assert await ingest_health("liveness") == health_pb2.HealthCheckResponse.SERVING
            assert [d.id for d in await documents_of(stack, project.id, token)] == [accepted.id]

            inline = (
                await stack.ingest.IngestDocument(text_request(project.id, SPEECH), metadata=token)
            ).document
            assert inline.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, inline.error
            listed = {d.id: d.status for d in await documents_of(stack, project.id, token)}
            assert listed == {
                accepted.id: ingest_pb2.DOCUMENT_STATUS_QUEUED,
                inline.id: ingest_pb2.DOCUMENT_STATUS_COMPLETED,
            }


async def test_background_ingestion_with_redis_on_a_dead_port_is_unavailable(
    make_settings, postgres_url
):
    async with running_stack(
        make_settings,
        database_url=postgres_url,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        ingest_queue=f"test-ingest-{uuid.uuid4().hex[:12]}",
    ) as stack:
        project, token = await new_project(stack)
        error = await failure(
            stack.ingest.IngestDocument(
                text_request(project.id, SPEECH, background=True), metadata=token
            )
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "Redis" in error.details()
        assert await documents_of(stack, project.id, token) == []
        # The same content can be ingested afterwards: nothing half-created blocks it.
        inline = (
            await stack.ingest.IngestDocument(text_request(project.id, SPEECH), metadata=token)
        ).document
        assert inline.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, inline.error
