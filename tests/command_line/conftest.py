"""A real stack per test module and the installed `contextcache` command to drive it.

`cli` starts every service, the rate limiter and Envoy on free ports (the embedded default
in a temporary directory, or what the module's `stack_env` adds, e.g. PostgreSQL and Redis)
and runs the command as a user would: a subprocess with its own HOME, reaching the stack only
through the gateway. Every run is checked for tracebacks and for the passphrase in its output.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from examples.demo import demo_environment
from runtime.config import Settings
from runtime.stack import Stack

REPO = Path(__file__).resolve().parents[2]
# The console script `make install` puts beside the interpreter.
COMMAND = Path(sys.executable).parent / "contextcache"
PASSPHRASE = "correct horse battery staple 2026"
# Limits raised so a module's calls never hit them, except UnlockProject's, which a test
# runs into on purpose.
RAISED = 10_000
UNLOCKS_PER_MINUTE = 10


def raised_rules(directory: Path) -> Path:
    rules = yaml.safe_load((REPO / "envoy" / "ratelimit.yaml").read_text())
    for descriptor in rules["descriptors"]:
        unlock = descriptor.get("value") == "UnlockProject"
        for inner in descriptor.get("descriptors", ()):
            inner["rate_limit"]["requests_per_unit"] = UNLOCKS_PER_MINUTE if unlock else RAISED
    path = directory / "ratelimit.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


@dataclass
class Cli:
    gateway: str
    home: Path  # HOME and XDG_CONFIG_HOME of the command's user

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("CONTEXTCACHE_", "XDG_"))
        }
        environment.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / "config"),
            CONTEXTCACHE_ADDRESS=self.gateway,
            COLUMNS="200",
        )
        environment.update(env)
        result = subprocess.run(
            [str(COMMAND), *args],
            input=stdin if stdin is not None else "",  # never the test runner's terminal
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout,
            check=False,
        )
        assert "Traceback" not in result.stderr, result.stderr
        assert PASSPHRASE not in result.stdout + result.stderr
        return result

    def json(self, *args: str, **kwargs: str):
        result = self.run(*args, "--json", **kwargs)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[str]:
    """A loopback HTTP server for `directory`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """Settings a module adds to the embedded default (none: the embedded default)."""
    return {}


@contextlib.contextmanager
def cli_stack(work: Path, stack_env: dict[str, str]) -> Iterator[Cli]:
    """A whole deployment under `work` (its own data, ports and gateway) and a `Cli` for it."""
    if not COMMAND.exists():
        pytest.fail(f"{COMMAND} is missing: `make install` installs the contextcache command")
    env = demo_environment(work / "var")
    env.update(
        RATELIMIT_RULES=str(raised_rules(work)),
        ARGON2_MEMORY_KIB="8192",
        ARGON2_TIME_COST="1",
        URL_FETCH_ALLOW_PRIVATE="true",
        **stack_env,
    )
    with pytest.MonkeyPatch.context() as patch:
        for key in set(os.environ) - set(env):
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        settings = Settings()
    with Stack(settings, env, log=work / "stack.log") as stack:
        yield Cli(f"127.0.0.1:{settings.gateway_port}", work / "home")
        dead = stack.failed()
        assert dead is None, f"{dead.name} died during the tests; see {work / 'stack.log'}"


@pytest.fixture(scope="module")
def cli(tmp_path_factory, stack_env) -> Iterator[Cli]:
    with cli_stack(tmp_path_factory.mktemp("cli"), stack_env) as running:
        yield running
