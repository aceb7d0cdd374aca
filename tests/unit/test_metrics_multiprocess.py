"""The worker's metrics across forked work horses (prometheus_client's multiprocess mode, as
services/ingest/worker.py sets it up): every horse's counts are in the sum, and the files of
horses that exited are compacted into one archive instead of piling up per job."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from services.ingest.worker import count_in_files

    directory = Path(sys.argv[1])
    count_in_files(directory)
    from runtime import metrics
    from prometheus_client import CollectorRegistry, generate_latest

    def horse(chunks):
        metrics.CHUNKS_EMBEDDED.inc(chunks)
        metrics.EMBEDDING_BATCH_SIZE.observe(chunks)
        metrics.INGEST_JOBS.labels("completed").inc()
        os._exit(0)

    def scrape():
        registry = CollectorRegistry()
        registry.register(metrics._CompactingCollector(directory))
        return generate_latest(registry).decode()

    for round_ in range(2):
        for chunks in (1, 2, 3, 4, 5):
            pid = os.fork()
            if pid == 0:
                horse(chunks)
            os.waitpid(pid, 0)
        text = scrape()
        left = sorted(p.name for p in directory.iterdir() if str(os.getpid()) not in p.name)
        print("ROUND", round_, left)
    print(text)
    """
)


def test_work_horses_counts_are_summed_and_their_files_compacted(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "metrics")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Ten horses of 1..5 chunks, twice: every count is in the sum.
    assert "contextcache_ingest_chunks_embedded_total 30.0" in out
    assert 'contextcache_ingest_jobs_total{outcome="completed"} 10.0' in out
    assert "contextcache_embedding_batch_size_count 10.0" in out
    assert "contextcache_embedding_batch_size_sum 30.0" in out
    assert 'contextcache_embedding_batch_size_bucket{le="4.0"} 8.0' in out
    # After each scrape only the archives (and the worker's own files) are left: no files
    # per finished job.
    rounds = [line for line in out.splitlines() if line.startswith("ROUND")]
    assert len(rounds) == 2
    for line in rounds:
        assert line.endswith(
            "['counter_archive.db', 'gauge_max_archive.db', 'histogram_archive.db']"
        ), line
