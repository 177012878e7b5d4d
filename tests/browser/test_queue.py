"""Sending while Alfred works: a message sent while an earlier job of the conversation is still
active is queued on the server (multitask "enqueue", the default), shown "Queued" on the page,
and starts by itself after the earlier one; an interrupted job and the per-user job limit read
clearly. Against the real local stack of conftest.py, at 360x740.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from tests.browser.conftest import WebStack, screenshot
from tests.browser.test_web import TERMINAL, assert_each_step_once, bubble, expect_order, open_page, seen_seqs, send

try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture fails in CI or skips locally, with the reason
    expect = None  # type: ignore[assignment]


def when(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def user_bubble(page: Any, job_id: str) -> Any:
    return page.locator(f'li.msg-user[data-job-id="{job_id}"]')


def test_message_sent_while_alfred_works_is_queued_then_runs(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    # GIVEN a long job under way (6 steps of 2 s: still running when the next message lands, and
    # after the reload below, however busy the machine)
    first = send(page, "[steps=6] [pace=2] chicken and rice")
    b1 = bubble(page, first)
    expect(b1.get_by_text("Alfred is still working...")).to_be_visible()
    # WHEN a second message is sent at once, in the same conversation (the box is not locked)
    box = page.get_by_label("Message")
    expect(box).to_be_editable()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # (a message sent while Alfred works joins his job by default: "Queue it" makes it a job of its own)
    page.get_by_label("Queue it").check()
    second = send(page, "[steps=3] [pace=2] and a salad")
    assert second != first
    b2 = bubble(page, second)
    # THEN it shows as queued under the running one, which keeps working
    expect(b2.locator(".queued-label")).to_have_text("Queued")
    expect(b2.locator(".queued")).to_contain_text("Starts by itself when Alfred has finished your earlier message")
    expect(b2.locator(".bar")).to_be_hidden()
    expect(user_bubble(page, second)).to_have_class(re.compile(r"\bis-queued\b"))
    expect(b1.locator(".working-title")).to_be_visible()
    expect(b1.locator(".queued")).to_be_hidden()
    expect_order(page, [first, first, second, second])
    jobs = {j["job_id"]: j for j in web_stack.jobs(user)}
    assert jobs[first]["conversation_id"] == jobs[second]["conversation_id"]
    assert jobs[second]["status"] == "pending"
    screenshot(page, "20-queued-under-the-running-one")
    # AND a reload while it waits shows it queued again (from what this device remembers)
    page.reload()
    expect(bubble(page, second).locator(".queued-label")).to_have_text("Queued")
    b1, b2 = bubble(page, first), bubble(page, second)
    # WHEN the first one ends, THEN the second starts by itself: the label goes, its progress shows
    expect(b1.locator(".reply")).to_contain_text("Here are 3 recipes with chicken and rice", timeout=30_000)
    # (3 steps of 2 s, seen at step 1 or 2: still working, 2 s at least, for the checks that follow)
    expect(b2.locator(".step-text")).to_have_text(re.compile(r"Step [12] of 3"), timeout=20_000)
    expect(b2.locator(".queued")).to_be_hidden()
    expect(b2.locator(".working-title")).to_have_text("Alfred is still working...")
    expect(user_bubble(page, second)).not_to_have_class(re.compile(r"\bis-queued\b"))
    screenshot(page, "21-queued-one-running")
    expect(b2.locator(".reply")).to_contain_text("Here is 1 salad with what you have", timeout=20_000)
    expect(b2.locator(".reply")).to_contain_text("Want the full recipe?", timeout=20_000)  # the whole reply
    assert_each_step_once(page, second, 3)
    seqs = seen_seqs(page, second)
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    # AND both replies are there, in order, on the page and in the system
    replies = page.locator("li.msg-alfred .reply").all_text_contents()
    assert len(replies) == 2 and "chicken and rice" in replies[0] and "salad" in replies[1], replies
    one = web_stack.wait_status(user, first, TERMINAL)
    two = web_stack.wait_status(user, second, TERMINAL)
    assert (one["status"], two["status"]) == ("complete", "complete")
    assert when(two["started_at"]) >= when(one["completed_at"]), (one, two)
    messages = web_stack.wait_messages(user, one["conversation_id"], lambda ms: len(ms) >= 4)
    assert [(m["role"], m["job_id"]) for m in messages] == [
        ("user", first), ("assistant", first), ("user", second), ("assistant", second)]
    screenshot(page, "22-both-replies-in-order")


def test_a_job_interrupted_by_the_next_message_says_so(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    # GIVEN a long job (20 steps of 3 s: it cannot end on its own during the test)
    first = send(page, "[steps=20] [pace=3] slow stew")
    b1 = bubble(page, first)
    expect(b1.locator(".step-text")).to_have_text(re.compile(r"Step \d+ of 20"))
    conversation = web_stack.api(user, "GET", f"/api/jobs/{first}").json()["conversation_id"]
    # WHEN another device sends the next message of the conversation with multitask "interrupt"
    r = web_stack.api(user, "POST", "/api/chat", json={"message": "[steps=1] just toast",
                                                       "conversation_id": conversation, "multitask": "interrupt"})
    assert r.status_code == 202, r.text
    # THEN the page shows the first job as interrupted by it, not as a plain cancel
    expect(b1.locator(".state-interrupted")).to_have_text(
        "Interrupted by your next message — Alfred moved on to it.")
    expect(b1.locator(".state-cancelled")).to_be_hidden()
    expect(b1.locator(".working")).to_be_hidden()
    expect(page.locator("#live")).to_have_text("Interrupted by your next message.")
    job = web_stack.wait_status(user, first, TERMINAL)
    assert job["status"] == "cancelled"
    screenshot(page, "23-interrupted")
    assert web_stack.wait_status(user, r.json()["job_id"], TERMINAL)["status"] == "complete"


def test_too_many_jobs_is_an_inline_message_and_the_draft_stays(page: Any, user: str,
                                                                 web_stack: WebStack) -> None:
    open_page(page, user)
    # GIVEN a user with as many jobs under way as allowed (20): a long one, the others queued behind it
    jobs: list[str] = []
    conversation = None
    try:
        for i in range(20):
            body: dict[str, Any] = {"message": "[steps=20] [pace=3] slow stew" if i == 0 else f"then dish {i}"}
            if conversation:
                body["conversation_id"] = conversation
            r = web_stack.api(user, "POST", "/api/chat", json=body)
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
            conversation = r.json()["conversation_id"]
        # WHEN one more message is sent from the page
        box = page.get_by_label("Message")
        box.fill("one more soup")
        box.press("Enter")
        # THEN it says so next to the message box, with when to try again, and keeps the draft
        note = page.locator("#composer-note")
        expect(note).to_be_visible()
        expect(note).to_contain_text("Too many requests under way")
        expect(note).to_contain_text(re.compile(r"try in \d+ s"))
        expect(note).to_contain_text("Your message is still here.")
        expect(box).to_have_value("one more soup")
        expect(page.locator("li.msg-alfred")).to_have_count(0)
        assert len(web_stack.jobs(user)) == 20
        screenshot(page, "24-too-many-jobs")
    finally:
        for job_id in reversed(jobs):  # the queued ones first: cancelling them starts nothing
            web_stack.api(user, "POST", f"/api/jobs/{job_id}/cancel")
    # AND once jobs have ended, the same message goes through (and the note goes away)
    web_stack.wait_status(user, jobs[0], TERMINAL)
    page.get_by_role("button", name="Send").click()
    expect(page.locator("li.msg-alfred")).to_have_count(1)
    expect(page.locator("#composer-note")).to_be_hidden()
    job_id = str(page.locator("li.msg-alfred").get_attribute("data-job-id"))
    web_stack.wait_status(user, job_id, TERMINAL)
