"""Issue 27 on the page: a reply stopped while it is written stays, marked "Stopped", on the device
that stopped it and on a second one; the job's Steps details show its timeline (bars to scale,
tokens, cost, the cancel), readable at 390 px in light and dark. Against conftest.py's stack."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import ROOT, WebStack, screenshot
from tests.browser.test_conversation import new_device
from tests.browser.test_web import TERMINAL, bubble, open_page, send

try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture fails in CI or skips locally, with the reason
    expect = None  # type: ignore[assignment]

DOCS_WEB = ROOT / "docs" / "web"


def test_a_stopped_reply_stays_marked_on_both_devices_and_the_timeline_shows_it(
        page: Any, chromium: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    # GIVEN a job whose reply takes seconds to write (8: Cancel lands while it is written, however
    # busy the machine)
    job_id = send(page, "[steps=1] [pace=2] [reply=8] mushroom risotto")
    b = bubble(page, job_id)
    # WHEN the user stops it while the reply is being written
    expect(b.locator(".reply")).not_to_be_empty(timeout=30_000)
    b.get_by_role("button", name="Cancel").click()
    assert web_stack.wait_status(user, job_id, TERMINAL)["status"] == "cancelled"
    # THEN the words written so far stay, marked Stopped (not "Cancelled — Alfred stopped this one")
    expect(b.locator(".state-stopped")).to_have_text("Stopped")
    expect(b.locator(".state-stopped")).to_be_visible()
    expect(b.locator(".state-cancelled")).to_be_hidden()
    expect(b.locator(".reply")).to_be_visible()
    conv_id = web_stack.api(user, "GET", f"/api/jobs/{job_id}").json()["conversation_id"]
    messages = web_stack.wait_messages(user, conv_id, lambda ms: bool(ms) and ms[-1]["role"] == "assistant")
    stopped = messages[-1]
    assert stopped["stopped"] is True and stopped["job_id"] == job_id, stopped
    expect(b.locator(".reply")).to_have_attribute("data-source", stopped["text"])
    assert stopped["text"].strip() and len(stopped["text"]) < 400

    # AND a second device shows the same stopped reply, marked, from the committed conversation
    laptop_ctx = new_device(chromium, web_stack, user)
    try:
        laptop = laptop_ctx.new_page()
        laptop.goto("/")
        lb = bubble(laptop, job_id)
        expect(lb.locator(".reply")).to_have_attribute("data-source", stopped["text"])
        expect(lb.locator(".state-stopped")).to_be_visible()
        expect(lb.locator(".state-stopped")).to_have_text("Stopped")
        # ... and its timeline, though this device never saw the job's plan
        lb.locator(".steps-summary").click()
        expect(lb.locator(".timeline .tl-row")).to_have_count(4)
        expect(lb.locator(".timeline .tl-cancel")).to_have_text("Cancelled: you stopped it")
    finally:
        laptop_ctx.close()

    # AND the Steps details, opened, show the job's timeline from the server
    page.set_viewport_size({"width": 390, "height": 844})
    b.locator(".steps-summary").click()
    timeline = b.locator(".timeline")
    expect(timeline).to_be_visible()
    expect(b.locator(".steps")).to_be_hidden()
    rows = timeline.locator(".tl-row")
    expect(rows).to_have_count(4)  # queued, thinking, step 1, reply
    names = [n.strip() for n in timeline.locator(".tl-name").all_text_contents()]
    assert names == ["Queued", "Thinking", "Step 1 · Search risottos with mushrooms", "Reply"], names
    expect(timeline.locator(".tl-cancel")).to_have_text("Cancelled: you stopped it")
    expect(timeline.locator(".tl-totals")).to_contain_text(re.compile(r"in all · .*tokens · \$0\.\d{4}"))
    expect(timeline.locator(".tl-reply .tl-meta")).to_contain_text("out tokens")
    # the bars are to scale: the 2 s step's is wider than thinking's (0.4 s), and none overflows its track
    widths = timeline.locator(".tl-bar").evaluate_all(
        "bars => bars.map(b => [b.getBoundingClientRect().width, b.parentElement.getBoundingClientRect().width,"
        " b.getBoundingClientRect().right - b.parentElement.getBoundingClientRect().right])")
    assert widths[2][0] > 3 * widths[1][0], widths
    assert all(over <= 1 for _, _, over in widths), widths
    # readable at 390 px: nothing wider than the page
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    b.scroll_into_view_if_needed()
    DOCS_WEB.mkdir(parents=True, exist_ok=True)
    b.screenshot(path=str(DOCS_WEB / "light-timeline.png"))
    page.emulate_media(color_scheme="dark")
    b.screenshot(path=str(DOCS_WEB / "dark-timeline.png"))
    screenshot(page, "27-stopped-and-timeline")
