"""The command against the production shape: PostgreSQL, Redis (RQ jobs run by the worker
process, the query cache, rate-limit counters) — the same user path as on the embedded
default, shorter."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator

import pytest

from examples.demo import DOCUMENTS
from tests.command_line.conftest import PASSPHRASE
from tests.conftest import REDIS, fresh_database, postgres_available, redis_available

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def stack_env() -> Iterator[dict[str, str]]:
    if not (postgres_available() and redis_available()):
        pytest.fail("PostgreSQL and Redis must run on 127.0.0.1 (see README)")
    run = uuid.uuid4().hex[:12]
    with fresh_database() as database_url:
        yield {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS,
            # Nobody else's worker takes these jobs; nobody else's counters are ours.
            "INGEST_QUEUE": f"cli-{run}",
            "RATELIMIT_KEY_PREFIX": f"cli-{run}",
        }


def test_create_unlock_ingest_query_verify(cli, tmp_path):
    for name in ("declaration-of-independence.txt", "gettysburg-address.txt"):
        shutil.copy(DOCUMENTS / name, tmp_path / name)
    shutil.copy(DOCUMENTS / "gettysburg-address.txt", tmp_path / "again.txt")
    (tmp_path / "slides.pptx").write_bytes(b"PK\x03\x04 not a format ContextCache reads")

    created = cli.run("projects", "create", "servers", "--passphrase-stdin", stdin=PASSPHRASE)
    assert created.returncode == 0, created.stderr
    unlocked = cli.run("unlock", "servers", "--passphrase-stdin", stdin=PASSPHRASE)
    assert unlocked.returncode == 0, unlocked.stderr

    ingested = cli.run("ingest", str(tmp_path), "--json", timeout=600)
    assert ingested.returncode == 10, ingested.stdout + ingested.stderr
    first = json.loads(ingested.stdout)
    assert (first["ingested"], first["skipped"], first["failed"]) == (2, 1, 1), first
    summary = cli.json("ingest", str(tmp_path), "--exclude", "*.pptx")
    assert (summary["ingested"], summary["skipped"]) == (0, 3), summary

    answer = cli.json("query", "What unfinished work must the living be dedicated to?")
    assert answer["passages"][0]["source"] in ("gettysburg-address.txt", "again.txt")
    again = cli.json("query", "What unfinished work must the living be dedicated to?")
    assert again["cached"] is True  # the Redis query cache

    verified = cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert re.match(r"valid: \d+ events verified", verified.stdout)
