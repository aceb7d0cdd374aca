"""The scaled topology (`python -m runtime.stack --replicas 2`): two replicas each of
projects, ingest and crypto, each on its own port with the same workload certificate, and
two RQ workers, behind Envoy, on the fault tests' own PostgreSQL and Redis.

The functional flow (create, unlock, ingest inline, query: the fixture's reference project)
runs through Envoy, which balances over healthy replicas. Then one replica is killed while
the workload runs: the other serves; calls in flight on the dead one fail UNAVAILABLE, never
INTERNAL; no document is lost or processed twice (tests/faults/matrix.py checks chunks,
vectors and audit events exactly once). The normal suite kills one ingest replica (SLICE);
`make chaos` kills one of each (FAULT_MATRIX=full).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from runtime.config import replica_addresses
from tests.faults.conftest import ChaosStack, chaos_stack
from tests.faults.matrix import Fault, exercise

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(1200)]

REPLICATED = ("projects", "ingest", "crypto")
ALONE_FOR = 10.0  # seconds the surviving replica serves alone


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    with chaos_stack(tmp_path_factory.mktemp("chaos-replicas"), replicas=2) as running:
        yield running


def one_replica_down(name: str) -> Callable[[ChaosStack], None]:
    """kill -9 of one replica; the other serves alone for a while; then it comes back."""

    def inject(chaos: ChaosStack) -> None:
        chaos.stack.kill(name, signal.SIGKILL)
        time.sleep(ALONE_FOR)
        chaos.stack.restart(name)

    return inject


FAULTS = [
    Fault("kill -9 one of 2 ingest", one_replica_down("ingest-2")),
    Fault("kill -9 one of 2 crypto", one_replica_down("crypto-2")),
    Fault("kill -9 one of 2 projects", one_replica_down("projects-2")),
    Fault("kill -9 one of 2 RQ workers", one_replica_down("worker-2")),
]
SLICE = ("kill -9 one of 2 ingest",)
SELECTED = [f for f in FAULTS if os.environ.get("FAULT_MATRIX") == "full" or f.name in SLICE]


def healthy_hosts(chaos: ChaosStack, cluster: str) -> set[str]:
    """host:port of the cluster's endpoints that Envoy's health checks pass."""
    admin = f"http://127.0.0.1:{chaos.settings.gateway_admin_port}/clusters"
    with urllib.request.urlopen(admin, timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return {
        line.split("::")[1]
        for line in lines
        if line.startswith(f"{cluster}::") and line.endswith("::health_flags::healthy")
    }


def test_every_replica_has_its_port_and_envoy_balances_over_them(chaos: ChaosStack):
    for service in REPLICATED:
        replicas = replica_addresses(getattr(chaos.settings, f"{service}_addr"))
        assert len(set(replicas)) == 2, replicas
        assert healthy_hosts(chaos, service) == set(replicas)
    assert {c.name for c in chaos.stack.children} >= {"worker", "worker-2"}


@pytest.mark.parametrize("fault", SELECTED, ids=[f.name for f in SELECTED])
def test_one_replica_down_the_other_serves(chaos: ChaosStack, fault: Fault):
    exercise(chaos, fault)
