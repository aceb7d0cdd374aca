"""The stack the fault matrix breaks: every process of `make run` (runtime.stack) on free
ports, on a PostgreSQL cluster and a Redis server of its own (tests/faults/servers.py: the
shared ones are never restarted), with rate limits raised so the workload is never throttled,
short leases so a killed run is taken over in seconds, and the two projects every fault test
uses: `reference` (a fixed corpus, its answers recorded before any fault) and `stream` (what
the workload ingests into).

One stack serves every fault of a module (module scope): each test leaves it whole again.
tests/faults/test_replicas.py runs the scaled topology (two each of projects, ingest, crypto
and RQ workers) the same way.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from contextcache.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from runtime.config import Settings
from runtime.ports import free_port
from runtime.stack import Stack
from tests.conftest import PASSPHRASE
from tests.faults.servers import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from tests.faults.workload import QUESTIONS, answer_of

# The workload calls many times a minute from one address: limits far above it.
RULES = """domain: contextcache
descriptors:
  - key: window
    value: minute
    descriptors:
      - {key: remote_address, rate_limit: {unit: minute, requests_per_unit: 100000}}
      - {key: api_key, rate_limit: {unit: minute, requests_per_unit: 100000}}
  - key: window
    value: hour
    descriptors:
      - {key: remote_address, rate_limit: {unit: hour, requests_per_unit: 1000000}}
      - {key: api_key, rate_limit: {unit: hour, requests_per_unit: 1000000}}
"""

REFERENCE_CORPUS = {
    "Desert birds": "The white stork migrates across the Sahara desert each autumn, resting at "
    "oases. Storks ride thermals to save energy on the long crossing to Africa.",
    "Glaciers": "Glaciers carve U-shaped valleys as moving ice plucks and grinds the bedrock "
    "beneath it. Moraines mark where the ice once stopped.",
    "Bridges": "A suspension bridge stands because its main cables carry the deck's weight to "
    "the towers, and anchorages at each end hold the cables in tension.",
    "Baking": "Bread dough rises because yeast ferments sugars and releases carbon dioxide, "
    "which the gluten network traps as bubbles.",
}


@dataclass
class Project:
    id: str
    token: str
    public_key: bytes

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-unlock-token", self.token),)


@dataclass
class ChaosStack:
    stack: Stack
    postgres: PrivatePostgres
    redis: PrivateRedis
    database_url: str
    channel: grpc.Channel
    reference: Project
    stream: Project
    baseline: dict[str, list[tuple[str, int]]]
    log: Path

    @property
    def settings(self) -> Settings:
        return self.stack.settings


def stack_env(directory: Path, database_url: str, redis_url: str) -> dict[str, str]:
    rules = directory / "ratelimit.yaml"
    rules.write_text(RULES, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_ADDR", "_URL", "_PORT"))}
    env.pop("STACK_REPLICAS", None)
    env.update(
        {f"{name.upper()}_ADDR": f"127.0.0.1:{free_port()}" for name in ("projects", "ingest")},
    )
    env.update(
        {f"{name.upper()}_ADDR": f"127.0.0.1:{free_port()}" for name in ("query", "crypto")},
        RATELIMIT_ADDR=f"127.0.0.1:{free_port()}",
        ENVIRONMENT="test",
        DATA_DIR=str(directory / "var"),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        GATEWAY_PORT=str(free_port()),
        GATEWAY_ADMIN_PORT=str(free_port()),
        CONSOLE_PORT=str(free_port()),
        GATEWAY_HEALTH_CHECK_INTERVAL="1",
        HEALTH_CHECK_INTERVAL="1",
        RATELIMIT_RULES=str(rules),
        ARGON2_MEMORY_KIB="8192",
        ARGON2_TIME_COST="1",
        TOKEN_SEALING_KEY=base64.b64encode(os.urandom(32)).decode(),
        # A killed run is taken over within seconds (its lease lapses, the reaper queues it).
        # (Longer than a job's start in a loaded worker, or queued jobs would be pushed
        # again while they start: harmless, fenced, but twice the work.)
        INGEST_LEASE_SECONDS="20",
        INGEST_REAPER_INTERVAL="1",
        AUDIT_RELAY_INTERVAL="0.5",
    )
    return env


def settings_from(env: dict[str, str]) -> Settings:
    fields = Settings.model_fields
    return Settings(**{k.lower(): v for k, v in env.items() if k.lower() in fields})


def new_project(channel: grpc.Channel, name: str) -> Project:
    projects = projects_pb2_grpc.ProjectServiceStub(channel)
    created = projects.CreateProject(
        projects_pb2.CreateProjectRequest(name=name, passphrase=PASSPHRASE), timeout=60
    ).project
    token = projects.UnlockProject(
        projects_pb2.UnlockProjectRequest(project_id=created.id, passphrase=PASSPHRASE),
        timeout=60,
    ).unlock_token
    return Project(created.id, token, created.public_key)


def reference_answers(channel: grpc.Channel, project: Project) -> dict[str, list[tuple[str, int]]]:
    query = query_pb2_grpc.QueryServiceStub(channel)
    return {
        question: answer_of(
            query.Query(
                query_pb2.QueryRequest(project_id=project.id, query=question),
                metadata=project.metadata,
                timeout=30,
            )
        )
        for question in QUESTIONS
    }


@contextlib.contextmanager
def chaos_stack(directory: Path, replicas: int) -> Iterator[ChaosStack]:
    with private_postgres() as postgres, private_redis() as redis_server:
        with psycopg.connect(postgres.url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE contextcache")
        database_url = postgres.url.rsplit("/", 1)[0] + "/contextcache"
        env = stack_env(directory, database_url, redis_server.url)
        log = directory / "stack.log"
        stack = Stack(settings_from(env), env=env, log=log, replicas=replicas)
        with stack, grpc.insecure_channel(f"127.0.0.1:{stack.settings.gateway_port}") as channel:
            reference = new_project(channel, "reference")
            ingest = ingest_pb2_grpc.IngestServiceStub(channel)
            for title, body in REFERENCE_CORPUS.items():
                document = ingest.IngestDocument(
                    ingest_pb2.IngestDocumentRequest(
                        project_id=reference.id, text=ingest_pb2.TextSource(title=title, body=body)
                    ),
                    metadata=reference.metadata,
                    timeout=120,
                ).document
                assert document.status == ingest_pb2.DOCUMENT_STATUS_COMPLETED, document.error
            yield ChaosStack(
                stack,
                postgres,
                redis_server,
                database_url,
                channel,
                reference,
                new_project(channel, "stream"),
                reference_answers(channel, reference),
                log,
            )


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    with chaos_stack(tmp_path_factory.mktemp("chaos"), replicas=1) as running:
        yield running
