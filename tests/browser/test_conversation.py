"""One conversation on every device (issue 18): the server's conversation is the truth.

A second device sees the same turns in the same order; a job sent from the CLI (the API) shows
with its own text; a message sent just before the tab closes comes back at the bottom; a message
sent offline waits in the outbox and goes on reconnect; a failed job can be retried.
"""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import VIEWPORT, WebStack, screenshot
from tests.browser.test_web import TERMINAL, bubble, expect_order, open_page, send

try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture fails in CI or skips locally, with the reason
    expect = None  # type: ignore[assignment]


def user_texts(page: Any) -> list[str]:
    return [t.strip() for t in page.locator("#messages li.msg-user .msg-text").all_text_contents()]


def expect_user_texts(page: Any, texts: list[str]) -> None:
    """Wait until the user's messages read these, top to bottom. Not a count and one read: an entry
    can be on the page before its text (a job another device sent, its message read after)."""
    expect(page.locator("#messages li.msg-user .msg-text")).to_have_text(texts)


def jobs_with(web_stack: WebStack, user: str, message: str) -> list[dict[str, Any]]:
    return [j for j in web_stack.jobs(user) if j["message"] == message]


def new_device(chromium: Any, web_stack: WebStack, user: str) -> Any:
    ctx = chromium.new_context(viewport=VIEWPORT, device_scale_factor=2, is_mobile=True, has_touch=True,
                               base_url=web_stack.base_url)
    ctx.add_init_script(f"window.ALFRED_CONFIG = {{defaultUser: {user!r}}};")
    ctx.set_default_timeout(15_000)
    return ctx


def send_and_finish(page: Any, text: str) -> str:
    job_id = send(page, text)
    expect(bubble(page, job_id).locator(".reply")).not_to_be_empty(timeout=20_000)
    expect(bubble(page, job_id).locator(".working")).to_be_hidden()
    return job_id


def test_a_second_device_sees_the_same_ordered_conversation(page: Any, chromium: Any, user: str,
                                                           web_stack: WebStack) -> None:
    # GIVEN two finished turns on the phone
    open_page(page, user)
    first = send_and_finish(page, "[steps=1] chicken and rice")
    second = send_and_finish(page, "[steps=1] two quick desserts")
    # The messages say who said what, for screen readers
    expect(page.locator(f'li.msg-user[data-job-id="{first}"] .speaker')).to_have_text("You: ")
    expect(bubble(page, first).locator(".speaker")).to_have_text("Alfred: ")
    laptop_ctx = new_device(chromium, web_stack, user)
    try:
        laptop = laptop_ctx.new_page()
        # WHEN a second device (same user, nothing stored) opens the page
        laptop.goto("/")
        # THEN it shows the same conversation, in the same order, with the replies
        expect_user_texts(laptop, ["[steps=1] chicken and rice", "[steps=1] two quick desserts"])
        expect_order(laptop, [first, first, second, second])
        expect(bubble(laptop, second).locator(".reply")).to_contain_text("dessert")
        # WHEN the laptop sends the next message, and the phone reloads
        third = send(laptop, "[steps=2] salmon and leeks")
        expect(bubble(laptop, third).locator(".step-text")).to_have_text(re.compile(r"Step \d of 2"))
        # the plan's rows stay folded while it runs: the step line says where Alfred is
        assert bubble(laptop, third).locator(".steps-box").evaluate("d => d.open") is False
        page.reload()
        # THEN the phone shows it running, with its own text, at the bottom
        texts = ["[steps=1] chicken and rice", "[steps=1] two quick desserts", "[steps=2] salmon and leeks"]
        expect_user_texts(page, texts)
        expect(bubble(page, third).locator(".reply")).to_contain_text("salmon", timeout=20_000)
        expect_user_texts(laptop, texts)
        screenshot(laptop, "20-second-device")
    finally:
        laptop_ctx.close()


def test_a_job_sent_from_the_cli_shows_with_its_text(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    first = send_and_finish(page, "[steps=1] lentils")
    conversation = web_stack.api(user, "GET", f"/api/jobs/{first}").json()["conversation_id"]
    # WHEN the CLI (the API) sends the next message of the conversation
    r = web_stack.api(user, "POST", "/api/chat", json={"message": "[steps=3] beans from the cli",
                                                       "conversation_id": conversation})
    assert r.status_code in (200, 201, 202), r.text
    cli_job = r.json()["job_id"]
    # AND the page is opened again (a reload, or the phone unlocked)
    page.reload()
    # THEN the job shows with its text (not "sent from another device"), after the earlier turn
    expect(page.locator(f'li.msg-user[data-job-id="{cli_job}"] .msg-text')).to_have_text("[steps=3] beans from the cli")
    expect_user_texts(page, ["[steps=1] lentils", "[steps=3] beans from the cli"])
    expect(page.get_by_text("Message sent from another device")).to_have_count(0)
    expect(bubble(page, cli_job).locator(".reply")).to_contain_text("beans", timeout=20_000)


def test_a_message_sent_just_before_the_tab_closes_comes_back_at_the_bottom(context: Any, user: str,
                                                                           web_stack: WebStack) -> None:
    page = context.new_page()
    open_page(page, user)
    sent = ["[steps=1] tofu and broccoli"]
    send_and_finish(page, sent[0])
    for text in ["[steps=1] eggs and spinach", "[steps=1] leek soup"]:
        # WHEN a message is sent and the tab closed at once (tap Send, lock the phone)
        box = page.get_by_label("Message")
        box.fill(text)
        box.press("Enter")
        page.close()
        # THEN on the next visit it is there, at the bottom, after every earlier turn, once
        page = context.new_page()
        page.goto("/")
        sent.append(text)
        expect_user_texts(page, sent)
        # ... and goes (again, from the outbox, if the closing tab cut it off): its own job's bubble,
        # not the turn before's, is the last, and it runs to its reply; the server has that one job
        expect(page.locator("#messages li.msg-user.is-unsent")).to_have_count(0, timeout=20_000)
        mine = page.locator("#messages li.msg-user").filter(has_text=text)
        expect(mine).to_have_attribute("data-job-id", re.compile(r".+"))
        job_id = str(mine.get_attribute("data-job-id"))
        expect(page.locator("#messages li.msg-alfred").last).to_have_attribute("data-job-id", job_id)
        expect(bubble(page, job_id).locator(".reply")).not_to_be_empty(timeout=20_000)
        # ended, not only replying: the next message, sent while it runs, would be added to it
        expect(bubble(page, job_id).locator(".working")).to_be_hidden(timeout=20_000)
        assert [j["job_id"] for j in jobs_with(web_stack, user, text)] == [job_id]
    expect_user_texts(page, sent)


def test_a_message_sent_offline_is_queued_and_sent_on_reconnect(page: Any, context: Any, user: str,
                                                                web_stack: WebStack) -> None:
    open_page(page, user)
    # WHEN the network goes away with nothing under way, and a message is sent
    context.set_offline(True)
    banner = page.locator("#offline-banner")
    expect(banner).to_be_visible()
    expect(banner).not_to_contain_text("keeps working")  # nothing runs: it does not claim so
    box = page.get_by_label("Message")
    box.fill("[steps=1] offline pasta")
    box.press("Enter")
    # THEN it waits on the page, the box is free, one banner only, and nothing reached the server
    waiting = page.locator("li.msg-user.is-unsent")
    expect(waiting).to_contain_text("Not sent yet")
    expect(box).to_have_value("")
    expect(banner).to_contain_text("1 message waits")
    expect(page.locator(".banner:visible")).to_have_count(1)
    screenshot(page, "21-offline-queued")
    assert jobs_with(web_stack, user, "[steps=1] offline pasta") == []
    # WHEN the network comes back
    context.set_offline(False)
    # THEN it is sent (once) and runs to its reply
    expect(waiting).to_have_count(0)
    last = page.locator("#messages li.msg-alfred").last  # the only one: nothing else was sent
    expect(last.locator(".reply")).to_contain_text("pasta", timeout=20_000)
    expect_user_texts(page, ["[steps=1] offline pasta"])
    assert len(jobs_with(web_stack, user, "[steps=1] offline pasta")) == 1
    expect(banner).to_be_hidden()


def test_retry_a_failed_job(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[fatal] stew")
    b = bubble(page, job_id)
    expect(b.locator(".state-failed")).to_be_visible(timeout=20_000)
    # WHEN Retry is tapped
    b.get_by_role("button", name="Retry").click()
    # THEN the same message goes again as a new job of the same conversation, shown below
    expect(page.locator("#messages li.msg-alfred")).to_have_count(2)
    retried = str(page.locator("#messages li.msg-alfred").last.get_attribute("data-job-id"))
    assert retried != job_id
    jobs = jobs_with(web_stack, user, "[fatal] stew")
    assert {j["job_id"] for j in jobs} == {job_id, retried}
    assert len({j["conversation_id"] for j in jobs}) == 1
    assert web_stack.wait_status(user, retried, TERMINAL)["status"] == "failed"
    expect(bubble(page, retried).locator(".state-failed")).to_be_visible()


def test_new_chat_starts_an_empty_conversation(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    first = send_and_finish(page, "[steps=1] rice")
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#messages li")).to_have_count(0)
    second = send_and_finish(page, "[steps=1] **bold** noodles")
    a = web_stack.api(user, "GET", f"/api/jobs/{first}").json()["conversation_id"]
    b = web_stack.api(user, "GET", f"/api/jobs/{second}").json()["conversation_id"]
    assert a != b
    # a reload stays on the new conversation (the last one this browser used)
    page.reload()
    expect_user_texts(page, ["[steps=1] **bold** noodles"])
