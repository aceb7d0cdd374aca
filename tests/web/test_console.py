"""The web console in a real browser: a person creates a project, unlocks it, drops two files
and watches them complete, searches, and checks the audit chain — all through the gateway's
gRPC-Web endpoint, as `make run` serves it. A console served from an origin the gateway's CORS
does not allow cannot call it.

Each step is saved as a screenshot under build/screenshots/.
"""

from __future__ import annotations

import base64
import functools
import secrets
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from examples.demo import DOCUMENTS
from runtime import console
from runtime.config import Settings
from runtime.ports import free_port

# The first test's set-up may install Chromium (apt-get) and loads the embedding model.
pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(900)]

UPLOADS = ["gettysburg-address.txt", "constitution-of-the-united-states.pdf"]
# Records every status each document row shows, from before the files are dropped.
RECORD_STATUSES = """() => {
  window.statusesSeen = {};
  const record = (row) => {
    const name = row.querySelector('.doc-title').textContent;
    (window.statusesSeen[name] ??= []).push(row.dataset.status);
  };
  new MutationObserver((changes) => {
    for (const change of changes) {
      const row = change.target.closest && change.target.closest('[data-testid=document]');
      if (row) record(row);
    }
  }).observe(document.querySelector('[data-testid=documents]'),
             {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']});
}"""
DROP_FILES = """([selector, files]) => {
  const transfer = new DataTransfer();
  for (const file of files) {
    const bytes = Uint8Array.from(atob(file.base64), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], file.name, {type: file.type}));
  }
  document.querySelector(selector).dispatchEvent(
    new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


ARTICLE = """<!doctype html><html><head><title>Why the tides turn</title></head><body><article>
<h1>Why the tides turn</h1>
<p>Tides are the rise and fall of sea levels caused by the gravitational pull of the Moon and
the Sun on the oceans, and by the rotation of the Earth.</p>
<p>Most coasts see two high tides and two low tides every lunar day. Spring tides, the largest,
come when the Sun and the Moon are aligned; neap tides, the smallest, when they are at right
angles to each other.</p>
</article></body></html>"""


@pytest.fixture
def web_page(tmp_path: Path) -> Iterator[str]:
    """A small article served over HTTP on this machine; yields its URL."""
    (tmp_path / "tides.html").write_text(ARTICLE)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/tides.html"
    server.shutdown()
    server.server_close()


def create_and_unlock(page: Page, name: str) -> None:
    passphrase = secrets.token_urlsafe(24)
    create = page.get_by_test_id("create-project")
    create.get_by_label("Name").fill(name)
    create.get_by_label("Passphrase").fill(passphrase)
    create.get_by_role("button", name="Create project").click()
    expect(page.get_by_test_id("project-page").locator("h2")).to_have_text(name)
    unlock = page.get_by_test_id("unlock-form")
    unlock.get_by_label("Passphrase").fill(passphrase)
    unlock.get_by_role("button", name="Unlock").click()
    expect(page.get_by_test_id("lock-state")).to_contain_text("Unlocked until")


def dropped_file(name: str) -> dict[str, str]:
    path = DOCUMENTS / name
    kind = "application/pdf" if path.suffix == ".pdf" else "text/plain"
    return {"name": name, "type": kind, "base64": base64.b64encode(path.read_bytes()).decode()}


def test_create_unlock_upload_search_and_verify_audit(stack, page: Page, shot):
    passphrase = secrets.token_urlsafe(24)
    page.goto(stack.console_url)
    expect(page.get_by_test_id("gateway")).to_have_text(f"gateway {stack.gateway_url}")
    shot("console")

    create = page.get_by_test_id("create-project")
    create.get_by_label("Name").fill("Founding documents")
    create.get_by_label("Description").fill("Uploaded from the browser test")
    create.get_by_label("Passphrase").fill(passphrase)
    create.get_by_role("button", name="Create project").click()
    project_page = page.get_by_test_id("project-page")
    expect(project_page.locator("h2")).to_have_text("Founding documents")
    expect(page.get_by_test_id("lock-state")).to_have_text("Locked")
    shot("created")

    unlock = page.get_by_test_id("unlock-form")
    unlock.get_by_label("Passphrase").fill("not the passphrase at all")
    unlock.get_by_role("button", name="Unlock").click()
    expect(unlock.get_by_role("alert")).to_have_text("Wrong passphrase.")
    unlock.get_by_label("Passphrase").fill(passphrase)
    unlock.get_by_role("button", name="Unlock").click()
    expect(page.get_by_test_id("lock-state")).to_contain_text("Unlocked until")
    expect(page.get_by_test_id("documents-view")).to_be_visible()
    shot("unlocked")

    page.evaluate(RECORD_STATUSES)
    page.evaluate(DROP_FILES, ["[data-testid=dropzone]", [dropped_file(n) for n in UPLOADS]])
    rows = page.get_by_test_id("document")
    expect(rows).to_have_count(2)
    shot("uploading")
    for row in rows.all():
        expect(row).to_have_attribute("data-status", "completed", timeout=240_000)
        expect(row.locator("progress")).to_have_js_property("value", 1)
        expect(row.locator(".progress-label")).to_contain_text("chunk")
    seen = page.evaluate("window.statusesSeen")
    for statuses in seen.values():
        # The rows followed the WatchDocument stream: queued or processing, then completed.
        assert statuses[-1] == "completed", seen
        assert {"queued", "processing"} & set(statuses), seen
    expect(page.get_by_test_id("stat-completed").locator("dd")).to_have_text("2")
    expect(page.locator(".project.selected")).to_contain_text("2 documents")
    shot("completed")

    page.get_by_role("tab", name="Search").click()
    search = page.get_by_test_id("search-form")
    search.get_by_label("Query").fill("How many senators does each state have?")
    search.get_by_role("button", name="Search").click()
    passages = page.get_by_test_id("passage")
    expect(passages.first).to_be_visible()
    expect(page.get_by_test_id("query-summary")).to_contain_text("hybrid mode")
    expect(passages.first.get_by_test_id("citation")).to_contain_text(
        "constitution-of-the-united-states.pdf"
    )
    expect(passages.first.locator("mark", has_text="Senators").first).to_be_visible()
    shot("search")

    search.get_by_text("Keyword").click()
    search.get_by_label("Query").fill("four score and seven years ago")
    search.get_by_role("button", name="Search").click()
    expect(passages.first.get_by_test_id("citation")).to_contain_text("gettysburg-address.txt")
    expect(page.get_by_test_id("query-summary")).to_contain_text("keyword mode")
    shot("search-keyword")

    page.get_by_role("tab", name="Audit").click()
    badge = page.get_by_test_id("audit-badge")
    expect(badge).to_have_attribute("data-state", "verified")
    expect(badge).to_contain_text("Chain verified")
    events = page.get_by_test_id("audit-event")
    # Created, unlocked, two documents ingested (the outbox relay may deliver them a bit later).
    for _ in range(20):
        if events.count() >= 4:
            break
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Verify again").click()
    expect(events.filter(has_text="project created")).to_have_count(1)
    expect(events.filter(has_text="document ingested")).to_have_count(2)
    expect(badge).to_have_attribute("data-state", "verified")
    shot("audit")

    # The unlock token lived in the page's memory only: nothing stored, and a reload locks.
    stored = page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    page.reload()
    page.locator(".project", has_text="Founding documents").click()
    expect(page.get_by_test_id("lock-state")).to_have_text("Locked")
    shot("reloaded-locked")


def test_urls_failure_reasons_retry_and_delete(stack, page: Page, shot, web_page):
    page.goto(stack.console_url)
    create_and_unlock(page, "Web pages")
    url_form = page.get_by_test_id("url-form")
    url_form.get_by_label("Document URL").fill(web_page)
    url_form.get_by_role("button", name="Add URL").click()
    rows = page.get_by_test_id("document")
    expect(rows.first).to_have_attribute("data-status", "completed", timeout=120_000)
    expect(rows.first.locator(".doc-title")).to_have_text("Why the tides turn")

    missing = web_page.replace("tides.html", "missing.html")
    url_form.get_by_label("Document URL").fill(missing)
    url_form.get_by_role("button", name="Add URL").click()
    failed = rows.filter(has_text="missing.html")
    expect(failed).to_have_attribute("data-status", "failed", timeout=120_000)
    expect(failed.locator(".doc-error")).to_contain_text("404")
    expect(page.get_by_test_id("stat-failed").locator("dd")).to_have_text("1")
    shot("failed")

    failed.get_by_role("button", name="Retry").click()  # the page is still missing
    expect(failed.get_by_test_id("attempts")).to_have_text("2 attempts", timeout=120_000)
    expect(failed).to_have_attribute("data-status", "failed", timeout=120_000)
    expect(failed.get_by_role("button", name="Retry")).to_be_visible()
    delete = failed.get_by_role("button", name="Delete")
    delete.click()
    expect(delete).to_have_text("Confirm delete")
    delete.click()
    expect(rows).to_have_count(1)
    expect(page.get_by_test_id("stat-failed").locator("dd")).to_have_text("0")
    shot("deleted")


def test_console_from_an_origin_cors_does_not_allow_cannot_call_the_gateway(
    stack, page: Page, shot, console_messages
):
    # The same console, served from another port: an origin missing from CORS_ORIGINS.
    settings = Settings(console_gateway_url=stack.gateway_url)
    server = console.make_server(settings, "127.0.0.1", free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        page.goto(origin)
        banner = page.get_by_test_id("banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("Cannot reach the gateway")
        expect(banner).to_contain_text(origin)
        assert any("CORS policy" in message for message in console_messages), console_messages
        shot("refused")
        # The gateway itself is up: the stack's own console reaches it.
        page.goto(stack.console_url)
        expect(page.get_by_test_id("projects")).to_be_visible()
        expect(page.get_by_test_id("banner")).to_be_hidden()
    finally:
        server.shutdown()
        server.server_close()
