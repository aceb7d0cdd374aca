"""Pathological-input benchmark: adversarial documents against ordinary prose, in the same run.

Inputs: runs of punctuation, one 10 MB line, no spaces, only spaces, a million tiny sentences,
deeply nested HTML, zero-width and combining characters, a PDF of thousands of tiny text
objects, compression bombs (a FlateDecode PDF stream, a gzip HTTP body); and as baselines
ordinary prose as text, as an HTML page and as a PDF. Prose is the PostgreSQL manual
(postgresql-doc-15) when installed, else the texts in examples/documents, repeated.

Two measurements of each input, said apart in the table:
- **text stages**: the steps the ingest service runs in its text workers (extract for HTML and
  PDF, normalize, hash, chunk with the model's tokenizer, keyword terms, facts), called
  directly in this process, one input at a time: MB of input per CPU second (the steps are
  single-threaded; CPU time is steadier than wall time on a shared machine), and the ratio to
  prose of the same format (text, HTML or PDF) measured right before it. Target: at least
  25%, or refused.
- **end to end**: IngestDocument (inline) over gRPC to a launched stack (every service its own
  process, as `make run` starts them, on free ports, embedded default), while this process
  checks the ingest service's health every 20 ms: the call's time, its outcome, and the health
  check's p50/p99 latency during it. Target: p99 under 100 ms. End to end includes embedding
  with the real model (about 23 chunks/s here), which dominates unique prose; repetitive
  inputs dedupe to a few distinct chunks, so their end-to-end MB/s says little about text
  processing: read the text-stage columns for that.

Prints figures only; nothing is asserted. `--scale 0.1` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import http.server
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contextcache.v1 import ingest_pb2, ingest_pb2_grpc, projects_pb2, projects_pb2_grpc
from runtime.tls import target_name, workload_identity
from services.ingest.pipeline.errors import IngestError
from services.ingest.pipeline.extract import extract_html
from services.ingest.pipeline.prepare import prepare, prepare_text
from services.ingest.pipeline.text_workers import chunk_spans, terms_and_facts
from tests.unit.test_extract import build_pdf

ROOT = Path(__file__).resolve().parent.parent
MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
MB = 1_000_000
PASSPHRASE = "pathological inputs benchmark passphrase"


@dataclass
class Case:
    name: str
    kind: str  # "text" (TextSource body), "file" (FileSource) or "url" (served here)
    payload: bytes
    baseline: str  # the prose it is compared with: "text", "html" or "pdf"
    filename: str = ""
    content_type: str = ""
    gzip: bool = False  # served with Content-Encoding: gzip (payload is already compressed)
    stages_seconds: float | None = None  # CPU time of this process
    stages_wall: float | None = None
    baseline_rate: float | None = None  # MB/s of prose of the same format, measured just before
    stages_outcome: str = ""
    e2e_seconds: float | None = None
    e2e_outcome: str = ""
    health_ms: list[float] = field(default_factory=list)


# -- inputs ---------------------------------------------------------------------------------


def prose_text(megabytes: float) -> tuple[str, str]:
    """Distinct ordinary prose of about `megabytes`, and where it came from."""
    texts, total = [], 0
    if MANUAL.is_dir():
        for path in sorted(MANUAL.glob("*.html")):
            try:
                text = extract_html(path.read_bytes()).text
            except IngestError:
                continue
            texts.append(text)
            total += len(text.encode())
            if total >= megabytes * MB:
                return "\n\n".join(texts), "the PostgreSQL manual"
    sample = "\n\n".join(p.read_text() for p in sorted((ROOT / "examples/documents").glob("*.txt")))
    repeated = sample * int(megabytes * MB / len(sample.encode()) + 1)
    return repeated[: int(megabytes * MB)], "examples/documents, repeated"


def prose_html() -> bytes:
    """The largest page of the manual (or the test article, repeated into one page)."""
    if MANUAL.is_dir():
        return max(MANUAL.glob("*.html"), key=lambda p: p.stat().st_size).read_bytes()
    article = (ROOT / "tests/data/article.html").read_text()
    body = article[article.index("<body>") + 6 : article.index("</body>")]
    return article.replace(body, body * 100).encode()


def tiny_text_objects(count: int) -> bytes:
    return "".join(
        f"BT /F1 9 Tf {i % 500} {i % 700} Td (w{i % 10}) Tj ET\n" for i in range(count)
    ).encode()


def cases(scale: float) -> tuple[list[Case], str]:
    size = max(1, int(scale * MB))
    prose, source = prose_text(scale)
    line = " ".join(prose.split())
    line = (line * (int(10 * size / len(line)) + 1))[: 10 * size]
    random.seed(16)
    zalgo_marks = [chr(c) for c in range(0x300, 0x370)]
    nested = max(1000, int(100_000 * scale))
    bomb = build_pdf([b"BT /F1 1 Tf (x) Tj ET\n" * 4_000_000], compress=True)
    out = [
        Case("prose", "text", prose.encode(), "text"),
        Case("run of dots", "text", ("Intro " + "." * size + "end").encode(), "text"),
        Case("run of ?!…\"')", "text", ("Why" + "?!…\"')" * (size // 8)).encode(), "text"),
        Case("one 10 MB line", "text", line.encode(), "text"),
        Case(
            "no spaces (base64)",
            "text",
            base64.b64encode(random.randbytes(size * 3 // 4)),
            "text",
        ),
        Case("only spaces", "text", (" " * size).encode(), "text"),
        Case(
            "1M tiny sentences",
            "text",
            ("Hi. " * int(1_000_000 * min(1.0, scale))).encode(),
            "text",
        ),
        Case(
            "zero-width chars",
            "text",
            ("a\u200b\u200d\u2060\ufeff" * (size // 12)).encode(),
            "text",
        ),
        Case(
            "combining marks",
            "text",
            ("a" + "".join(random.choice(zalgo_marks) for _ in range(size // 2))).encode(),
            "text",
        ),
        Case("prose page", "url", prose_html(), "html", content_type="text/html"),
        Case(
            "nested HTML",
            "url",
            ("<html><body>" + "<div>" * nested + "<p>Deep text.</p>" + "</div>" * nested).encode(),
            "html",
            content_type="text/html",
        ),
        Case(
            "gzip bomb (HTTP)",
            "url",
            gzip.compress(b"<html><body><p>" + b"a " * (50 * MB), 9),
            "html",
            content_type="text/html",
            gzip=True,
        ),
        Case(
            "prose PDF",
            "file",
            (ROOT / "examples/documents/constitution-of-the-united-states.pdf").read_bytes(),
            "pdf",
            filename="constitution.pdf",
        ),
        Case(
            "PDF tiny objects",
            "file",
            build_pdf([tiny_text_objects(max(1000, int(20_000 * scale)))], compress=True),
            "pdf",
            filename="tiny.pdf",
        ),
        Case("PDF Flate bomb", "file", bomb, "pdf", filename="bomb.pdf"),
    ]
    return out, source


# -- text stages, in this process -----------------------------------------------------------


def text_stages(case: Case) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    try:
        if case.kind == "text":
            prepared = prepare_text(case.payload.decode(), "title")
        else:
            content = gzip.decompress(case.payload) if case.gzip else case.payload
            if case.gzip and len(content) > 10 * 1024 * 1024:
                raise IngestError("body over the fetch limit (the fetcher stops reading at 10 MB)")
            prepared = prepare(
                content, filename=case.filename or None, content_type=case.content_type or None
            )
        spans = chunk_spans(prepared.text, 256, 32)
        terms_and_facts(prepared.text, spans)
        case.stages_outcome = f"{len(spans)} chunks"
    except IngestError as error:
        case.stages_outcome = f"refused: {error.reason[:48]}"
    case.stages_seconds = time.process_time() - cpu
    case.stages_wall = time.perf_counter() - started


def baseline_rate(prose: Case) -> float:
    """MB/s (CPU) of the stages on a prose sample of the case's format, right now: this
    machine's speed drifts with its load, so each input is compared with prose measured just
    before it rather than once for the run."""
    sample = Case(prose.name, prose.kind, prose.payload, prose.baseline, prose.filename,
                  prose.content_type)  # fmt: skip
    if prose.kind == "text":
        sample.payload = prose.payload[:250_000].rsplit(b" ", 1)[0]
    text_stages(sample)
    return len(sample.payload) / MB / max(sample.stages_seconds or 0.0, 1e-6)


# -- end to end, over gRPC to a launched stack ----------------------------------------------


class Site:
    """Serves the URL cases from this process."""

    def __init__(self, pages: dict[str, Case]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                case = pages[self.path]
                self.send_response(200)
                self.send_header("Content-Type", case.content_type)
                if case.gzip:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(case.payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(case.payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"


async def probe_health(channel: grpc.aio.Channel, into: list[float], stop: asyncio.Event) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        except grpc.aio.AioRpcError:
            pass  # counted by its latency like any other answer
        into.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)


def request_of(case: Case, project_id: str, site: Site, paths: dict[int, str]):  # type: ignore[no-untyped-def]
    if case.kind == "text":
        source = {"text": ingest_pb2.TextSource(title=case.name, body=case.payload.decode())}
    elif case.kind == "file":
        source = {"file": ingest_pb2.FileSource(filename=case.filename, content=case.payload)}
    else:
        source = {"url": ingest_pb2.UrlSource(url=site.base + paths[id(case)])}
    return ingest_pb2.IngestDocumentRequest(project_id=project_id, **source)


async def end_to_end(all_cases: list[Case], idle: Case, settings) -> None:  # type: ignore[no-untyped-def]
    paths = {id(c): f"/{i}" for i, c in enumerate(all_cases) if c.kind == "url"}
    site = Site({paths[id(c)]: c for c in all_cases if c.kind == "url"})
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    # The services' own ports (Envoy's rate limits would throttle a benchmark), with mutual
    # TLS as the operator, the public API's client identity.
    identity = workload_identity(settings, "operator")

    def channel(address: str, service: str, *extra: tuple[str, int]) -> grpc.aio.Channel:
        override = ("grpc.ssl_target_name_override", target_name(service))
        return grpc.aio.secure_channel(
            address, identity.channel_credentials(), options=[override, *extra]
        )

    async with (
        channel(settings.projects_addr, "projects") as projects_channel,
        channel(settings.ingest_addr, "ingest", *options) as ingest_channel,
        channel(settings.ingest_addr, "ingest") as health_channel,
    ):
        projects = projects_pb2_grpc.ProjectServiceStub(projects_channel)
        ingest = ingest_pb2_grpc.IngestServiceStub(ingest_channel)
        created = await projects.CreateProject(
            projects_pb2.CreateProjectRequest(name="pathological", passphrase=PASSPHRASE)
        )
        project_id = created.project.id
        unlocked = await projects.UnlockProject(
            projects_pb2.UnlockProjectRequest(project_id=project_id, passphrase=PASSPHRASE)
        )
        token = (("x-unlock-token", unlocked.unlock_token),)
        warm = ingest_pb2.IngestDocumentRequest(
            project_id=project_id,
            text=ingest_pb2.TextSource(title="warm", body="The model loads before timing."),
        )
        await ingest.IngestDocument(warm, metadata=token, timeout=600)
        # The machine's own noise: health checks while ingest has nothing to do.
        stop = asyncio.Event()
        probe = asyncio.create_task(probe_health(health_channel, idle.health_ms, stop))
        await asyncio.sleep(5)
        stop.set()
        await probe
        idle.e2e_seconds, idle.e2e_outcome = 5.0, "nothing ingested"
        for case in all_cases:
            stop = asyncio.Event()
            probe = asyncio.create_task(probe_health(health_channel, case.health_ms, stop))
            started = time.perf_counter()
            try:
                reply = await ingest.IngestDocument(
                    request_of(case, project_id, site, paths), metadata=token, timeout=1800
                )
                document = reply.document
                case.e2e_outcome = (
                    f"{ingest_pb2.DocumentStatus.Name(document.status)[16:].lower()}, "
                    f"{document.chunk_count} chunks"
                )
            except grpc.aio.AioRpcError as error:
                case.e2e_outcome = f"{error.code().name}: {error.details()[:40]}"
            case.e2e_seconds = time.perf_counter() - started
            await asyncio.sleep(0.05)
            stop.set()
            await probe
            print(f"  {case.name}: {case.e2e_seconds:.1f} s, {case.e2e_outcome}", flush=True)
        site.httpd.shutdown()


@contextlib.contextmanager
def launched_stack(data_dir: str, log: Path | None):  # type: ignore[no-untyped-def]
    from examples.demo import demo_environment
    from runtime.config import load_settings
    from runtime.stack import Stack

    environment = demo_environment(Path(data_dir))
    environment["URL_FETCH_ALLOW_PRIVATE"] = "true"  # the inputs are served from loopback
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        settings = load_settings()
        with Stack(settings, log=log or Path(data_dir) / "services.log"):
            yield settings
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(all_cases: list[Case], idle: Case, source: str) -> None:
    print(
        f"\nProse: {source}. Text stages: CPU time in this process; 'vs prose' against prose "
        "of the same format measured just before. End to end: launched stack, inline, wall time."
    )
    header = (
        f"{'input':<20} {'MB':>7} | {'CPU s':>8} {'MB/s':>6} {'vs prose':>8} "
        f"{'outcome':<26} | {'e2e s':>6} {'MB/s':>6} {'outcome':<30} "
        f"{'health p50':>10} {'p99':>6} {'max':>6}"
    )
    print(header)
    print("-" * len(header))
    for case in all_cases:
        size = len(case.payload) / MB
        stages = case.stages_seconds or float("nan")
        rate = size / stages
        refused = case.stages_outcome.startswith("refused")
        versus = "refused" if refused else f"{rate / (case.baseline_rate or rate):.0%}"
        e2e = case.e2e_seconds if case.e2e_seconds is not None else float("nan")
        health = case.health_ms
        print(
            f"{case.name:<20} {size:>7.3f} | {stages:>8.2f} {rate:>6.2f} {versus:>8} "
            f"{case.stages_outcome[:26]:<26} | {e2e:>6.1f} {size / e2e:>6.2f} "
            f"{case.e2e_outcome[:30]:<30} {percentile(health, 0.5):>8.1f}ms "
            f"{percentile(health, 0.99):>4.0f}ms {max(health, default=float('nan')):>4.0f}ms"
        )
    if idle.health_ms:
        health = idle.health_ms
        print(
            f"{idle.name:<20} {'':>7} | {'':>8} {'':>6} {'':>8} {'':<26} | {5.0:>6.1f} {'':>6} "
            f"{idle.e2e_outcome:<30} {percentile(health, 0.5):>8.1f}ms "
            f"{percentile(health, 0.99):>4.0f}ms {max(health):>4.0f}ms"
        )
    every = [ms for case in all_cases for ms in case.health_ms]
    if every:
        print(
            f"\nIngest health over the whole end-to-end run: {len(every)} checks, "
            f"p50 {statistics.median(every):.1f} ms, p99 {percentile(every, 0.99):.1f} ms, "
            f"max {max(every):.0f} ms."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="input sizes (1.0: 1 MB units)")
    parser.add_argument("--only", help="run only inputs whose name contains this")
    parser.add_argument("--no-e2e", action="store_true", help="text stages only")
    parser.add_argument("--log", type=Path, help="keep the services' output in this file")
    args = parser.parse_args(argv)

    all_cases, source = cases(args.scale)
    idle = Case("(idle, 5 s)", "text", b"", "text")
    if args.only:
        keep = ("prose", "prose page", "prose PDF")
        all_cases = [c for c in all_cases if args.only in c.name or c.name in keep]
    print(f"Text stages, in this process ({len(all_cases)} inputs)…", flush=True)
    chunk_spans("Warm up the tokenizer.", 256, 32)
    prose_of = {c.baseline: c for c in all_cases if c.name in ("prose", "prose page", "prose PDF")}
    for case in all_cases:
        case.baseline_rate = baseline_rate(prose_of[case.baseline])
        text_stages(case)
        print(
            f"  {case.name}: {case.stages_seconds:.2f} s CPU ({case.stages_wall:.2f} s), "
            f"{case.stages_outcome}",
            flush=True,
        )
    if not args.no_e2e:
        print("End to end, over gRPC to a launched stack…", flush=True)
        with tempfile.TemporaryDirectory(prefix="cc-pathological-") as data_dir:
            with launched_stack(data_dir, args.log) as settings:
                asyncio.run(end_to_end(all_cases, idle, settings))
    report(all_cases, idle, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
