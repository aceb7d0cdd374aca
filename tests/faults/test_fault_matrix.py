"""The fault matrix on the stack of `make run` (tests/faults/conftest.py): each fault is
injected while the workload runs, then everything is checked (tests/faults/matrix.py).

The normal suite runs a bounded slice (SLICE); `make chaos` runs every fault
(FAULT_MATRIX=full) and writes the figures (time to recover, what callers saw) to
FAULT_FIGURES.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.conftest import ChaosStack
from tests.faults.matrix import Fault, down_for, exercise, kill_and_restart

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(1200)]

FAULTS = [
    Fault("PostgreSQL restart", lambda chaos: chaos.postgres.restart()),
    Fault("Redis restart", lambda chaos: chaos.redis.restart()),
    Fault("kill -9 RQ worker", kill_and_restart("worker")),
    Fault("kill -9 ingest", kill_and_restart("ingest")),
    Fault("kill -9 query", kill_and_restart("query")),
    Fault("kill -9 crypto", kill_and_restart("crypto")),
    Fault("query down 30 s", down_for("query", 30)),
    Fault("Envoy restart", lambda chaos: chaos.stack.restart("envoy")),
]
# What the normal suite runs: a crash mid-job (lease, reaper, fencing) and a crash of the
# service every other one depends on (audit outboxes, retries).
SLICE = ("kill -9 RQ worker", "kill -9 crypto")
SELECTED = [f for f in FAULTS if os.environ.get("FAULT_MATRIX") == "full" or f.name in SLICE]


@pytest.mark.parametrize("fault", SELECTED, ids=[f.name for f in SELECTED])
def test_nothing_is_lost_stuck_or_doubled(chaos: ChaosStack, fault: Fault):
    exercise(chaos, fault)
