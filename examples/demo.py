"""`make demo`: ContextCache's main job end to end, in one command.

Starts the whole stack (crypto, projects, ingest, query, the rate limiter and Envoy) on the
embedded default — SQLite and the embedded Qdrant engine in a temporary data directory, on
free ports — then, through the Envoy gateway only, as any client would: creates a project,
unlocks it, ingests the public-domain documents in `examples/documents/` (one is a PDF), asks
questions whose answers are in them and prints the top passages with their scores and
sources. Everything is stopped at the end, also on Ctrl-C, SIGTERM or an error, and the
temporary directory is removed, so a second run starts clean and the user's `var/` is never
touched.

Each passage is printed on one line of its own, `  <rank>. score <score>  [<source>] ...`,
followed by an excerpt, so the output can be read by people and checked by tests.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc

from contextcache.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from runtime.config import load_settings
from runtime.ports import free_port
from runtime.stack import Stack

DOCUMENTS = Path(__file__).resolve().parent / "documents"
PROJECT_NAME = "founding-documents"
TOP_K = 3
EXCERPT_CHARS = 220
# Settings that would point the stack at servers or at the user's data instead of the
# embedded default in a temporary directory.
SERVER_SETTINGS = frozenset({"DATABASE_URL", "REDIS_URL", "QDRANT_URL", "QDRANT_PATH", "PORT"})


@dataclass(frozen=True)
class Question:
    text: str
    expected_source: str  # the file in examples/documents/ that holds the answer


QUESTIONS = [
    Question(
        "What did the Declaration say about unalienable rights?",
        "declaration-of-independence.txt",
    ),
    Question(
        "What grievances did the colonies list against the King of Great Britain?",
        "declaration-of-independence.txt",
    ),
    Question("How many senators does each state have?", "constitution-of-the-united-states.pdf"),
    Question(
        "How old must a person be to be eligible to the office of President?",
        "constitution-of-the-united-states.pdf",
    ),
    Question("What oath does the President take?", "constitution-of-the-united-states.pdf"),
    Question(
        "Which amendment protects freedom of speech and of the press?",
        "constitution-of-the-united-states.pdf",
    ),
    Question("Which amendment abolished slavery?", "constitution-of-the-united-states.pdf"),
    Question("What unfinished work must the living be dedicated to?", "gettysburg-address.txt"),
    Question(
        "With malice toward none, what did Lincoln ask the nation to do after the war?",
        "lincoln-second-inaugural-address.txt",
    ),
]

STATUS_NAMES = {
    ingest_pb2.DOCUMENT_STATUS_QUEUED: "QUEUED",
    ingest_pb2.DOCUMENT_STATUS_PROCESSING: "PROCESSING",
    ingest_pb2.DOCUMENT_STATUS_COMPLETED: "COMPLETED",
    ingest_pb2.DOCUMENT_STATUS_FAILED: "FAILED",
}
_WORD = re.compile(r"[a-z]{4,}")
_STEM = 5  # letters compared: "senator" matches "Senators"
_SENTENCE_END = re.compile(r"(?<=[.;:?!])\s+")


def demo_environment(data_dir: Path) -> dict[str, str]:
    """The embedded default on free ports, in `data_dir`, with quiet services.

    Servers configured in the caller's environment (DATABASE_URL, REDIS_URL, QDRANT_URL…)
    and its service addresses are dropped: the demo always runs the embedded default.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SERVER_SETTINGS and not key.endswith("_ADDR")
    }
    for name in ("projects", "ingest", "query", "crypto", "ratelimit"):
        env[f"{name.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    env.update(
        DATA_DIR=str(data_dir),
        GATEWAY_PORT=str(free_port()),
        GATEWAY_ADMIN_PORT=str(free_port()),
        CONSOLE_PORT=str(free_port()),
        # Envoy routes as soon as its first health check of each service passes.
        GATEWAY_HEALTH_CHECK_INTERVAL="1",
        # Unlock tokens of this run are sealed with a key that dies with it.
        TOKEN_SEALING_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        LOG_LEVEL="WARNING",
        ENVIRONMENT="development",
    )
    return env


def excerpt(text: str, question: str, limit: int = EXCERPT_CHARS) -> str:
    """The sentence of a passage that shares most words with the question, trimmed."""
    text = " ".join(text.split())

    def stems(words: str) -> set[str]:
        return {word[:_STEM] for word in _WORD.findall(words.lower())}

    wanted = stems(question)
    best = max(_SENTENCE_END.split(text), key=lambda sentence: len(wanted & stems(sentence)))
    start = text.find(best)
    snippet = text[start : start + limit]
    prefix = "…" if start > 0 else ""
    suffix = "…" if start + limit < len(text) else ""
    return f"{prefix}{snippet.rstrip()}{suffix}"


# Where the demo writes: the terminal, while the services' own output goes to a log file.
_terminal: TextIO = sys.stdout


def say(message: str = "") -> None:
    print(message, file=_terminal, flush=True)


@contextlib.contextmanager
def service_output_to(log_path: Path) -> Iterator[None]:
    """The services inherit this process's stdout and stderr: point both at a log file while
    the stack runs, so the terminal shows the demo's own lines only."""
    global _terminal
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _terminal = open(os.dup(saved[0]), "w", encoding="utf-8", buffering=1)
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)
        _terminal.close()
        _terminal = sys.stdout


def log_tail(log_path: Path, lines: int = 30) -> str:
    if not log_path.exists():
        return ""
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def run(gateway: str) -> None:
    passphrase = secrets.token_urlsafe(24)  # ≥ 20 characters; only this run knows it
    with grpc.insecure_channel(gateway) as channel:
        projects = projects_pb2_grpc.ProjectServiceStub(channel)
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        query = query_pb2_grpc.QueryServiceStub(channel)

        project = projects.CreateProject(
            projects_pb2.CreateProjectRequest(
                name=PROJECT_NAME,
                description="US founding documents and two Lincoln speeches",
                passphrase=passphrase,
            ),
            timeout=60,
        ).project
        token = projects.UnlockProject(
            projects_pb2.UnlockProjectRequest(project_id=project.id, passphrase=passphrase),
            timeout=60,
        ).unlock_token
        metadata = (("x-unlock-token", token),)
        say(f'Project "{project.name}" created ({project.id}) and unlocked.')

        files = sorted(p for p in DOCUMENTS.iterdir() if p.suffix in {".pdf", ".txt"})
        say(f"\nIngesting {len(files)} documents from examples/documents/ through the gateway:")
        for path in files:
            started = time.monotonic()
            document = ingest.IngestDocument(
                ingest_pb2.IngestDocumentRequest(
                    project_id=project.id,
                    file=ingest_pb2.FileSource(filename=path.name, content=path.read_bytes()),
                ),
                metadata=metadata,
                timeout=600,
            ).document
            status = STATUS_NAMES.get(document.status, str(document.status))
            say(
                f"  {status:<10} {path.name:<38} {document.chunk_count:>3} chunks "
                f"{document.fact_count:>4} facts  {time.monotonic() - started:5.1f} s"
                + (f'  title "{document.title}"' if document.title != path.name else "")
            )
            if document.status != ingest_pb2.DOCUMENT_STATUS_COMPLETED:
                raise RuntimeError(f"{path.name} was not ingested: {document.error}")

        for number, question in enumerate(QUESTIONS, start=1):
            answer = query.Query(
                query_pb2.QueryRequest(project_id=project.id, query=question.text, top_k=TOP_K),
                metadata=metadata,
                timeout=60,
            )
            say(f"\nQ{number}. {question.text}")
            for rank, passage in enumerate(answer.passages, start=1):
                title = (
                    f' "{passage.document_title}"'
                    if passage.document_title != passage.source
                    else ""
                )
                say(
                    f"  {rank}. score {passage.score:.4f}  [{passage.source}]{title} "
                    f"chunk {passage.chunk_index}"
                )
                say(f"       {excerpt(passage.text, question.text)}")
            timings = answer.timings
            say(
                f"  query took {timings.total_ms:.0f} ms (embed {timings.embed_ms:.0f}, "
                f"search {timings.search_ms:.0f}, decrypt {timings.decrypt_ms:.0f})"
                + (", from the cache" if answer.cached else "")
            )


def main() -> int:
    def terminate(*_: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    began = time.monotonic()
    say("ContextCache demo: the whole stack on the embedded default, used through Envoy.")
    with tempfile.TemporaryDirectory(prefix="contextcache-demo-") as data_dir:
        environment = demo_environment(Path(data_dir))
        for key in set(os.environ) - set(environment):
            del os.environ[key]
        os.environ.update(environment)
        settings = load_settings()
        gateway = f"127.0.0.1:{settings.gateway_port}"
        log_path = Path(data_dir) / "services.log"
        say(f"Data directory {data_dir} (removed at the end); service logs in {log_path.name}.")
        say("Starting crypto, projects, query, ingest, ratelimit and Envoy…")
        try:
            with service_output_to(log_path):
                started = time.monotonic()
                with Stack(settings):
                    say(
                        f"Stack ready in {time.monotonic() - started:.1f} s; gateway (gRPC and "
                        f"gRPC-Web) on {gateway}.\n"
                    )
                    run(gateway)
                    say("\nStopping the stack…")
        except KeyboardInterrupt:
            say("\nInterrupted: the stack is stopped.")
            return 130
        except (RuntimeError, grpc.RpcError) as error:
            detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
            print(
                f"\nDemo failed: {detail}. The stack is stopped. Last lines of the service "
                f"logs:\n{log_tail(log_path)}",
                file=sys.stderr,
            )
            return 1
    say(f"Stopped. The demo took {time.monotonic() - began:.1f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
