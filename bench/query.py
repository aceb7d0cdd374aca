"""Query latency and throughput, directly to the query service and through Envoy. Prints only.

Starts crypto, projects, query, the ratelimit service (rules raised for the bench, counting in
Redis under a key prefix of its own, as in production) and Envoy as processes on free ports
(embedded default: SQLite and the embedded Qdrant Edge index; the query service has no Redis,
so no answer comes from the query cache). It creates and unlocks a project, then fills it with
synthetic chunks, written as QueryService.IndexChunks writes them: random unit 384-d vectors,
the real BM25 term vectors of ~150 passages of the public-domain texts in examples/documents/
(keyed by crypto's HashTerms under the project's key), and real ciphertext of those passages
made by crypto (each bound to its own chunk, so every returned passage is really decrypted).
The index's HNSW optimisation is run to completion before the query service starts on it.

Each size's stack (its data directory, sealing key and project) is kept under
`var/bench-query/<size>/` and used again by later runs, so the 100k-chunk index is built once
(`--rebuild` builds it again; `--cache ''` uses a temporary directory).

At each size (10k and 100k chunks by default) it sends natural-language questions (real query
embedding, keyword hashing, search and decryption) with 1 and 8 concurrent clients (one
connection each), directly, through Envoy, and through a second Envoy rendered without the
global rate limit filter (what the rate-limit call costs), and prints p50/p95/p99 latency,
throughput, the service's own mean timings and, through Envoy, Envoy's own mean times (the
whole call downstream, the query upstream, the rate-limit service's round trip). The load
generator shares the machine's cores with the stack.

    .venv/bin/python bench/query.py [--sizes 10000,100000] [--requests 300] [--mode hybrid]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_load import RAISED, free_port, raised_rules  # noqa: E402
from contextcache.internal.v1 import query_pb2 as query_internal_pb2  # noqa: E402
from contextcache.v1 import (  # noqa: E402
    ingest_pb2,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from retrieval.cipher import ContentCipher  # noqa: E402
from retrieval.sealing import associated_data, chunk_id  # noqa: E402
from retrieval.terms import term_frequencies  # noqa: E402
from runtime.config import Settings  # noqa: E402
from runtime.gateway import envoy_command, render  # noqa: E402
from runtime.stack import ready  # noqa: E402
from runtime.tls import workload_identity  # noqa: E402
from services.ingest.pipeline.extract import extract_pdf  # noqa: E402
from services.query.index import DENSE_DIM  # noqa: E402
from services.query.index.edge import EdgeVectorIndex  # noqa: E402
from services.query.servicer import index_point  # noqa: E402

PASSPHRASE = "bench passphrase, long enough to pass"
CHUNKS_PER_DOCUMENT = 20
PASSAGE_WORDS = 150
BATCH = 2000
MODES = {
    "hybrid": query_pb2.RETRIEVAL_MODE_HYBRID,
    "dense": query_pb2.RETRIEVAL_MODE_DENSE,
    "keyword": query_pb2.RETRIEVAL_MODE_KEYWORD,
}
QUESTIONS = [
    "How old must a member of the House of Representatives be?",
    "Who can declare war?",
    "How long is the term of the President?",
    "Who commands the army and navy?",
    "How long do judges hold their offices?",
    "What is treason against the United States?",
    "How is the Constitution amended?",
    "What is the supreme law of the land?",
    "Is there freedom of speech and of the press?",
    "May people keep and bear arms?",
    "Can soldiers be quartered in a house in time of peace?",
    "Are unreasonable searches and seizures forbidden?",
    "Can a person be compelled to be a witness against himself?",
    "Does the accused have the right to a speedy and public trial?",
    "Is cruel and unusual punishment allowed?",
    "When was slavery abolished?",
    "Who are citizens of the United States?",
    "Can the right to vote be denied on account of race?",
    "May Congress lay and collect taxes on incomes?",
    "How are senators elected?",
    "Was the sale of intoxicating liquors prohibited?",
    "Can citizens be denied the vote on account of sex?",
    "How many times may a person be elected President?",
    "What if the President is unable to discharge the powers of his office?",
    "At what age may citizens vote?",
    "Which truths are self-evident?",
    "What did the King of Great Britain do to the colonies?",
    "Why did the colonies declare independence?",
    "What was dedicated at Gettysburg?",
    "What is government of the people, by the people, for the people?",
    "With malice toward none, with charity for all",
    "What caused the war between the states?",
]


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """The stack's processes, each startable and stoppable on its own."""

    def __init__(self, work: Path, env: dict[str, str], settings: Settings) -> None:
        self.env = env
        # Service ports speak mutual TLS: the development CA under DATA_DIR/tls (made here).
        self.operator = workload_identity(settings, "operator")
        self.log = (work / "processes.log").open("ab")
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], port: int | None, extra: dict[str, str]):
        env = {**self.env, **extra}
        if port is not None:
            env["PORT"] = str(port)
        self.running[name] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=self.log
        )
        if port is not None:
            deadline = time.monotonic() + 120
            while not ready(port, self.operator):
                if self.running[name].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start; see {self.log.name}")
                time.sleep(0.2)

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)
        self.log.close()


class Bench:
    """One size's stack. `work` holds its data directory and, once the index is built,
    `state.json` (sealing key, project id, chunks indexed so far, whether the index is
    complete and optimised), so a later run starts the same stack on the same data, or goes
    on with a build that was interrupted."""

    def __init__(self, work: Path, mode: str, redis_url: str) -> None:
        self.work = work
        self.mode = MODES[mode]
        self.state_path = work / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        sealing_key = self.state.get("sealing_key") or base64.b64encode(os.urandom(32)).decode()
        self.ports = {n: free_port() for n in ("crypto", "projects", "query", "ratelimit")}
        addresses = {f"{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in self.ports.items()}
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "_URL"))}
        env.update(
            addresses,
            DATA_DIR=str(work / "var"),
            TOKEN_SEALING_KEY=sealing_key,
            ARGON2_MEMORY_KIB="8192",
            ARGON2_TIME_COST="1",
            LOG_LEVEL="WARNING",
        )
        rules = raised_rules(work)
        self.settings = Settings(
            data_dir=work / "var",
            gateway_port=free_port(),
            gateway_admin_port=free_port(),
            ratelimit_rules=rules,
            gateway_local_rate_limit=RAISED,
            gateway_health_check_interval=1,
            **{k.lower(): v for k, v in addresses.items()},
        )
        self.unlimited_settings = self.settings.model_copy(
            update={"gateway_port": free_port(), "gateway_admin_port": free_port()}
        )
        self.processes = Processes(work, env, self.settings)
        self.sealing_key = sealing_key
        # Counted in Redis as in production, under a prefix no other run shares.
        self.ratelimit_env = {
            "RATELIMIT_RULES": str(rules),
            "REDIS_URL": redis_url,
            "RATELIMIT_KEY_PREFIX": f"bench-query-{uuid.uuid4().hex[:8]}",
        }
        self.direct = f"127.0.0.1:{self.ports['query']}"
        self.gateway = f"127.0.0.1:{self.settings.gateway_port}"
        self.unlimited_gateway = f"127.0.0.1:{self.unlimited_settings.gateway_port}"
        self.admin = {
            self.gateway: self.settings.gateway_admin_port,
            self.unlimited_gateway: self.unlimited_settings.gateway_admin_port,
        }

    @property
    def built(self) -> int:
        """Chunks in the kept index (0: none kept)."""
        return int(self.state.get("indexed", 0))

    @property
    def complete(self) -> bool:
        return bool(self.state.get("complete", False))

    def save(self, project_id: str, indexed: int, complete: bool = False) -> None:
        self.state = {
            "sealing_key": self.sealing_key,
            "project_id": project_id,
            "indexed": indexed,
            "complete": complete,
        }
        self.state_path.write_text(json.dumps(self.state))

    def channel(self, target: str, identity: str = "operator", **kwargs) -> grpc.aio.Channel:
        """The gateway in plaintext, a service port over mutual TLS as `identity`."""
        if target in self.admin:
            return grpc.aio.insecure_channel(target, **kwargs)
        credentials = workload_identity(self.settings, identity).channel_credentials()
        return grpc.aio.secure_channel(target, credentials, **kwargs)

    def start(self) -> None:
        python = sys.executable
        for name in ("crypto", "projects", "ratelimit"):
            extra = self.ratelimit_env if name == "ratelimit" else {}
            self.processes.start(name, [python, "-m", f"services.{name}"], self.ports[name], extra)
        self.start_query()
        config = render(self.settings, self.work / "envoy.yaml")
        self.processes.start("envoy", envoy_command(config), None, {})
        unlimited = without_global_rate_limit(
            render(self.unlimited_settings, self.work / "envoy-unlimited.yaml")
        )
        self.processes.start("envoy-unlimited", envoy_command(unlimited), None, {})

    def start_query(self) -> None:
        command = [sys.executable, "-m", "services.query"]
        self.processes.start("query", command, self.ports["query"], {})

    def envoy_means(self, target: str) -> dict[str, tuple[float, int]]:
        """Envoy's cumulative (sum ms, count) of the stages it times, by name."""
        url = f"http://127.0.0.1:{self.admin[target]}/stats?format=prometheus&usedonly"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        wanted = {
            "call": ("envoy_http_downstream_rq_time", 'envoy_http_conn_manager_prefix="gateway"'),
            "query upstream": ("envoy_cluster_upstream_rq_time", 'envoy_cluster_name="query"'),
            "rate limit": ("envoy_cluster_upstream_rq_time", 'envoy_cluster_name="ratelimit"'),
        }
        found: dict[str, tuple[float, int]] = {}
        for name, (metric, label) in wanted.items():
            total = count = 0.0
            for line in text.splitlines():
                if label not in line:
                    continue
                if line.startswith(metric + "_sum{"):
                    total = float(line.rsplit(" ", 1)[1])
                elif line.startswith(metric + "_count{"):
                    count = float(line.rsplit(" ", 1)[1])
            found[name] = (total, int(count))
        return found


def without_global_rate_limit(config: Path) -> Path:
    """The rendered gateway configuration less its global rate limit filter."""
    document = yaml.safe_load(config.read_text())
    for listener in document["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter["typed_config"]
                manager["http_filters"] = [
                    f
                    for f in manager.get("http_filters", [])
                    if f["name"] != "envoy.filters.http.ratelimit"
                ]
    config.write_text(yaml.safe_dump(document))
    return config


# -- the corpus --------------------------------------------------------------------------------


def passages() -> list[str]:
    """~150-word passages of the sample documents."""
    documents = ROOT / "examples" / "documents"
    texts = [extract_pdf((documents / "constitution-of-the-united-states.pdf").read_bytes()).text]
    texts += [p.read_text(encoding="utf-8") for p in sorted(documents.glob("*.txt"))]
    words = [w for text in texts for w in text.split()]
    return [" ".join(words[i : i + PASSAGE_WORDS]) for i in range(0, len(words), PASSAGE_WORDS)]


class Corpus:
    """Synthetic chunks of one project: random dense vectors, real term vectors and
    ciphertext of real passages, each bound to its own chunk by its associated data."""

    def __init__(self, cipher: ContentCipher, project_id: str) -> None:
        self.cipher = cipher
        self.project_id = project_id
        self.texts = passages()
        self.sparse: list[query_internal_pb2.SparseVector] = []
        self.documents: list[str] = []
        self.created = Timestamp()
        self.created.GetCurrentTime()

    async def prepare(self) -> None:
        frequencies = [term_frequencies(text) for text in self.texts]
        ids = await self.cipher.hash_terms([t for f in frequencies for t in f])
        for counts in frequencies:
            merged: dict[int, float] = {}
            for term, count in counts.items():
                merged[ids[term]] = merged.get(ids[term], 0.0) + count
            ordered = sorted(merged)
            self.sparse.append(
                query_internal_pb2.SparseVector(
                    indices=ordered, values=[merged[i] for i in ordered]
                )
            )

    async def chunks(self, start: int, stop: int) -> list[query_internal_pb2.IndexedChunk]:
        first_document = start // CHUNKS_PER_DOCUMENT
        last_document = (stop - 1) // CHUNKS_PER_DOCUMENT
        while len(self.documents) <= last_document:
            self.documents.append(str(uuid.uuid4()))
        new_documents = range(first_document, last_document + 1)
        meta = await self.cipher.encrypt(
            [
                item
                for d in new_documents
                for item in (
                    (
                        f"Document {d}".encode(),
                        associated_data("title", self.project_id, self.documents[d]),
                    ),
                    (
                        f"document-{d}.txt".encode(),
                        associated_data("source", self.project_id, self.documents[d]),
                    ),
                )
            ]
        )
        titles = {d: meta[2 * n] for n, d in enumerate(new_documents)}
        sources = {d: meta[2 * n + 1] for n, d in enumerate(new_documents)}
        layout = [
            (i, self.documents[i // CHUNKS_PER_DOCUMENT], i % CHUNKS_PER_DOCUMENT)
            for i in range(start, stop)
        ]
        texts = await self.cipher.encrypt(
            [
                (
                    self.texts[i % len(self.texts)].encode(),
                    associated_data("chunk", self.project_id, document, index),
                )
                for i, document, index in layout
            ]
        )
        # Seeded by position, so an interrupted build goes on with the vectors it would have made.
        rng = np.random.default_rng([7, start])
        vectors = rng.standard_normal((stop - start, DENSE_DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return [
            query_internal_pb2.IndexedChunk(
                chunk_id=chunk_id(self.project_id, document, index),
                document_id=document,
                chunk_index=index,
                dense=vectors[n].tolist(),
                sparse=self.sparse[i % len(self.texts)],
                encrypted_text=texts[n],
                encrypted_title=titles[i // CHUNKS_PER_DOCUMENT],
                encrypted_source=sources[i // CHUNKS_PER_DOCUMENT],
                source_type=ingest_pb2.SOURCE_TYPE_TEXT_FILE,
                start_offset=0,
                end_offset=len(self.texts[i % len(self.texts)]),
                document_created_at=self.created,
            )
            for n, (i, document, index) in enumerate(layout)
        ]


# -- measuring ---------------------------------------------------------------------------------


async def measure(
    bench: Bench, target: str, project_id: str, metadata, mode: int, clients: int, requests: int
) -> tuple[np.ndarray, float, list[query_pb2.QueryTimings]]:
    """Latencies (ms) of `requests` queries from `clients` connections, and queries/s."""
    channels = [bench.channel(target) for _ in range(clients)]
    stubs = [query_pb2_grpc.QueryServiceStub(c) for c in channels]
    rng = np.random.default_rng(11)
    order = [QUESTIONS[i] for i in rng.integers(0, len(QUESTIONS), size=requests)]
    latencies: list[float] = []
    timings: list[query_pb2.QueryTimings] = []

    async def ask(stub, text: str) -> None:
        began = time.perf_counter()
        response = await stub.Query(
            query_pb2.QueryRequest(project_id=project_id, query=text, top_k=5, mode=mode),
            metadata=metadata,
            timeout=30,
        )
        latencies.append((time.perf_counter() - began) * 1000)
        timings.append(response.timings)
        if len(response.passages) != 5 and mode != query_pb2.RETRIEVAL_MODE_KEYWORD:
            raise SystemExit(f"expected 5 passages, got {len(response.passages)}")

    async def client(n: int) -> None:
        for text in order[n::clients]:
            await ask(stubs[n], text)

    try:
        for stub in stubs:  # connect and warm up every connection
            for text in QUESTIONS[:3]:
                await ask(stub, text)
        latencies.clear()
        timings.clear()
        began = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - began
    finally:
        for channel in channels:
            await channel.close()
    return np.array(latencies), requests / elapsed, timings


async def wait_for_gateway(bench: Bench, target: str, project_id: str, metadata) -> None:
    """Until Envoy routes queries to the (re)started query service."""
    async with bench.channel(target) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                await stub.Query(
                    query_pb2.QueryRequest(project_id=project_id, query="warm up"),
                    metadata=metadata,
                    timeout=10,
                )
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


async def fill(bench: Bench, project_id: str, metadata, size: int) -> int:
    """Indexes chunks up to `size` (encrypted by crypto as ingest does it), from where a kept
    build stopped, then optimises the index. The points are written as IndexChunks writes
    them, but by this process with the query service stopped, so the index optimises once
    at the end rather than every minute as it grows (which, on shared cores, took most of an
    hour at 100k)."""
    began = time.perf_counter()
    crypto_target = f"127.0.0.1:{bench.ports['crypto']}"
    bench.processes.stop("query")
    index = await EdgeVectorIndex.open(
        bench.settings.index_path, optimize_idle_seconds=1e9, optimize_max_delay_seconds=1e9
    )
    try:
        async with bench.channel(crypto_target, "ingest") as crypto:
            from contextcache.internal.v1 import crypto_pb2_grpc

            cipher = ContentCipher(
                crypto_pb2_grpc.CryptoInternalServiceStub(crypto), project_id, metadata[0][1]
            )
            corpus = Corpus(cipher, project_id)
            await corpus.prepare()
            for start in range(bench.built, size, BATCH):
                chunks = await corpus.chunks(start, min(size, start + BATCH))
                await index.upsert([index_point(project_id, c) for c in chunks])
                bench.save(project_id, min(size, start + BATCH))
        filled = time.perf_counter() - began
        began = time.perf_counter()
        await index.optimize()
        stats = await index.stats()
    finally:
        await index.close()
    bench.start_query()
    print(
        f"  built: {len(corpus.texts)} distinct passages, {stats['points']:,} chunks "
        f"({filled:.0f} s to encrypt and write, optimise {time.perf_counter() - began:.0f} s, "
        f"{stats['segments']} segments)",
        flush=True,
    )
    return int(stats["points"])


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


async def measure_size(bench: Bench, size: int, args: argparse.Namespace) -> None:
    bench.start()
    async with bench.channel(f"127.0.0.1:{bench.ports['projects']}") as channel:
        projects = projects_pb2_grpc.ProjectServiceStub(channel)
        project_id = bench.state.get("project_id")
        if not bench.built:
            project_id = (
                await projects.CreateProject(
                    projects_pb2.CreateProjectRequest(name="bench", passphrase=PASSPHRASE)
                )
            ).project.id

        async def unlock() -> tuple[tuple[str, str], ...]:
            response = await projects.UnlockProject(
                projects_pb2.UnlockProjectRequest(project_id=project_id, passphrase=PASSPHRASE)
            )
            return (("x-unlock-token", response.unlock_token),)

        metadata = await unlock()
        print(f"\n{size:,} chunks, stack in {bench.work}", flush=True)
        if not bench.complete:
            points = await fill(bench, project_id, metadata, size)
            # Points written but never flushed are lost when an index process is killed.
            bench.save(project_id, points, complete=points == size)
            if points != size:
                print(f"  only {points:,} of {size:,} chunks were kept: run again to add the rest")
        else:
            print("  the kept index (--rebuild builds it again)")
        metadata = await unlock()  # fresh token for the measuring rounds
    for gateway in (bench.gateway, bench.unlimited_gateway):
        await wait_for_gateway(bench, gateway, project_id, metadata)
    print(
        f"  {'Query, ms':<34} {'p50':>6} {'p95':>6} {'p99':>6} {'q/s':>6}   server mean: "
        "embed search decrypt total   envoy mean: call upstream ratelimit   load"
    )
    routes = (
        ("direct", bench.direct),
        ("envoy", bench.gateway),
        ("envoy, no global limit", bench.unlimited_gateway),
    )
    for repeat in range(args.repeats):
        for label, target in routes:
            for clients in (1, 8):
                before = bench.envoy_means(target) if target in bench.admin else None
                samples, rate, timings = await measure(
                    bench, target, project_id, metadata, bench.mode, clients, args.requests
                )
                p50, p95, p99 = np.percentile(samples, [50, 95, 99])
                envoy = ""
                if before is not None:
                    # Envoy merges its histograms for the admin interface every few seconds.
                    await asyncio.sleep(5.5)
                    after = bench.envoy_means(target)
                    parts = []
                    for name in ("call", "query upstream", "rate limit"):
                        total = after[name][0] - before[name][0]
                        count = after[name][1] - before[name][1]
                        parts.append(f"{total / count:6.1f}" if count else "     -")
                    envoy = " ".join(parts)
                print(
                    f"  {label + f', {clients} client' + 's' * (clients > 1):<34} "
                    f"{p50:6.1f} {p95:6.1f} {p99:6.1f} {rate:6.1f}   "
                    f"{mean([t.embed_ms for t in timings]):18.1f} "
                    f"{mean([t.search_ms for t in timings]):6.1f} "
                    f"{mean([t.decrypt_ms for t in timings]):7.1f} "
                    f"{mean([t.total_ms for t in timings]):5.1f}   "
                    f"{envoy:<27}   {load_average()}",
                    flush=True,
                )
        if repeat + 1 < args.repeats:
            print(f"  (round {repeat + 2} of {args.repeats})")


async def run(args: argparse.Namespace) -> None:
    print(
        f"{os.cpu_count()} cores; mode {args.mode}; top_k 5; no query cache; "
        f"load average at start {load_average()}",
        flush=True,
    )
    for size in args.sizes:
        if args.cache:
            work = Path(args.cache) / str(size)
            if args.rebuild and work.exists():
                shutil.rmtree(work)
            if work.exists() and not (work / "state.json").exists():
                shutil.rmtree(work)  # a build that did not index anything
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(tempfile.mkdtemp(prefix="bench-query-"))
        bench = Bench(work, args.mode, args.redis)
        try:
            await measure_size(bench, size, args)
        finally:
            bench.processes.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(s) for s in re.split(r"[, ]+", text) if s],
        default=[10_000, 100_000],
    )
    parser.add_argument("--requests", type=int, default=300, help="per round")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every measurement")
    parser.add_argument("--mode", choices=sorted(MODES), default="hybrid")
    parser.add_argument(
        "--cache",
        default=str(ROOT / "var" / "bench-query"),
        help="where each size's stack is kept between runs ('' = a temporary directory)",
    )
    parser.add_argument("--rebuild", action="store_true", help="build the kept indexes again")
    parser.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the rate-limit service's Redis (unreachable: it counts in memory)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
