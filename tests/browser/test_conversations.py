"""Every conversation on every device, the newest thing in view, steering from the composer (issue 27).

Against the real local stack of conftest.py, at 360x740: the list of conversations, their URLs and
Back (problem 1); a reply that finishes in a conversation the user left is announced where the
user is (problem 2); the question's buttons, a queued message and a streaming reply stay in view,
on a second device too (problem 5); a fresh device shows the failed and cancelled jobs of a
conversation and the answer given on the way (problem 6); "Waiting for your answer" once on a
question card (problem 8); a message sent while Alfred works joins his job (steer).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.browser.conftest import WebStack, screenshot
from tests.browser.test_conversation import expect_user_texts, new_device, send_and_finish
from tests.browser.test_web import bubble, expect_order, open_page, send

try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture fails in CI or skips locally, with the reason
    expect = None  # type: ignore[assignment]

PROMPT = "Use the 2 lb of chicken from your pantry?"


def conversation_id(page: Any) -> str:
    return str(page.evaluate("() => window.alfredDebug.conversationId"))


def url_of(conv: str) -> re.Pattern[str]:
    return re.compile(rf"#/c/{re.escape(conv)}$")


def test_conversations_are_listed_each_with_its_url_and_back_works(page: Any, user: str,
                                                                   web_stack: WebStack) -> None:
    # GIVEN a conversation with a finished turn: the page's URL is the conversation's
    open_page(page, user)
    first = send_and_finish(page, "[steps=1] chicken and rice")
    conv1 = conversation_id(page)
    expect(page).to_have_url(url_of(conv1))
    # WHEN "New chat" and a message there
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#messages li")).to_have_count(0)
    second = send_and_finish(page, "[steps=1] two quick desserts")
    conv2 = conversation_id(page)
    assert conv2 != conv1
    expect(page).to_have_url(url_of(conv2))
    # THEN the list of conversations has both, newest first, with titles; this one is marked current
    page.get_by_role("button", name="Chats").click()
    drawer = page.get_by_role("dialog", name="Conversations")
    rows = drawer.locator(".chats-list a")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("desserts")
    expect(rows.nth(1)).to_contain_text("chicken and rice")
    expect(rows.nth(0)).to_have_attribute("aria-current", "page")
    screenshot(page, "40-conversations-drawer")
    # WHEN the older one is opened from the list
    rows.nth(1).click()
    # THEN it shows (its URL too), and not the other one
    expect(drawer).to_be_hidden()
    expect(bubble(page, first).locator(".reply")).to_contain_text("chicken and rice")
    expect(bubble(page, second)).to_have_count(0)
    expect(page).to_have_url(url_of(conv1))
    # AND Back returns to the newer one, Forward to the older one
    page.go_back()
    expect(page).to_have_url(url_of(conv2))
    expect(bubble(page, second).locator(".reply")).to_contain_text("dessert")
    expect(bubble(page, first)).to_have_count(0)
    page.go_forward()
    expect(bubble(page, first).locator(".reply")).to_contain_text("chicken and rice")
    # AND the URL opens that conversation after a reload too
    page.reload()
    expect(bubble(page, first).locator(".reply")).to_contain_text("chicken and rice")
    expect(bubble(page, second)).to_have_count(0)


def test_a_reply_that_finishes_in_a_conversation_left_is_announced_with_a_link(page: Any, user: str,
                                                                               web_stack: WebStack) -> None:
    # GIVEN a job under way in one conversation (4 steps of 2 s, seen at step 1 or 2: it still runs,
    # 4 s at least, when the user leaves it)
    open_page(page, user)
    job_id = send(page, "[steps=4] [pace=2] salmon and leeks")
    conv = conversation_id(page)
    expect(bubble(page, job_id).locator(".step-text")).to_have_text(re.compile(r"Step [12] of 4"))
    # WHEN the user goes to a new chat meanwhile
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("#messages li")).to_have_count(0)
    # THEN its end is said here, visibly, with a link to it (not only to screen readers)
    toast = page.locator("#toasts .toast")
    expect(toast).to_be_visible(timeout=30_000)
    expect(toast).to_contain_text("Alfred finished in “[steps=4] [pace=2] salmon and leeks”")
    expect(page.locator("#chats-badge")).to_have_text("1")
    screenshot(page, "41-finished-elsewhere-toast")
    # AND the link opens that conversation with the reply
    toast.get_by_role("link", name=re.compile("Open")).click()
    expect(page).to_have_url(url_of(conv))
    expect(bubble(page, job_id).locator(".reply")).to_contain_text("salmon and leeks")
    expect(page.locator("#toasts .toast")).to_have_count(0)


def send_a_failing_and_a_cancelled_job(page: Any) -> tuple[str, str]:
    """A job that fails, then one cancelled while it runs (20 steps of 2 s: still running when the
    click lands, however busy the machine): their ids, once the page shows each end."""
    failed = send(page, "[fatal] stew")
    expect(bubble(page, failed).locator(".state-failed")).to_be_visible(timeout=20_000)
    stopped = send(page, "[steps=20] [pace=2] beans and greens")
    expect(bubble(page, stopped).locator(".step-text")).to_have_text(re.compile(r"Step \d+ of 20"))
    bubble(page, stopped).get_by_role("button", name="Cancel").click()
    expect(bubble(page, stopped).locator(".state-cancelled")).to_be_visible(timeout=20_000)
    return failed, stopped


def test_a_fresh_device_shows_failed_and_cancelled_turns_and_the_answer(page: Any, chromium: Any, user: str,
                                                                        web_stack: WebStack) -> None:
    # GIVEN a conversation with an answered question, a failed job and a cancelled one
    open_page(page, user)
    asked = send(page, "[steps=1] chicken from my pantry")
    card = bubble(page, asked).locator(".question")
    expect(card).to_be_visible(timeout=20_000)
    card.get_by_role("button", name="Yes").click()
    expect(bubble(page, asked).locator(".reply")).not_to_be_empty(timeout=20_000)
    expect(bubble(page, asked).locator(".working")).to_be_hidden()
    failed, stopped = send_a_failing_and_a_cancelled_job(page)
    # WHEN another device (same user, nothing stored) opens the page
    laptop_ctx = new_device(chromium, web_stack, user)
    try:
        laptop = laptop_ctx.new_page()
        laptop.goto("/")
        # THEN it shows the same turns as the sending device: the user's three messages in order,
        # the answer given on the way, the failure with Retry, the cancel
        expect_user_texts(laptop, ["[steps=1] chicken from my pantry", "[fatal] stew",
                                   "[steps=20] [pace=2] beans and greens"])
        expect(bubble(laptop, asked).locator(".answer-note")).to_have_text(
            re.compile(rf"{re.escape(PROMPT)} — (You answered|Answered on another device): Yes\."))
        expect(bubble(laptop, failed).locator(".state-failed")).to_contain_text(
            "Alfred couldn't finish: the recipe service refused this request")
        expect(bubble(laptop, failed).get_by_role("button", name="Retry")).to_be_visible()
        expect(bubble(laptop, stopped).locator(".state-cancelled")).to_be_visible()
        expect_order(laptop, [asked, asked, failed, failed, stopped, stopped])
        screenshot(laptop, "42-fresh-device-failed-and-cancelled")
    finally:
        laptop_ctx.close()


def test_an_older_conversations_failed_and_cancelled_turns_show_on_a_fresh_device(
        page: Any, chromium: Any, user: str, web_stack: WebStack) -> None:
    """However many jobs the user sent since elsewhere: the page reads the conversation's own jobs
    (GET /api/jobs?conversation_id=), not only the user's latest ones. The page's "latest N jobs"
    is 1 here (``ALFRED_CONFIG.recentJobs``) instead of 100 jobs sent."""
    # GIVEN a conversation with a failed job and a cancelled one
    open_page(page, user)
    failed, stopped = send_a_failing_and_a_cancelled_job(page)
    older = conversation_id(page)
    # AND a newer job in another conversation: the older one's jobs are not among the latest N
    page.get_by_role("button", name="New chat").click()
    send_and_finish(page, "[steps=1] two quick desserts")
    latest = web_stack.api(user, "GET", "/api/jobs?limit=1").json()["jobs"]
    assert [j["conversation_id"] for j in latest] != [older]
    # WHEN another device (nothing stored) that reads only the latest job opens the older conversation
    laptop_ctx = new_device(chromium, web_stack, user)
    laptop_ctx.add_init_script("window.ALFRED_CONFIG = {...window.ALFRED_CONFIG, recentJobs: 1};")
    try:
        laptop = laptop_ctx.new_page()
        laptop.goto(f"/#/c/{older}")
        # THEN it shows both turns as the sending device does: the failure with Retry, the cancel
        expect_user_texts(laptop, ["[fatal] stew", "[steps=20] [pace=2] beans and greens"])
        expect(bubble(laptop, failed).locator(".state-failed")).to_contain_text("Alfred couldn't finish")
        expect(bubble(laptop, failed).get_by_role("button", name="Retry")).to_be_visible()
        expect(bubble(laptop, stopped).locator(".state-cancelled")).to_be_visible()
        expect_order(laptop, [failed, failed, stopped, stopped])
    finally:
        laptop_ctx.close()


def fill_with_turns(page: Any) -> None:
    """Two finished turns: the conversation is taller than the screen."""
    send_and_finish(page, "[steps=1] chicken and rice")
    send_and_finish(page, "[steps=1] two quick desserts")


def test_the_question_comes_into_view_and_says_waiting_once(page: Any, user: str, web_stack: WebStack) -> None:
    # GIVEN a conversation taller than the screen
    open_page(page, user)
    fill_with_turns(page)
    # WHEN Alfred asks (his question card grows the bubble below the fold)
    job_id = send(page, "[steps=2] chicken from my pantry")
    b = bubble(page, job_id)
    expect(b.locator(".question")).to_be_visible(timeout=20_000)
    # THEN "Waiting for your answer" is said once (problem 8), and its buttons are in view (problem 5)
    expect(b.get_by_text("Waiting for your answer")).to_have_count(1)
    expect(b.get_by_role("button", name="Yes")).to_be_in_viewport(ratio=1)
    expect(b.get_by_role("button", name="No")).to_be_in_viewport(ratio=1)
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Paused (at step \d of 2|before his first step)"))
    b.get_by_role("button", name="No").click()
    expect(b.locator(".reply")).not_to_be_empty(timeout=20_000)


def test_a_second_device_follows_a_reply_as_it_arrives(page: Any, chromium: Any, user: str,
                                                      web_stack: WebStack) -> None:
    # GIVEN a conversation taller than the screen, and a job under way in it
    open_page(page, user)
    fill_with_turns(page)
    # (4 steps of 2 s: still under way once a second browser context has opened the page)
    job_id = send(page, "[steps=4] [pace=2] salmon and leeks")
    laptop_ctx = new_device(chromium, web_stack, user)
    try:
        # WHEN a second device opens the page while it works
        laptop = laptop_ctx.new_page()
        laptop.goto("/")
        b = bubble(laptop, job_id)
        expect(b.locator(".step-text")).to_have_text(re.compile(r"Step \d of 4"))
        expect(b.locator(".working")).to_be_visible()
        # THEN it follows the reply to its end as it arrives
        expect(b.locator(".reply")).to_contain_text("Want the full recipe", timeout=30_000)
        expect(b.locator(".reply > p").last).to_be_in_viewport(ratio=1)
        # AND on the sending device too
        expect(bubble(page, job_id).locator(".reply > p").last).to_be_in_viewport(ratio=1)
    finally:
        laptop_ctx.close()


def test_a_queued_message_stays_in_view_while_the_reply_above_it_streams(page: Any, user: str,
                                                                         web_stack: WebStack) -> None:
    # GIVEN a finished turn and a job under way
    open_page(page, user)
    send_and_finish(page, "[steps=1] chicken and rice")
    # (4 steps of 2 s, seen at step 1 or 2: still under way, 4 s at least, when the next one is sent)
    first = send(page, "[steps=4] [pace=2] salmon and leeks")
    expect(bubble(page, first).locator(".step-text")).to_have_text(re.compile(r"Step [12] of 4"))
    # WHEN the next message is queued behind it
    page.get_by_label("Queue it").check()
    second = send(page, "[steps=2] [pace=1] two quick desserts")
    expect(bubble(page, second).locator(".queued-label")).to_have_text("Queued")
    # THEN, once the reply above it has streamed in, the queued message is still in view
    expect(bubble(page, first).locator(".reply")).to_contain_text("Want the full recipe", timeout=30_000)
    expect(page.locator(f'li.msg-user[data-job-id="{second}"]')).to_be_in_viewport(ratio=1)
    # AND a user who scrolled up to read is left where they are
    page.locator("#conversation").hover()
    page.mouse.wheel(0, -5000)
    page.wait_for_function("() => document.querySelector('#conversation').scrollTop === 0")
    expect(bubble(page, second).locator(".reply")).to_contain_text("Want the full recipe", timeout=20_000)
    assert page.locator("#conversation").evaluate("c => c.scrollTop") == 0


def test_steering_a_six_step_job_at_step_two(page: Any, chromium: Any, user: str, web_stack: WebStack) -> None:
    # GIVEN a 6-step job at its second step (3 s a step: a window the wait cannot miss, and 12 s of
    # steps still to run when the message added to it lands)
    open_page(page, user)
    job_id = send(page, "[steps=6] [pace=3] chicken and rice")
    b = bubble(page, job_id)
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step 2 of 6"), timeout=20_000)
    # THEN the composer offers Stop and the three choices, "Add to this request" chosen
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.get_by_label("Add to this request")).to_be_checked()
    expect(page.get_by_label("Queue it")).not_to_be_checked()
    expect(page.get_by_label("Stop and send this instead")).not_to_be_checked()
    # WHEN a message is sent (the default: steer)
    box = page.get_by_label("Message")
    box.fill("make it vegetarian")
    box.press("Enter")
    # THEN it joins the job: the user's bubble above Alfred's, no new job
    steer = page.locator(f'li.msg-user.msg-steer[data-job-id="{job_id}"]')
    expect(steer.locator(".msg-text")).to_have_text("make it vegetarian")
    screenshot(page, "43-steered")
    expect(page.locator("#messages li.msg-alfred")).to_have_count(1)
    expect(b.locator(".reply")).not_to_be_empty(timeout=40_000)
    expect(b.locator(".working")).to_be_hidden(timeout=20_000)
    expect(steer).not_to_have_class(re.compile(r"\bis-pending\b"))
    jobs = web_stack.jobs(user)
    assert [j["job_id"] for j in jobs] == [job_id], jobs
    reply = str(b.locator(".reply").get_attribute("data-source"))
    assert "made it vegetarian" in reply and "chicken" not in reply.lower(), reply
    # AND a second device shows both user messages, then the one reply
    laptop_ctx = new_device(chromium, web_stack, user)
    try:
        laptop = laptop_ctx.new_page()
        laptop.goto("/")
        expect_user_texts(laptop, ["[steps=6] [pace=3] chicken and rice", "make it vegetarian"])
        expect(laptop.locator("#messages > li")).to_have_class(
            [re.compile(r"\bmsg-user\b"), re.compile(r"\bmsg-user\b"), re.compile(r"\bmsg-alfred\b")])
        expect(bubble(laptop, job_id).locator(".reply")).to_have_attribute("data-source", reply)
    finally:
        laptop_ctx.close()


def test_stop_in_the_composer_cancels_the_job_under_way(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[steps=20] [pace=2] beans and greens")
    expect(bubble(page, job_id).locator(".step-text")).to_have_text(re.compile(r"Step \d+ of 20"))
    page.get_by_role("button", name="Stop").click()
    expect(bubble(page, job_id).locator(".state-cancelled")).to_be_visible(timeout=20_000)
    assert web_stack.wait_status(user, job_id, {"cancelled"})["status"] == "cancelled"
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()


def test_a_steer_that_comes_too_late_goes_as_a_new_message_and_the_page_says_so(page: Any, user: str,
                                                                                 web_stack: WebStack) -> None:
    # GIVEN a job under way, and a message sent to it (steer, the default) that reaches the server
    # only once the job has ended (held on the way: the job has begun its reply, or finished)
    open_page(page, user)
    # (4 steps of 2 s, seen at step 1 or 2: the composer still steers, 4 s at least, when it is sent)
    first = send(page, "[steps=4] [pace=2] salmon and leeks")
    expect(bubble(page, first).locator(".step-text")).to_have_text(re.compile(r"Step [12] of 4"))
    expect(page.get_by_label("Add to this request")).to_be_checked()
    bodies: list[str] = []

    def late(route: Any) -> None:
        bodies.append(route.request.post_data or "")
        web_stack.wait_status(user, first, {"complete"})
        route.continue_()

    # Everything the live region says (it is one element: the next job's steps follow at once)
    page.evaluate("""() => { window.said = [];
        new MutationObserver(() => window.said.push(document.querySelector('#live').textContent))
            .observe(document.querySelector('#live'), {childList: true, characterData: true, subtree: true}); }""")
    page.route(re.compile(r"/api/chat$"), late)
    second = send(page, "and a salad", timeout=30_000)  # its answer held until the first job ended
    page.unroute_all()
    # THEN the server made it a new job (steered: false), and the page says so on it
    assert '"multitask": "steer"' in bodies[0] or '"multitask":"steer"' in bodies[0], bodies
    assert second != first
    expect(bubble(page, second).locator(".steer-note")).to_be_visible()
    expect(bubble(page, second).locator(".steer-note")).to_contain_text("went as a new message")
    page.wait_for_function("() => window.said.some(t => t.includes('went as a new one'))")
    expect(page.locator("li.msg-steer")).to_have_count(0)
    expect(bubble(page, second).locator(".reply")).not_to_be_empty(timeout=20_000)
    job = httpx.get(f"{web_stack.base_url}/api/jobs/{second}",
                    headers={"Authorization": f"Bearer {web_stack.token(user)}"}, timeout=10).json()
    assert job["message"] == "and a salad", job


def test_stop_shows_when_the_page_saw_the_job_before_its_submit_answered(page: Any, user: str,
                                                                         web_stack: WebStack) -> None:
    """On a busy machine the page's list of active jobs can bring a new chat's first job before
    the submit's answer says which conversation it is: the bubble waits aside, then joins the
    conversation. Stop must show for it then too (CI stop 30 and a run beside other work: it never did)."""
    open_page(page, user)

    def seen_first(route: Any) -> None:
        answer = route.fetch()  # the job exists now
        page.evaluate("() => window.dispatchEvent(new Event('online'))")  # the page lists active jobs
        page.wait_for_function("() => window.alfredDebug.activeJobs.size > 0")
        route.fulfill(response=answer)

    page.route(re.compile(r"/api/chat$"), seen_first)
    job_id = send(page, "[steps=20] [pace=2] beans and greens")
    page.unroute_all()
    expect(bubble(page, job_id).locator(".step-text")).to_have_text(re.compile(r"Step \d+ of 20"))
    page.get_by_role("button", name="Stop").click()
    expect(bubble(page, job_id).locator(".state-cancelled")).to_be_visible(timeout=20_000)
