"""Browser tests of the web console: headless Chromium (Debian's `chromium` package) driven
by Playwright, against the stack as `make run` starts it, on free ports.

Playwright's own browser download is not used: the tests point it at the system Chromium,
installing it with apt-get when it is missing and the tests run as root (CI), and fail with
the command to run otherwise. Screenshots of every step go to build/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from examples.demo import demo_environment
from runtime.config import REPO_ROOT
from runtime.ports import free_port

SCREENSHOTS = REPO_ROOT / "build" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CONSOLE_LINE = re.compile(r"^Web console: (?P<url>http://\S+)", re.MULTILINE)


def chromium_path() -> str:
    """The system Chromium; installed with apt-get (as root) when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        commands = (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"])
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
            if result.returncode != 0:
                pytest.fail(f"`{' '.join(command)}` failed:\n{result.stdout}\n{result.stderr}")
        found = shutil.which("chromium")
    if not found:
        pytest.fail(
            "The browser tests need Chromium: install Debian's package as root "
            "(`apt-get install -y chromium`) and run them again"
        )
    return found


@dataclass(frozen=True)
class RunningStack:
    console_url: str
    gateway_url: str
    env: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """`python -m runtime.stack` (what `make run` runs) on free ports, with the console."""
    if not (REPO_ROOT / "web" / "dist" / "index.html").is_file():
        pytest.fail("The web console is not built (web/dist): run `make install`")
    data_dir = tmp_path_factory.mktemp("console-stack")
    env = demo_environment(data_dir)
    env.update(
        CONSOLE_PORT=str(free_port()),
        # Passphrase hashing at its minimum cost: these tests are about the console.
        ARGON2_MEMORY_KIB="8192",
        ARGON2_TIME_COST="1",
        # The URL test serves its page from this machine.
        URL_FETCH_ALLOW_PRIVATE="true",
    )
    # Everything the stack and its children print (Envoy's access log too) goes to a file: a
    # pipe nobody reads would fill up and block them.
    log_path = data_dir / "stack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime.stack"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while not (match := CONSOLE_LINE.search(log_path.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the stack did not start:\n" + log_path.read_text()[-4000:])
            time.sleep(0.3)
        yield RunningStack(
            console_url=match["url"],
            gateway_url=f"http://127.0.0.1:{env['GATEWAY_PORT']}",
            env=env,
            log=log_path,
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Screenshots:
    """Saves `build/screenshots/<test>-<nn>-<step>.png`, one per step, in order."""

    def __init__(self, page: Page, test: str) -> None:
        self.page = page
        self.test = test
        self.count = 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob(f"{test}-*.png"):
            old.unlink()

    def __call__(self, step: str) -> Path:
        self.count += 1
        path = SCREENSHOTS / f"{self.test}-{self.count:02d}-{step}.png"
        self.page.screenshot(path=path, full_page=True)
        return path


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def console_messages(page: Page) -> list[str]:
    """What the page logs to the browser's console (CORS refusals are reported there)."""
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    return messages


@pytest.fixture
def shot(page: Page, request: pytest.FixtureRequest) -> Screenshots:
    name = request.node.name.removeprefix("test_")
    return Screenshots(page, name)
