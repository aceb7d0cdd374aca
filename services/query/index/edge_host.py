"""The process that owns the embedded Qdrant Edge shard: `python -m services.query.index.edge_host`.

Why a process of its own: every call of qdrant-edge-py 0.9.0 holds the GIL for its whole
duration (measured: a 20k-point `optimize()` froze every other thread of the process for
10 s). Inside the grpc.aio query service that would freeze health checks and every RPC.
Here it only makes index requests wait. `EdgeVectorIndex` starts this process, and it is the
only process that opens the directory: it takes an exclusive lock on `<path>/LOCK` first and
refuses to start while another process holds it.

Protocol: frames on stdin/stdout, as `framing` defines them. Requests run one at a time, in
order. The peer is our own parent, which started us with pipes only it holds. Anything else
written to stdout (stray prints) is sent to stderr so it cannot corrupt the protocol. When
stdin closes — the parent exited or died — the shard is flushed and closed and the process
exits.

HNSW graphs are built by the shard's optimizer, which only runs when asked. After updates it
runs here, between requests: once no request has arrived for `--optimize-idle` seconds, or,
under steady traffic, once updates have waited `--optimize-max-delay` seconds.

Never logs payloads or vectors; the shard only ever receives ciphertext and keyed term ids.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from services.query.index.codec import (
    hit,
    stored_chunk,
)
from services.query.index.framing import FrameReader, decode, write_frame
from services.query.index.fusion import (
    fuse,
    hits_in_order,
)
from services.query.index.types import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    Fusion,
    Hit,
    PreparedPoint,
    ScoredId,
    SearchFilter,
    StoredChunk,
    VectorQuery,
)

log = logging.getLogger("services.query.index.edge_host")

LOCK_FILE = "LOCK"
SHARD_DIR = "shard"
UPSERT_BATCH = 512
# Filtered searches matching fewer vectors than this (in KB, ~6.6k 384-d points) scan them
# exactly; larger tenants get their own HNSW graph (m=0 + payload_m: per-tenant graphs only,
# Qdrant's multitenancy layout, because no search ever spans projects).
FULL_SCAN_THRESHOLD_KB = 10_000
HNSW_PAYLOAD_M = 16
HNSW_EF_CONSTRUCT = 100


class HostError(Exception):
    """A request failed in a way the parent maps to a specific error class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# Opening the shard.


def acquire_lock(directory: Path, wait_seconds: float) -> int:
    """Exclusive, non-blocking lock on `<directory>/LOCK`, retried for `wait_seconds`."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise HostError(
                    "locked",
                    f"the embedded vector index at {directory} is in use by another process "
                    f"(pid {holder}). Only one process may open it: stop that process, or set "
                    "QDRANT_URL to use a Qdrant server instead.",
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return fd


def edge_config(dim: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        hnsw_config=qe.HnswIndexConfig(
            m=0,
            ef_construct=HNSW_EF_CONSTRUCT,
            full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
            payload_m=HNSW_PAYLOAD_M,
        ),
    )


def payload_indexes() -> dict[str, Any]:
    """Only the tenant field gets HNSW sub-graphs; the others are plain filter indexes."""
    return {
        "project_id": qe.KeywordIndexParams(is_tenant=True),
        "document_id": qe.KeywordIndexParams(enable_hnsw=False),
        "source_type": qe.IntegerIndexParams(lookup=True, range=False, enable_hnsw=False),
        "document_created_at": qe.FloatIndexParams(enable_hnsw=False),
    }


def open_shard(directory: Path, dim: int) -> qe.EdgeShard:
    shard_dir = directory / SHARD_DIR
    config = edge_config(dim)
    try:
        if (shard_dir / "edge_config.json").exists():
            shard = qe.EdgeShard.load(str(shard_dir), config)
        else:
            shard = qe.EdgeShard.create(str(shard_dir), config)
    except Exception as error:  # qdrant-edge raises bare Exception
        raise HostError(
            "config", f"cannot open the embedded vector index at {shard_dir}: {error}"
        ) from error
    present = shard.info().payload_schema
    for name, params in payload_indexes().items():
        if name not in present:
            shard.update(qe.UpdateOperation.create_field_index(name, params))
    return shard


# ---------------------------------------------------------------------------------------------
# Requests.


def edge_filter(where: SearchFilter) -> qe.Filter:
    must: list[Any] = [qe.FieldCondition("project_id", match=qe.MatchValue(where.project_id))]
    if where.document_ids:
        must.append(qe.FieldCondition("document_id", match=qe.MatchAny(list(where.document_ids))))
    if where.source_types:
        must.append(qe.FieldCondition("source_type", match=qe.MatchAny(list(where.source_types))))
    if where.created_after is not None or where.created_before is not None:
        must.append(
            qe.FieldCondition(
                "document_created_at",
                range=qe.RangeFloat(gte=where.created_after, lt=where.created_before),
            )
        )
    return qe.Filter(must=must)


class Host:
    def __init__(self, shard: qe.EdgeShard) -> None:
        self.shard = shard
        self.optimizations = 0
        self.last_optimize_seconds = 0.0

    def upsert(self, points: list[PreparedPoint]) -> int:
        for start in range(0, len(points), UPSERT_BATCH):
            batch = [
                qe.Point(
                    p.point_id,
                    {
                        DENSE_VECTOR: p.dense,
                        SPARSE_VECTOR: qe.SparseVector(p.sparse_indices, p.sparse_weights),
                    },
                    p.payload,
                )
                for p in points[start : start + UPSERT_BATCH]
            ]
            self.shard.update(qe.UpdateOperation.upsert_points(batch))
        return len(points)

    def search(self, queries: list[VectorQuery]) -> list[list[Hit]]:
        results = self._query(queries, with_payload=True)
        return [[hit(p.id, p.score, p.payload) for p in points] for points in results]

    def hybrid(
        self, queries: list[VectorQuery], weights: list[float], fusion: Fusion, limit: int
    ) -> list[Hit]:
        results = self._query(queries, with_payload=False)
        rankings = [[ScoredId(str(p.id), p.score) for p in points] for points in results]
        rankings += [[] for _ in range(len(weights) - len(rankings))]
        fused = fuse(rankings, weights, limit, fusion)
        chunks = self.retrieve([f.chunk_id for f in fused])
        return hits_in_order(fused, {c.chunk_id: c for c in chunks})

    def _query(self, queries: list[VectorQuery], with_payload: bool) -> list[list[Any]]:
        requests = [self._request(q, with_payload) for q in queries]
        if len(requests) == 1:
            return [self.shard.query(requests[0])]
        return self.shard.query_batch(qe.QueryBatchRequest(requests))

    def _request(self, query: VectorQuery, with_payload: bool) -> qe.QueryRequest:
        params = None
        if query.using == DENSE_VECTOR:
            assert query.dense is not None
            vector: Any = query.dense.tolist()
        else:
            vector = qe.SparseVector(query.sparse_indices, query.sparse_values)
            # IDF statistics over the project only: tenants never influence each other.
            params = qe.SearchParams(
                idf=qe.IdfParams(corpus=edge_filter(query.filter.project_only))
            )
        return qe.QueryRequest(
            limit=query.limit,
            query=qe.Query.Nearest(vector, using=query.using),
            filter=edge_filter(query.filter),
            with_payload=with_payload,
            params=params,
        )

    def retrieve(self, chunk_ids: list[str]) -> list[StoredChunk]:
        return [stored_chunk(r.id, r.payload) for r in self.shard.retrieve(chunk_ids, True, False)]

    def delete(self, where: SearchFilter) -> None:
        self.shard.update(qe.UpdateOperation.delete_points_by_filter(edge_filter(where)))

    def count(self, where: SearchFilter) -> int:
        return self.shard.count(qe.CountRequest(exact=True, filter=edge_filter(where)))

    def scroll(self, where: SearchFilter, offset: str | None, limit: int) -> tuple[list, Any]:
        records, next_offset = self.shard.scroll(
            qe.ScrollRequest(
                offset=offset, limit=limit, filter=edge_filter(where), with_payload=True
            )
        )
        chunks = [stored_chunk(r.id, r.payload) for r in records]
        return chunks, None if next_offset is None else str(next_offset)

    def optimize(self) -> bool:
        started = time.perf_counter()
        changed = self.shard.optimize()
        self.shard.flush()
        self.optimizations += 1
        self.last_optimize_seconds = time.perf_counter() - started
        return changed

    def stats(self) -> dict[str, Any]:
        info = self.shard.info()
        return {
            "pid": os.getpid(),
            "points": info.points_count,
            "segments": info.segments_count,
            "indexed_vectors": info.indexed_vectors_count,
            "payload_indexes": sorted(info.payload_schema),
            "optimizations": self.optimizations,
            "last_optimize_seconds": self.last_optimize_seconds,
        }

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "upsert": self.upsert,
            "search": self.search,
            "hybrid": self.hybrid,
            "retrieve": self.retrieve,
            "delete": self.delete,
            "count": self.count,
            "scroll": self.scroll,
            "optimize": self.optimize,
            "stats": self.stats,
        }


MUTATING = frozenset({"upsert", "delete"})


# ---------------------------------------------------------------------------------------------
# Main loop.


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(
    directory: Path, dim: int, lock_wait: float, optimize_idle: float, optimize_max_delay: float
) -> int:
    out = os.dup(1)
    os.dup2(2, 1)  # stray output goes to stderr, never into the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us
    signal.signal(signal.SIGTERM, _exit_cleanly)  # flush and close the shard, then exit
    try:
        lock_fd = acquire_lock(directory, lock_wait)
        try:
            shard = open_shard(directory, dim)
        except BaseException:
            os.close(lock_fd)
            raise
    except HostError as error:
        write_frame(out, (0, False, (error.kind, str(error))))
        return 1
    except Exception as error:  # noqa: BLE001 — reported to the parent, which raises it
        write_frame(out, (0, False, ("error", f"{type(error).__name__}: {error}")))
        return 1

    host = Host(shard)
    handlers = host.handlers()
    write_frame(out, (0, True, None))  # ready
    reader = FrameReader(0)
    dirty_since: float | None = None  # when the first update not yet optimised arrived
    close_request: int | None = None
    try:
        while True:
            if dirty_since is not None and (
                time.monotonic() - dirty_since >= optimize_max_delay
                or not reader.wait(optimize_idle)
            ):
                dirty_since = None
                try:
                    host.optimize()
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as error:  # noqa: BLE001 — searches work unoptimised
                    log.warning("index optimisation failed: %s", error)
                continue
            reader.wait(None)
            frame = reader.read()
            if frame is None:
                break
            request_id, op, args = decode(frame)
            if op == "close":
                close_request = request_id
                break
            try:
                result = (request_id, True, handlers[op](*args))
            except HostError as error:
                result = (request_id, False, (error.kind, str(error)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # noqa: BLE001 — Rust panics are BaseException
                log.warning("index request %s failed: %s", op, type(error).__name__)
                result = (request_id, False, ("error", f"{op} failed: {error}"))
            try:
                write_frame(out, result)
            except BrokenPipeError:
                break  # the parent is gone; nobody is waiting for the answer
            if op in MUTATING and dirty_since is None:
                dirty_since = time.monotonic()
            elif op == "optimize" and result[1]:
                dirty_since = None
    finally:
        shard.flush()
        shard.close()
        os.close(lock_fd)
    if close_request is not None:
        with contextlib.suppress(BrokenPipeError):
            write_frame(out, (close_request, True, None))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--lock-wait", type=float, default=0.0)
    parser.add_argument("--optimize-idle", type=float, default=2.0)
    parser.add_argument("--optimize-max-delay", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return serve(args.path, args.dim, args.lock_wait, args.optimize_idle, args.optimize_max_delay)


if __name__ == "__main__":
    sys.exit(main())
