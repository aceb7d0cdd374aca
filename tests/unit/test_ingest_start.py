"""The ingest service loads the embedding model while it starts, before it listens.

Loading it holds the GIL for seconds (about a minute on a busy machine); done by the first
ingestion, it starved the event loop of a freshly (re)started service, so health checks
timed out and calls waited (found by the fault matrix: after kill -9 of ingest, the first
inline ingestion hit its 60 s deadline). The service starts in a process of its own, as in
production, where nothing else has loaded the model yet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

STARTS_INGEST = """
import asyncio, sys
import retrieval.embeddings as embeddings
from runtime.config import Settings
from services.ingest.app import IngestApp

async def main():
    app = IngestApp(Settings(environment="test", data_dir=sys.argv[1]))
    await app.start()
    try:
        print("model loaded" if embeddings._model is not None else "model not loaded")
    finally:
        await app.stop()

asyncio.run(main())
"""


def test_the_model_is_loaded_before_the_service_serves(tmp_path):
    started = subprocess.run(
        [sys.executable, "-c", STARTS_INGEST, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.strip().splitlines()[-1] == "model loaded"
