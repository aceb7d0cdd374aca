"""`contextcache export` and `contextcache import` between two whole deployments.

Each deployment runs every service, the rate limiter and Envoy on its own data directory and
ports; the command reaches each only through its gateway, so the bundle streams through
Envoy both ways.
"""

from __future__ import annotations

import re

import pytest

from tests.command_line.conftest import PASSPHRASE, cli_stack

# Two whole deployments start in this module (each on 2 shared cores).
pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(600)]

NOTE = "The lighthouse keeper lit the lamp at dusk so the fishing boats could find the harbour."
QUESTION = "who lit the lamp at dusk?"


@pytest.fixture(scope="module")
def target(tmp_path_factory, stack_env):
    with cli_stack(tmp_path_factory.mktemp("target"), stack_env) as running:
        yield running


@pytest.fixture(scope="module")
def exported(cli, tmp_path_factory) -> dict:
    """A project made with the command on the first deployment, exported to a file."""
    created = cli.run(
        "projects", "create", "harbour", "--passphrase-stdin", stdin=PASSPHRASE + "\n"
    )
    assert created.returncode == 0, created.stderr
    project_id = re.search(r"\(([0-9a-f-]{36})\)", created.stdout)[1]
    unlocked = cli.run("unlock", "harbour", "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert unlocked.returncode == 0, unlocked.stderr
    work = tmp_path_factory.mktemp("bundle")
    note = work / "keeper.txt"
    note.write_text(NOTE)
    assert cli.run("ingest", str(note), "-p", project_id, timeout=300).returncode == 0
    asked = cli.json("query", QUESTION, "-p", project_id, "--top-k", "1")
    bundle = work / "harbour.ccbundle"
    written = cli.run("export", project_id, "-o", str(bundle))
    assert written.returncode == 0, written.stderr
    return {"id": project_id, "bundle": bundle, "answer": asked["passages"][0]["text"]}


def test_export_writes_one_signed_file_without_plaintext(cli, exported):
    data = exported["bundle"].read_bytes()
    assert data.startswith(b"CCBUNDLE") and b"lighthouse keeper" not in data
    again = cli.run("export", exported["id"], "-o", str(exported["bundle"]))
    assert again.returncode == 2, again.stderr  # an existing file is not replaced
    assert exported["bundle"].read_bytes() == data


def test_import_refuses_a_cut_file_and_a_wrong_passphrase(target, exported, tmp_path):
    cut = tmp_path / "cut.ccbundle"
    cut.write_bytes(exported["bundle"].read_bytes()[:-10])
    damaged = target.run("import", str(cut), "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    # The caller's file is bad input (exit 3, its bytes named), not a server fault.
    assert damaged.returncode == 3, damaged.stderr
    assert "Invalid input: data: The bundle is damaged" in damaged.stderr
    assert "Nothing was imported" in damaged.stderr
    wrong = target.run(
        "import", str(exported["bundle"]), "--passphrase-stdin", stdin="not the right one\n"
    )
    assert wrong.returncode == 7, wrong.stderr


def test_import_into_another_deployment_answers_the_same(target, exported):
    bundle, project_id = str(exported["bundle"]), exported["id"]
    imported = target.run("import", bundle, "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert imported.returncode == 0, imported.stderr
    assert f"Imported project harbour ({project_id}): 1 documents" in imported.stdout
    again = target.run("import", bundle, "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert again.returncode == 5, again.stderr

    unlocked = target.run("unlock", project_id, "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert unlocked.returncode == 0, unlocked.stderr
    answered = target.json("query", QUESTION, "-p", project_id, "--top-k", "1")
    assert answered["passages"][0]["text"] == exported["answer"]
    assert "lighthouse keeper" in exported["answer"]
    verified = target.run("audit", "verify", "-p", project_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
