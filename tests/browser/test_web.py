"""The seed's phone experience in a real browser: lock the phone, come back, never a blank screen.

Each test drives the page at 360x740 against a real local stack (see conftest.py) and saves a
screenshot of the state it reaches under test-output/screenshots/.
"""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import WebStack, screenshot

try:
    from playwright.sync_api import TimeoutError as PageTimeout
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture fails in CI or skips locally, with the reason
    expect = None  # type: ignore[assignment]
    PageTimeout = TimeoutError  # type: ignore[assignment,misc]

TERMINAL = {"complete", "failed", "cancelled"}


def open_page(page: Any, user: str) -> None:
    page.goto("/")
    expect(page.locator("#account-name")).to_have_text(user)


# The ids of the jobs whose user message reads ``text`` and whose Alfred bubble is in the
# conversation (not a message added to a job under way), or null while there is none.
JOBS_OF_TEXT = """text => {
    const ids = [...document.querySelectorAll('#messages li.msg-user:not(.msg-steer)[data-job-id]')]
        .filter(li => li.querySelector('.msg-text')?.textContent.trim() === text)
        .map(li => li.dataset.jobId)
        .filter(id => document.querySelector(`#messages li.msg-alfred[data-job-id="${CSS.escape(id)}"]`));
    return ids.length ? ids : null;
}"""


def send(page: Any, text: str, timeout: float | None = None) -> str:
    """Type a message, press Enter, return the id of its job: the bubble of the job whose message it
    is. Not ``.last``, a count or "a bubble not there before": a bubble already on the page (the
    turn before's, or one a reloaded page was still bringing in) satisfied those at once, and the
    test went on with the wrong job. A test sends each text once in a conversation: the same text
    twice would be two bubbles, and fails here rather than picking one."""
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")
    ids = page.wait_for_function(JOBS_OF_TEXT, arg=text, timeout=timeout).json_value()
    assert len(ids) == 1, (text, ids)
    return str(ids[0])


def expect_order(page: Any, job_ids_in_order: list[str]) -> None:
    """Wait until the conversation's entries (each user message and Alfred's bubble) carry these job
    ids, top to bottom. A wait, not one read: the page places a turn again when its job ends."""
    order = "ids => JSON.stringify([...document.querySelectorAll('#messages > li')].map(e => e.dataset.jobId))" \
            " === JSON.stringify(ids)"
    try:
        page.wait_for_function(order, arg=job_ids_in_order)
    except PageTimeout as exc:  # say what the page shows instead
        shown = page.locator("#messages > li").evaluate_all("els => els.map(e => e.dataset.jobId)")
        raise AssertionError(f"the conversation's order is {shown}, not {job_ids_in_order}") from exc


def bubble(page: Any, job_id: str) -> Any:
    return page.locator(f'li.msg-alfred[data-job-id="{job_id}"]')


def assert_each_step_once(page: Any, job_id: str, total: int) -> None:
    steps = bubble(page, job_id).locator(".steps .step")
    expect(steps).to_have_count(total)
    labels = [t.strip() for t in steps.locator(".step-name").all_text_contents()]
    assert len(set(labels)) == total, labels
    expect(steps.and_(page.locator('[data-state="done"]'))).to_have_count(total)


def seen_seqs(page: Any, job_id: str) -> list[int]:
    return list(page.evaluate("id => (window.alfredDebug.seen[id] || [])", job_id))


def test_send_shows_steps_then_reply(page: Any, user: str, web_stack: WebStack) -> None:
    # GIVEN the page, signed in at once as the default local user
    open_page(page, user)
    screenshot(page, "01-empty")
    # WHEN a message is sent with Enter
    job_id = send(page, "[steps=3] chicken and rice")
    b = bubble(page, job_id)
    # THEN the working panel shows the steps as they run
    expect(b.get_by_text("Alfred is still working...")).to_be_visible()
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step 1 of 3"))
    expect(page.locator("#live")).to_contain_text("Step 1 of 3")
    screenshot(page, "02-working-step-1")
    # AND then the reply, with the panel gone and each step shown once
    expect(b.locator(".reply")).to_contain_text("Here are 3 recipes with chicken and rice", timeout=20_000)
    expect(b.locator(".working")).to_be_hidden()
    assert_each_step_once(page, job_id, 3)
    seqs = seen_seqs(page, job_id)
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert web_stack.wait_status(user, job_id, TERMINAL)["status"] == "complete"
    assert page.evaluate("id => window.alfredDebug.modes[id]", job_id) == ["sse"]
    screenshot(page, "03-complete")
    assert page.errors == []


def test_offline_mid_job_then_back(page: Any, context: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    # 4 steps of 2 s: seen at step 1 or 2, it still runs (4 s at least) when the network goes
    job_id = send(page, "[steps=4] [pace=2] salmon and leeks")
    b = bubble(page, job_id)
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step [12] of 4"))
    # WHEN the network goes away mid-job
    context.set_offline(True)
    expect(page.get_by_text("You're offline — Alfred keeps working; we'll catch up when you're back")).to_be_visible()
    screenshot(page, "04-offline")
    # THEN the job keeps going on the server and ends while the page cannot see it
    assert web_stack.wait_status(user, job_id, TERMINAL)["status"] == "complete"
    expect(b.locator(".working")).to_be_visible()  # the page still shows where it last was
    # WHEN the network comes back, the page catches up at once: the reply, every step once
    context.set_offline(False)
    expect(page.locator("#offline-banner")).to_be_hidden()
    expect(b.locator(".reply")).to_contain_text("Here are 3 recipes with salmon and leeks", timeout=10_000)
    assert_each_step_once(page, job_id, 4)
    # AND no event was applied twice or skipped: every event of the job, once (waited for: the reply
    # shows before the page has applied the job's last events)
    job = web_stack.api(user, "GET", f"/api/jobs/{job_id}").json()
    page.wait_for_function("([id, n]) => (window.alfredDebug.seen[id] || []).length >= n",
                           arg=[job_id, job["last_seq"]])
    seqs = seen_seqs(page, job_id)
    assert seqs == list(range(1, job["last_seq"] + 1)), seqs
    screenshot(page, "05-back-online-complete")


def test_reload_mid_job_shows_still_working(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    # 5 steps of 2 s, seen at step 2 or 3 (a window the wait cannot miss on a busy machine): a step
    # is done, and the job still runs (4 s at least) when the reloaded page shows it
    job_id = send(page, "[steps=5] [pace=2] lentils")
    expect(bubble(page, job_id).locator(".step-text")).to_have_text(re.compile(r"Step [23] of 5"))
    # WHEN the page is reloaded mid-job
    page.reload()
    b = bubble(page, job_id)
    # THEN it shows Alfred still working on the step the job is at
    expect(b.get_by_text("Alfred is still working...")).to_be_visible()
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step [2-5] of 5"))
    screenshot(page, "06-reloaded-still-working")
    shown = int(re.search(r"Step (\d)", b.locator(".step-text").inner_text()).group(1))  # type: ignore[union-attr]
    job = web_stack.api(user, "GET", f"/api/jobs/{job_id}").json()
    assert job["progress"]["completed_steps"] >= shown - 1, (shown, job["progress"])
    expect(page.locator("li.msg-user .msg-text")).to_have_text("[steps=5] [pace=2] lentils")
    # AND it still ends normally, each step once
    expect(b.locator(".reply")).to_contain_text("Here are 3 recipes with lentils", timeout=30_000)
    assert_each_step_once(page, job_id, 5)


def test_finished_while_away_then_got_it(context: Any, user: str, web_stack: WebStack) -> None:
    page = context.new_page()
    open_page(page, user)
    # 3 steps of 2 s, seen at step 1 or 2: it still runs (2 s at least) when the tab closes
    job_id = send(page, "[steps=3] [pace=2] tofu and broccoli")
    expect(bubble(page, job_id).locator(".step-text")).to_have_text(re.compile(r"Step [12] of 3"))
    # WHEN the user leaves (the tab is closed) and the job finishes meanwhile
    page.close()
    assert web_stack.wait_status(user, job_id, TERMINAL)["status"] == "complete"
    # THEN coming back shows what happened while away, with the reply
    page = context.new_page()
    page.goto("/")
    card = page.locator(f'.away-card[data-job-id="{job_id}"]')
    expect(card.get_by_text("Alfred finished while you were away")).to_be_visible()
    # AND the card sits in the bubble it is about, right above the reply, which it does not repeat
    expect(bubble(page, job_id).locator(".away-card")).to_have_count(1)
    expect(bubble(page, job_id).locator(".reply")).to_contain_text("Here are 3 recipes with tofu and broccoli")
    expect(card).not_to_contain_text("Here are 3 recipes")
    screenshot(page, "07-finished-while-away")
    # WHEN it is dismissed, it is gone, also after a reload
    card.get_by_role("button", name="Got it").click()
    expect(card).to_be_hidden()
    page.reload()
    expect(bubble(page, job_id).locator(".reply")).to_contain_text("Here are 3 recipes")
    expect(page.locator(".away-card")).to_have_count(0)
    screenshot(page, "08-after-got-it")


def test_navigate_away_and_back_also_counts_as_away(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[steps=3] [pace=2] eggs")  # still running when the page goes (as above)
    expect(bubble(page, job_id).locator(".step-text")).to_have_text(re.compile(r"Step [12] of 3"))
    page.goto("about:blank")
    web_stack.wait_status(user, job_id, TERMINAL)
    page.go_back()
    card = page.locator(f'.away-card[data-job-id="{job_id}"]')
    expect(card.get_by_role("heading", name=re.compile("Alfred finished while you were away"))).to_be_visible()


def test_double_submit_makes_one_job(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    box = page.get_by_label("Message")
    box.fill("[steps=1] double tap pasta")
    # WHEN the user taps Send twice and presses Enter, as fast as the browser goes
    page.evaluate("""() => {
        const form = document.querySelector('#composer');
        form.requestSubmit(); form.requestSubmit();
        document.querySelector('#message').dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
    }""")
    expect(page.locator("li.msg-alfred")).to_have_count(1)
    job_id = page.locator("li.msg-alfred").get_attribute("data-job-id")
    # THEN the server has exactly one job
    web_stack.wait_status(user, str(job_id), TERMINAL)
    assert [j["job_id"] for j in web_stack.jobs(user)] == [job_id]
    expect(page.locator("li.msg-user")).to_have_count(1)
    # AND the client module alone: the same draft key sent twice at once is one job
    ids = page.evaluate("""async () => {
        const c = window.alfredDebug.client;
        const d = c.draftKey('test-draft');
        const key = d.keyFor('[steps=1] same draft');
        const [a, b] = await Promise.all([c.submitChat('[steps=1] same draft', {idempotencyKey: key}),
                                          c.submitChat('[steps=1] same draft', {idempotencyKey: key})]);
        return [a.job_id, b.job_id, d.keyFor('[steps=1] same draft') === key];
    }""")
    assert ids[0] == ids[1] and ids[2] is True
    assert len(web_stack.jobs(user)) == 2
    screenshot(page, "09-double-submit-one-job")


def test_cancel_running_job(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[steps=20] [pace=2] beef stew")  # still running when Cancel lands, however busy
    b = bubble(page, job_id)
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step \d+ of 20"))
    # WHEN Cancel is pressed
    b.get_by_role("button", name="Cancel").click()
    # THEN the job is cancelled, on the page and in the system
    expect(b.get_by_text("Cancelled — Alfred stopped this one.")).to_be_visible()
    expect(b.locator(".working")).to_be_hidden()
    assert web_stack.wait_status(user, job_id, TERMINAL)["status"] == "cancelled"
    expect(page.locator("#live")).to_have_text("Cancelled.")
    screenshot(page, "10-cancelled")


def test_failed_job_shows_its_error(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[fatal] mystery stew")
    b = bubble(page, job_id)
    # the error says the request itself is the cause, so that a Retry is not expected to help
    expect(b.locator(".state-failed")).to_contain_text(
        "Alfred couldn't finish: the recipe service refused this request")
    expect(b.locator(".state-failed")).to_contain_text("sending it again fails the same way")
    expect(b.locator(".working")).to_be_hidden()
    assert web_stack.wait_status(user, job_id, TERMINAL)["status"] == "failed"
    screenshot(page, "11-failed")


def test_job_failing_every_attempt_shows_it_gave_up(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[fail] [steps=3] soup")
    b = bubble(page, job_id)
    expect(b.locator(".state-failed")).to_have_text(
        "Alfred couldn't finish: gave up after 3 attempts: the recipe service is not answering",
        timeout=20_000)
    job = web_stack.wait_status(user, job_id, TERMINAL)
    assert (job["status"], job["attempts"]) == ("failed", 3)
    # Step 1 completed once, on the first attempt; the retries never showed it again
    expect(b.locator('.steps .step[data-state="done"]')).to_have_count(1)
    seqs = seen_seqs(page, job_id)
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_switch_user(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[steps=1] toast")
    expect(bubble(page, job_id).locator(".reply")).to_contain_text("Here are 3 recipes", timeout=20_000)
    page.get_by_role("button", name=re.compile(user)).click()
    screenshot(page, "12-switch-user")
    other = f"{user}-b"
    page.get_by_label("Your name").fill(other)
    page.get_by_role("button", name="Switch").click()
    expect(page.locator("#account-name")).to_have_text(other)
    # The other user's page has none of the first user's jobs
    expect(page.locator("li.msg-alfred")).to_have_count(0)
    assert web_stack.jobs(other) == []


def test_falls_back_to_long_poll_when_the_stream_is_blocked(page: Any, user: str, web_stack: WebStack) -> None:
    # GIVEN a network that drops the SSE endpoint (a proxy that buffers or blocks streams)
    page.route(re.compile(r".*/api/jobs/[^/]+/stream.*"), lambda route: route.abort())
    open_page(page, user)
    job_id = send(page, "[steps=3] [pace=2] mushrooms")  # its steps last long enough to be polled
    b = bubble(page, job_id)
    # THEN the page still shows the job from start to end, by long-poll, each step once
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step \d of 3"))
    expect(b.locator(".reply")).to_contain_text("Here are 3 recipes with mushrooms", timeout=20_000)
    assert_each_step_once(page, job_id, 3)
    assert "poll" in page.evaluate("id => window.alfredDebug.modes[id]", job_id)
    seqs = seen_seqs(page, job_id)
    assert seqs == list(range(1, len(seqs) + 1)), seqs


HIDE = """() => {
    for (const [k, v] of [['visibilityState', 'hidden'], ['hidden', true]])
        Object.defineProperty(document, k, {configurable: true, get: () => v});
    document.dispatchEvent(new Event('visibilitychange'));
}"""
SHOW = """() => {
    delete document.visibilityState; delete document.hidden;
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def test_locked_phone_hidden_and_frozen_then_back(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[steps=3] [pace=2] peppers")  # still running when the phone locks
    expect(bubble(page, job_id).locator(".step-text")).to_have_text(re.compile(r"Step [12] of 3"))
    # WHEN the phone locks: the page is hidden, then frozen (no script runs)
    page.evaluate(HIDE)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    assert web_stack.wait_status(user, job_id, TERMINAL)["status"] == "complete"
    # AND is unlocked after the job ended
    cdp.send("Page.setWebLifecycleState", {"state": "active"})
    page.evaluate(SHOW)
    # THEN the page says so, with the reply
    card = page.locator(f'.away-card[data-job-id="{job_id}"]')
    expect(card.get_by_role("heading", name=re.compile("Alfred finished while you were away"))).to_be_visible()
    expect(bubble(page, job_id).locator(".reply")).to_contain_text("Here are 3 recipes with peppers")
    expect(card).not_to_contain_text("Here are 3 recipes")  # in the bubble, not repeating the reply
    assert_each_step_once(page, job_id, 3)
    seqs = seen_seqs(page, job_id)
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_hidden_briefly_while_still_running_is_not_away(page: Any, user: str, web_stack: WebStack) -> None:
    open_page(page, user)
    job_id = send(page, "[steps=4] [pace=2] beans")  # still running when the page shows again
    b = bubble(page, job_id)
    expect(b.locator(".step-text")).to_have_text(re.compile(r"Step [12] of 4"))
    # A glance at a notification: hidden and back while the job still runs
    page.evaluate(HIDE)
    page.evaluate(SHOW)
    expect(b.get_by_text("Alfred is still working...")).to_be_visible()
    expect(b.locator(".reply")).to_contain_text("Here are 3 recipes with beans", timeout=20_000)
    expect(page.locator(".away-card")).to_have_count(0)
    assert_each_step_once(page, job_id, 4)
