"""The page's main states at phone size, light and dark, saved as the screenshots of docs/web.md.

Each state is asserted (what shows, by text and role) before its picture is taken: the empty
conversation, a completed reply (its numbered list rendered as an ``ol``), a question card, a
failed job with Retry, a job running, a second message queued behind it, a message added to a
job under way (steer), a reply that finished in a conversation left, and the list of conversations. The pictures go to
``docs/web/{scheme}-{state}.png`` (committed, small) and ``test-output/screenshots/``.

Also here: a job the server no longer knows (404) stops spinning and says it is gone.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ROOT, WebStack, screenshot
from tests.browser.test_web import bubble, open_page, send

try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture fails in CI or skips locally, with the reason
    expect = None  # type: ignore[assignment]

DOCS_SCREENS = ROOT / "docs" / "web"
PHONE = {"width": 390, "height": 844}
MAX_PNG_BYTES = 150_000
PROMPT = "Use the 2 lb of chicken from your pantry?"


@pytest.fixture(params=["light", "dark"])
def scheme(request: Any) -> str:
    return str(request.param)


@pytest.fixture
def phone(chromium: Any, web_stack: WebStack, user: str, scheme: str) -> Iterator[Any]:
    """A 390x844 phone page in the given colour scheme, signed in as this test's user."""
    ctx = chromium.new_context(viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True,
                               color_scheme=scheme, base_url=web_stack.base_url)
    ctx.add_init_script(f"window.ALFRED_CONFIG = {{defaultUser: {user!r}}};")
    ctx.set_default_timeout(15_000)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
        assert errors == [], f"uncaught errors in the page: {errors}"
    finally:
        ctx.close()


def shoot(page: Any, scheme: str, state: str) -> Path:
    """The docs picture of a state (docs/web/SCHEME-STATE.png), also under test-output/screenshots."""
    # Nothing mid-transition in the picture: the bar's width and fades settle first.
    page.evaluate("""() => Promise.all(document.getAnimations()
        .filter(a => a.effect && a.effect.getComputedTiming().endTime !== Infinity)  // not the spinner
        .map(a => a.finished.catch(() => null)))""")
    path = screenshot(page, f"30-{scheme}-{state}")
    DOCS_SCREENS.mkdir(parents=True, exist_ok=True)
    target = DOCS_SCREENS / f"{scheme}-{state}.png"
    shutil.copyfile(path, target)
    assert target.stat().st_size < MAX_PNG_BYTES, f"{target.name}: {target.stat().st_size} bytes"
    return target


def send_new(page: Any, text: str) -> Any:
    """Send with Enter; the new Alfred bubble (a locator bound to its job id)."""
    return bubble(page, send(page, text))


def new_chat(page: Any) -> None:
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#messages li")).to_have_count(0)


def test_screens_of_each_state(phone: Any, user: str, scheme: str) -> None:
    page = phone
    open_page(page, user)
    # The page follows the device's scheme (its background is dark in dark mode, light otherwise)
    dark_bg = page.evaluate("""() => {
        const [r, g, b] = getComputedStyle(document.documentElement).backgroundColor.match(/\\d+/g).map(Number);
        return (r + g + b) / 3 < 128;
    }""")
    assert dark_bg is (scheme == "dark")

    # Empty: the box and Send, nothing in the conversation
    expect(page.locator("#messages li")).to_have_count(0)
    expect(page.get_by_label("Message")).to_be_editable()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    shoot(page, scheme, "empty")

    # A completed reply: the demo agent's numbered ideas render as a real list, between paragraphs
    b = send_new(page, "[steps=2] chicken and rice")
    reply = b.locator(".reply")
    expect(reply).to_contain_text("Want the full recipe for one of them?", timeout=20_000)
    expect(b.locator(".working")).to_be_hidden()
    expect(reply.locator("> p").first).to_have_text("Here are 3 recipes with chicken and rice:")
    items = reply.locator("> ol > li")
    expect(items).to_have_count(3)
    for text in items.all_text_contents():
        assert not re.match(r"\s*\d+[.)]", text), f"the list's numbers are the ol's, not in the text: {text!r}"
    expect(reply.locator("> ul")).to_have_count(0)
    expect(reply.locator("> p").last).to_have_text("Want the full recipe for one of them?")
    shoot(page, scheme, "reply")

    # A question card: the prompt, Yes and No, "Waiting for your answer"
    new_chat(page)
    b = send_new(page, "[steps=2] chicken from my pantry")
    card = b.locator(".question")
    expect(card).to_be_visible(timeout=20_000)
    expect(card.locator(".question-prompt")).to_have_text(PROMPT)
    expect(card.get_by_role("button", name="Yes")).to_be_visible()
    expect(card.get_by_role("button", name="No")).to_be_visible()
    expect(b.locator(".working-text")).to_have_text("Waiting for your answer")
    shoot(page, scheme, "question")
    card.get_by_role("button", name="No").click()
    expect(b.locator(".reply")).not_to_be_empty(timeout=20_000)

    # A failed job: the error in its box, and Retry
    new_chat(page)
    b = send_new(page, "[fatal] stew")
    failed = b.locator(".state-failed")
    expect(failed).to_be_visible(timeout=20_000)
    expect(failed).to_contain_text("Alfred couldn't finish: the recipe service refused this request")
    expect(b.get_by_role("button", name="Retry")).to_be_visible()
    expect(b.locator(".working")).to_be_hidden()
    shoot(page, scheme, "failed")

    # A job running: the panel, the bar, "Step k of 6", Cancel (2 s a step: seen at step 3 at the
    # latest, it still runs, 6 s at least, when the next message is queued behind it)
    new_chat(page)
    first = send_new(page, "[steps=6] [pace=2] salmon and leeks")
    expect(first.get_by_text("Alfred is still working...")).to_be_visible()
    expect(first.locator(".step-text")).to_have_text(re.compile(r"Step [1-3] of 6"))
    expect(first.get_by_role("progressbar")).to_be_visible()
    expect(first.get_by_role("button", name="Cancel")).to_be_visible()
    shoot(page, scheme, "running")

    # A second message while it runs, with "Queue it" chosen: queued under it, muted, with its own Cancel
    page.get_by_label("Queue it").check()
    second = send_new(page, "[steps=1] two quick desserts")
    expect(second.locator(".queued-label")).to_have_text("Queued")
    expect(second.locator(".queued")).to_contain_text("Starts by itself when Alfred has finished your earlier message")
    expect(second.get_by_role("button", name="Cancel")).to_be_visible()
    expect(first.locator(".step-text")).to_have_text(re.compile(r"Step [1-5] of 6"))
    shoot(page, scheme, "queued")

    # A message added to a job under way (steer, the default): the user's bubble above Alfred's,
    # the composer's choices and Stop under the conversation
    new_chat(page)
    steered = send_new(page, "[steps=6] [pace=2] chicken and rice")  # still running when added to
    expect(steered.locator(".step-text")).to_have_text(re.compile(r"Step [1-3] of 6"))
    expect(page.get_by_label("Add to this request")).to_be_checked()
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    box = page.get_by_label("Message")
    box.fill("make it vegetarian")
    box.press("Enter")
    expect(page.locator("li.msg-steer .msg-text")).to_have_text("make it vegetarian")
    expect(page.locator("#messages li.msg-alfred")).to_have_count(1)
    shoot(page, scheme, "steered")

    # A reply that finished in a conversation left: said here, with a link to it
    new_chat(page)
    toast = page.locator("#toasts .toast").filter(has_text="chicken and rice")
    expect(toast).to_be_visible(timeout=30_000)
    expect(toast.get_by_role("link", name=re.compile("Open"))).to_be_visible()
    shoot(page, scheme, "finished-elsewhere")

    # The list of conversations, newest first (the four above and the queued one's)
    page.get_by_role("button", name="Chats").click()
    rows = page.get_by_role("dialog", name="Conversations").locator(".chats-list a")
    expect(rows.filter(has_text="[steps=6] [pace=2] chicken and rice")).to_have_count(1)
    expect(rows.filter(has_text="salmon and leeks")).to_have_count(1)
    assert rows.count() >= 4
    shoot(page, scheme, "conversations")


def test_a_job_the_server_no_longer_knows_stops_spinning_and_says_it_is_gone(page: Any, user: str,
                                                                             web_stack: WebStack) -> None:
    # GIVEN a job running on the page
    open_page(page, user)
    b = send_new(page, "[steps=20] [pace=2] beans and greens")
    job_id = str(b.get_attribute("data-job-id"))
    expect(b.get_by_text("Alfred is still working...")).to_be_visible()
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step \d+ of 20"))
    # WHEN the server forgets it (it expired, or `dev` restarted with its in-memory emulator):
    # the job and its events are 404, and the active list no longer has it
    not_found = json.dumps({"error": {"code": "not_found", "message": "No such job."}})
    hits: list[str] = []

    def gone(route: Any) -> None:
        hits.append(route.request.url)
        route.fulfill(status=404, content_type="application/json", body=not_found)

    page.route(re.compile(rf"/api/jobs/{re.escape(job_id)}(/events)?(\?.*)?$"), gone)
    page.route(re.compile(r"/api/jobs\?(.*&)?status=active"),
               lambda route: route.fulfill(status=200, content_type="application/json",
                                           body=json.dumps({"jobs": []})))
    # AND the page is opened again (a reload, the phone unlocked): it knows the job from before
    page.reload()
    # THEN its bubble stops spinning and says the job is gone
    expect(b.locator(".state-gone")).to_be_visible()
    expect(b.locator(".state-gone")).to_contain_text("This job is gone: the server no longer has it")
    expect(b).to_have_class(re.compile(r"\bis-gone\b"))
    expect(b).not_to_have_class(re.compile(r"\bis-active\b"))
    expect(b.locator(".working")).to_be_hidden()
    expect(b.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator(f'li.msg-user[data-job-id="{job_id}"] .msg-text')).to_have_text(
        "[steps=20] [pace=2] beans and greens")
    assert hits, "the page never asked for the job"
    screenshot(page, "31-gone")
    page.unroute_all()
    web_stack.api(user, "POST", f"/api/jobs/{job_id}/cancel")
