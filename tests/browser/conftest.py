"""Browser tests: a real local stack (moto server, worker processes, sweeper, the dev app serving
``web/``) and Debian's Chromium driven by Playwright.

Chromium comes from the OS (``apt-get install chromium``), never from ``playwright install``.
Without it the suite fails when ``CI`` is set, and skips with the reason otherwise.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from alfred_tools.localstack import serve_app
from tests.support.stack import Stack, make_stack

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "web"
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = os.environ.get("ALFRED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 360, "height": 740}
# Long enough to see a job mid-way in a browser, short enough for a suite under two minutes.
STEP_SECONDS = "0.8"


def _need_chromium() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} not found (apt-get install -y chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package is not installed (pip install playwright)")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need Chromium and Playwright in CI: {reason}", pytrace=False)
        pytest.skip(f"browser tests skipped locally: {reason}")


@dataclass
class WebStack:
    """The running system a browser talks to."""

    base_url: str
    stack: Stack

    def token(self, user: str) -> str:
        r = httpx.get(f"{self.base_url}/api/dev/token", params={"user": user}, timeout=10)
        r.raise_for_status()
        return str(r.json()["token"])

    def api(self, user: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kw)

    def jobs(self, user: str) -> list[dict[str, Any]]:
        r = self.api(user, "GET", "/api/jobs", params={"limit": 100})
        r.raise_for_status()
        return list(r.json()["jobs"])

    def wait_status(self, user: str, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        """Poll the API until the job is in one of ``statuses`` (the system's truth, not the page's)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.api(user, "GET", f"/api/jobs/{job_id}").json()
            if job.get("status") in statuses:
                return dict(job)
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout}s")
            time.sleep(0.1)

    def wait_messages(self, user: str, conversation_id: str, accept: Callable[[list[dict[str, Any]]], bool],
                      timeout: float = 30) -> list[dict[str, Any]]:
        """Poll the conversation until ``accept`` takes its messages. A job reads as ended as soon as
        its terminal event is in its log; its turn is committed to the conversation after that."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.api(user, "GET", f"/api/conversations/{conversation_id}")
            r.raise_for_status()
            messages = list(r.json()["messages"])
            if accept(messages):
                return messages
            if time.monotonic() > deadline:
                raise AssertionError(f"conversation {conversation_id} still {messages} after {timeout}s")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    # Module-scoped, not session-scoped: Playwright's sync API keeps an asyncio loop running in
    # the main thread until it stops, which would break every later test that runs its own loop.
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def web_stack(chromium: Any, emulator: dict[str, str]) -> Iterator[WebStack]:
    """Fresh tables/queues, two worker processes, a sweeper, and the dev app on a free port."""
    from alfred_tools.devstack import create_dev_app

    with make_stack(emulator, ALFRED_DEMO_STEP_SECONDS=STEP_SECONDS, ALFRED_RETRY_BASE_SECONDS="0") as stack:
        stack.start_worker(concurrency=2)
        stack.start_worker(concurrency=2)
        stack.start_sweeper()
        with serve_app(create_dev_app(stack.deps, static_dir=WEB_DIR)) as base:
            yield WebStack(base_url=base, stack=stack)


@pytest.fixture
def user() -> str:
    """A user of one test: jobs of other tests never show up in its page or its API lists."""
    return f"u{uuid.uuid4().hex[:8]}"


@pytest.fixture
def context(chromium: Any, web_stack: WebStack, user: str) -> Iterator[Any]:
    """A phone-sized browser context signed in (dev mode) as this test's user."""
    ctx = chromium.new_context(viewport=VIEWPORT, device_scale_factor=2, is_mobile=True, has_touch=True,
                               base_url=web_stack.base_url)
    ctx.add_init_script(f"window.ALFRED_CONFIG = {{defaultUser: {user!r}}};")
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A page of the context; any uncaught script error on it fails the test."""
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.errors = errors
    yield pg
    assert errors == [], f"uncaught errors in the page: {errors}"


def screenshot(page: Any, name: str) -> Path:
    """Save a 360x740 screenshot of the current state under test-output/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
