"""The installed `contextcache` command, run as a subprocess against a real stack.

One stack per module (every service, the rate limiter and Envoy, on the embedded default and
free ports), reached only through its gateway, as a user's terminal would. The tests follow
a user's path — create → unlock → ingest a folder (a PDF, text files, a duplicate and a file
the server refuses) → query → audit verify — and check what people read (output), what
scripts rely on (exit codes, --json) and what must never show (tracebacks, passphrases).
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from examples.demo import DOCUMENTS
from tests.command_line.conftest import PASSPHRASE, UNLOCKS_PER_MINUTE, serving

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

PDF = "constitution-of-the-united-states.pdf"
SENATORS = "How many senators does each state have?"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A PDF, two text files, a duplicate of one of them in a subfolder, and a .doc."""
    folder = tmp_path_factory.mktemp("documents")
    for name in (PDF, "declaration-of-independence.txt", "gettysburg-address.txt"):
        shutil.copy(DOCUMENTS / name, folder / name)
    (folder / "copies").mkdir()
    shutil.copy(DOCUMENTS / "gettysburg-address.txt", folder / "copies" / "gettysburg-copy.txt")
    (folder / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0 not a format ContextCache reads")
    return folder


@pytest.fixture(scope="module")
def project(cli) -> str:
    """The module's project, created and unlocked with the command; its id."""
    created = cli.run(
        "projects",
        "create",
        "founding",
        "-d",
        "US documents",
        "--passphrase-stdin",
        stdin=PASSPHRASE + "\n",
    )
    assert created.returncode == 0, created.stderr
    project_id = re.search(r"\(([0-9a-f-]{36})\)", created.stdout)[1]
    unlocked = cli.run("unlock", "founding", "--passphrase-stdin", stdin=PASSPHRASE + "\n")
    assert unlocked.returncode == 0, unlocked.stderr
    assert re.search(r"Unlocked founding .* until .* \(in 1 h\)", unlocked.stdout)
    return project_id


@pytest.fixture(scope="module")
def ingested(cli, project, folder) -> subprocess.CompletedProcess[str]:
    return cli.run("ingest", str(folder), timeout=600)


def test_unlock_keeps_the_token_in_a_file_only_its_user_can_read(cli, project):
    token = cli.home / "config" / "contextcache" / "tokens" / f"{project}.json"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    listed = cli.json("projects", "list")
    assert [p["id"] for p in listed if p["name"] == "founding"] == [project]


def test_unlock_print_gives_export_lines_for_eval(cli, project):
    printed = cli.run(
        "unlock", project, "--print", "--ttl", "5m", CONTEXTCACHE_PASSPHRASE=PASSPHRASE
    )
    assert printed.returncode == 0, printed.stderr
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", printed.stdout, re.MULTILINE))
    assert exports["CONTEXTCACHE_PROJECT"] == project
    assert "(in 5 min)" in printed.stderr
    # The printed token works without the token file (another user's empty config).
    listed = cli.run(
        "documents",
        "list",
        "-p",
        project,
        "--json",
        XDG_CONFIG_HOME=str(cli.home / "elsewhere"),
        CONTEXTCACHE_TOKEN=exports["CONTEXTCACHE_TOKEN"].strip("'"),
    )
    assert listed.returncode == 0, listed.stderr


def test_ingest_reports_each_file_and_exits_10_for_the_refused_one(ingested, folder):
    assert ingested.returncode == 10, ingested.stdout + ingested.stderr
    lines = {
        m["path"]: (m["result"], m["detail"])
        for m in re.finditer(
            r"^\S+ (?P<result>ingested|skipped|failed)\s+(?P<path>\S+)  (?P<detail>.*)$",
            ingested.stdout,
            re.MULTILINE,
        )
    }
    assert lines[str(folder / PDF)][0] == "ingested"
    assert re.match(r"\d+ chunks", lines[str(folder / PDF)][1])
    assert lines[str(folder / "declaration-of-independence.txt")][0] == "ingested"
    # The two copies of the Gettysburg Address: whichever the server took first is ingested,
    # the other is skipped as a duplicate naming the document it duplicates.
    copies = [str(folder / "gettysburg-address.txt"), str(folder / "copies/gettysburg-copy.txt")]
    assert sorted(lines[c][0] for c in copies) == ["ingested", "skipped"]
    skipped = next(lines[c][1] for c in copies if lines[c][0] == "skipped")
    assert re.fullmatch(r"already in as document [0-9a-f-]{36}", skipped)
    result, reason = lines[str(folder / "notes.doc")]
    assert result == "failed"
    assert "file.filename" in reason and "Unsupported file type '.doc'" in reason
    assert "Done: 3 ingested, 1 skipped (already in), 1 failed" in ingested.stdout


def test_a_second_run_skips_everything_already_in(cli, project, ingested, folder):
    again = cli.json("ingest", str(folder), "--exclude", "*.doc")
    assert again["skipped"] == 4 and again["ingested"] == 0 and again["failed"] == 0
    documents = cli.json("documents", "list")
    ids = {d["id"] for d in documents}
    assert {d["document_id"] for d in again["documents"]} == ids
    assert {d["status"] for d in documents} == {"DOCUMENT_STATUS_COMPLETED"}
    assert len(documents) == 3


def test_query_cites_the_passage_that_answers(cli, ingested):
    answer = cli.json("query", SENATORS, "--top-k", "3")
    top = answer["passages"][0]
    assert top["source"] == PDF
    assert "two Senators from each State" in " ".join(top["text"].split())
    shown = cli.run("query", SENATORS, "-k", "1", FORCE_COLOR="1")
    assert shown.returncode == 0, shown.stderr
    heading = re.sub(r"\x1b\[[0-9;]*m", "", shown.stdout.splitlines()[0])
    assert re.match(r"1\. score \d\.\d{4}  The Constitution of the United States\s+" + PDF, heading)
    assert "chunk " in heading
    # The question's words in the passage are highlighted (bold yellow), other forms too.
    assert "\x1b[1;33mSenators\x1b[0m" in shown.stdout


def test_query_modes_and_limits(cli, ingested):
    keyword = cli.json("query", "Gettysburg", "--mode", "keyword", "--top-k", "2")
    assert keyword["mode"] == "RETRIEVAL_MODE_KEYWORD"
    assert len(keyword["passages"]) <= 2
    too_many = cli.run("query", SENATORS, "--top-k", "51")
    assert too_many.returncode == 3
    assert "top_k" in too_many.stderr and "between 1 and 50" in too_many.stderr
    bad_mode = cli.run("query", SENATORS, "--mode", "fuzzy")
    assert bad_mode.returncode == 2


def test_audit_verify_and_events(cli, project, ingested):
    verified = cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert re.match(r"valid: \d+ events verified; head seq \d+", verified.stdout)
    result = cli.json("audit", "verify")
    assert result["valid"] is True
    head = cli.json("audit", "head")
    assert result["head"]["seq"] == head["seq"]
    events = cli.json("audit", "events")
    types = [e["type"] for e in events]
    assert types[0] == "AUDIT_EVENT_TYPE_PROJECT_CREATED"
    assert types.count("AUDIT_EVENT_TYPE_DOCUMENT_INGESTED") == 3
    assert int(events[-1]["seq"]) == int(head["seq"])


def test_documents_show_watch_and_stats(cli, project, ingested):
    documents = cli.json("documents", "list", "--status", "completed")
    pdf = next(d for d in documents if d["source"] == PDF)
    shown = cli.json("documents", "show", pdf["id"])
    assert shown["title"] == "The Constitution of the United States"
    watched = cli.run("watch", pdf["id"])
    assert watched.returncode == 0 and watched.stdout.startswith("completed"), watched.stderr
    stats = cli.json("projects", "stats", project)
    assert int(stats["documents_completed"]) == 3


def test_ingest_stdin_and_urls(cli, ingested, tmp_path):
    (tmp_path / "tides.txt").write_text("Tides are caused by the pull of the Moon and the Sun.")
    with serving(tmp_path) as base:
        note = "The harbour master logs every ship that enters the port."
        sent = cli.run(
            "ingest",
            "-",
            f"{base}/tides.txt",
            f"{base}/gone.txt",
            "--title",
            "Pasted note",
            "--json",
            stdin=note,
        )
        assert sent.returncode == 10, sent.stderr
        run = json.loads(sent.stdout)
        assert (run["ingested"], run["failed"]) == (2, 1), run
        # Fetched in the background: the failure and its reason come from WatchDocument.
        gone = next(d for d in run["documents"] if d["input"].endswith("gone.txt"))
        assert gone["result"] == "failed" and "404" in gone["reason"], gone
        retried = cli.run("documents", "retry", gone["document_id"])
        assert retried.returncode == 10 and retried.stdout.startswith("failed"), retried.stderr
    titles = {d["title"] for d in cli.json("documents", "list")}
    assert "Pasted note" in titles
    deleted = cli.run("documents", "delete", gone["document_id"])
    assert deleted.returncode == 0, deleted.stderr
    assert cli.run("documents", "show", gone["document_id"]).returncode == 4


def test_errors_are_one_clear_message_and_a_documented_exit_code(cli, project, tmp_path):
    wrong = cli.run("unlock", project, "--passphrase-stdin", stdin="not the passphrase at all\n")
    assert wrong.returncode == 7 and "Permission denied" in wrong.stderr
    short = cli.run("projects", "create", "x", "--passphrase-stdin", stdin="too short\n")
    assert short.returncode == 3
    assert "passphrase" in short.stderr and "Minimum length is 20" in short.stderr
    locked = cli.run("query", SENATORS, "-p", project, XDG_CONFIG_HOME=str(tmp_path))
    assert locked.returncode == 6 and "contextcache unlock" in locked.stderr
    missing = cli.run("documents", "show", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 4, missing.stderr
    unknown = cli.run("projects", "show", "no-such-project")
    assert unknown.returncode == 4, unknown.stderr
    nowhere = cli.run("projects", "list", "--json", CONTEXTCACHE_ADDRESS="127.0.0.1:9")
    assert nowhere.returncode == 9 and "cannot reach the gateway" in nowhere.stderr
    usage = cli.run("ingest", str(tmp_path / "absent"))
    assert usage.returncode == 2 and "No such file or folder" in usage.stderr


def test_delete_project(cli, ingested):
    created = cli.run(
        "projects", "create", "scratch", "--json", "--passphrase-stdin", stdin=PASSPHRASE + "\n"
    )
    scratch = json.loads(created.stdout)["id"]
    assert cli.run("unlock", scratch, CONTEXTCACHE_PASSPHRASE=PASSPHRASE).returncode == 0
    refused = cli.run("projects", "delete", scratch)  # no terminal to confirm on
    assert refused.returncode == 2
    deleted = cli.run("projects", "delete", scratch, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert cli.run("projects", "show", scratch).returncode == 4


def test_passphrase_change(cli):
    created = cli.run(
        "projects", "create", "rekeyed", "--json", "--passphrase-stdin", stdin=PASSPHRASE + "\n"
    )
    rekeyed = json.loads(created.stdout)["id"]
    new = "a brand new passphrase for 2027"
    changed = cli.run(
        "passphrase", "change", rekeyed, "--passphrase-stdin", stdin=f"{PASSPHRASE}\n{new}\n"
    )
    assert changed.returncode == 0, changed.stderr
    assert cli.run("unlock", rekeyed, CONTEXTCACHE_PASSPHRASE=PASSPHRASE).returncode == 7
    assert cli.run("unlock", rekeyed, CONTEXTCACHE_PASSPHRASE=new).returncode == 0


def test_unlock_attempts_past_the_limit_are_refused_with_a_wait(cli, project):
    """Last in the module: it spends the gateway's unlock allowance for a minute."""
    for _ in range(2 * UNLOCKS_PER_MINUTE + 1):  # refused within two windows
        attempt = cli.run("unlock", project, "--print", CONTEXTCACHE_PASSPHRASE=PASSPHRASE)
        if attempt.returncode != 0:
            break
    assert attempt.returncode == 8, attempt.stderr
    assert re.search(r"Rate limited: .*\nTry again in \d+ s\.", attempt.stderr)
