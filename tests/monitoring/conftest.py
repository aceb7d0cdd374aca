"""Debian's real Prometheus and promtool for the monitoring tests.

Installed with apt-get when missing (the tests run as root on the project's machines and in
CI); where that is impossible the tests fail with a message saying what to install, never
skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PACKAGE = "prometheus"  # Debian's package: /usr/bin/prometheus and /usr/bin/promtool


def _install() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "Debian's prometheus package is needed (promtool and prometheus): "
            f"run `sudo apt-get install -y {PACKAGE}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if command[1] == "install" and result.returncode == 0:
            return
    pytest.fail(f"apt-get install -y {PACKAGE} failed:\n{result.stdout[-2000:]}{result.stderr}")


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        _install()
        found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not on PATH after installing Debian's {PACKAGE} package")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return binary("prometheus")
