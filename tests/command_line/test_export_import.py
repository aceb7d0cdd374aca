"""`contextcache export` and `contextcache import` between two whole deployments.

Each deployment runs every service, the rate limiter and Envoy on its own data directory and
ports; the command reaches each only through its gateway, so the bundle streams through
Envoy both ways.
"""

from __future__ import annotations

import re

import pytest

from tests.command_line.conftest import PASSPHRASE, cli_stack

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

NOTE = "The lighthouse keeper lit the lamp at dusk so the fishing boats could find the harbour."
QUESTION = "who lit the lamp at dusk?"


@pytest.fixture(scope="module")
def target(tmp_path_factory, stack_env):
    with cli_stack(tmp_path_factory.mktemp("target"), stack_env) as running:
        yield running


def test_export_then_import_into_another_deployment(cli, target, tmp_path):
    created = cli.run(
        "projects", "create", "harbour", "--passphrase-stdin", stdin=PASSPHRASE + "\n"
    )
    assert created.returncode == 0, created.stderr
    project_id = re.search(r"\(([0-9a-f-]{36})\)", created.stdout)[1]
    assert (
        cli.run("unlock", "harbour", "--passphrase-stdin", stdin=PASSPHRASE + "\n").returncode == 0
    )
    note = tmp_path / "keeper.txt"
    note.write_text(NOTE)
    assert cli.run("ingest", str(note), "-p", project_id, timeout=300).returncode == 0
    asked = cli.json("query", QUESTION, "-p", project_id, "--top-k", "1")

    bundle = tmp_path / "harbour.ccbundle"
    exported = cli.run("export", project_id, "-o", str(bundle))
    assert exported.returncode == 0, exported.stderr
    data = bundle.read_bytes()
    assert data.startswith(b"CCBUNDLE") and b"lighthouse keeper" not in data
    assert cli.run("export", project_id, "-o", str(bundle)).returncode == 2  # no overwrite

    cut = tmp_path / "cut.ccbundle"
    cut.write_bytes(data[: len(data) - 10])
    damaged = target.run("import", str(cut), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert damaged.returncode == 1, damaged.stderr
    assert "Data integrity error" in damaged.stderr

    wrong = target.run("import", str(bundle), "--passphrase-stdin", stdin="not the right one\n")
    assert wrong.returncode == 7, wrong.stderr

    imported = target.run("import", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert imported.returncode == 0, imported.stderr
    assert f"Imported project harbour ({project_id}): 1 documents" in imported.stdout
    again = target.run("import", str(bundle), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert again.returncode == 5, again.stderr

    unlocked = target.run("unlock", project_id, "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert unlocked.returncode == 0, unlocked.stderr
    answered = target.json("query", QUESTION, "-p", project_id, "--top-k", "1")
    assert answered["passages"][0]["text"] == asked["passages"][0]["text"]
    assert "lighthouse keeper" in answered["passages"][0]["text"]
    verified = target.run("audit", "verify", "-p", project_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
