"""Two users on one browser (issue 26): user A turns notifications on, then B signs in on the same
browser; B's browser never gets A's notifications, and a push says by default what happened and
nothing of the reply.

The server side is real (a stack with a VAPID key, a worker process, the dev app) and so is the
push service's (``tests/support/push_receiver.py``: it decrypts what it gets with the browser's
keys). Headless Chromium has no push service of its own, so the page's ``PushManager`` is
replaced by one that hands out the receiver's subscriptions (an init script): the page's own code
subscribes, saves, and unsubscribes through it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from alfred_jobs.service.push import vapid_key
from tests.browser.conftest import VIEWPORT, WEB_DIR, WebStack
from tests.browser.test_web import TERMINAL, bubble, open_page, send
from tests.support.push_receiver import PushReceiver
from tests.support.stack import make_stack

try:
    from playwright.sync_api import expect
except ImportError:  # the `chromium` fixture fails in CI or skips locally, with the reason
    expect = None  # type: ignore[assignment]

PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
REPLY_START = "Here are 3 recipes"

# The page's PushManager, as a browser's would behave, over subscriptions the test hands out.
FAKE_PUSH = """
(() => {
  const handOut = %s;
  let current = null;
  let permission = 'default';
  window.pushLog = [];
  Object.defineProperty(Notification, 'permission', { get: () => permission, configurable: true });
  Notification.requestPermission = async () => (permission = 'granted');
  PushManager.prototype.getSubscription = async function () { return current; };
  PushManager.prototype.subscribe = async function (options) {
    const json = handOut.shift();
    const key = new Uint8Array(options.applicationServerKey).buffer;
    current = {
      endpoint: json.endpoint, options: { applicationServerKey: key }, toJSON: () => json,
      unsubscribe: async () => { window.pushLog.push(['unsubscribe', json.endpoint]); current = null; return true; },
    };
    window.pushLog.push(['subscribe', json.endpoint]);
    return current;
  };
})();
"""


@pytest.fixture(scope="module")
def push_stack(chromium: Any, emulator: dict[str, str]) -> Iterator[tuple[WebStack, PushReceiver]]:
    from alfred_tools.devstack import create_dev_app
    from alfred_tools.localstack import serve_app

    env = {"ALFRED_VAPID_PRIVATE_KEY": PEM, "ALFRED_PUSH_ENDPOINT_ALLOW": "127.0.0.1",
           "ALFRED_DEMO_STEP_SECONDS": "0.2", "ALFRED_RETRY_BASE_SECONDS": "0"}
    with make_stack(emulator, **env) as stack:
        key = vapid_key(stack.settings)
        assert key is not None
        stack.start_worker(concurrency=2)
        with PushReceiver(expected_key=key.public_key) as receiver, \
                serve_app(create_dev_app(stack.deps, static_dir=WEB_DIR)) as base:
            yield WebStack(base_url=base, stack=stack), receiver


def test_the_next_user_on_a_browser_never_gets_the_previous_ones_notifications(
        chromium: Any, push_stack: tuple[WebStack, PushReceiver]) -> None:
    web, receiver = push_stack
    alice, bob = f"a{time.monotonic_ns()}", f"b{time.monotonic_ns()}"
    device = receiver.subscribe()  # the browser's one subscription (its push service's endpoint)
    ctx = chromium.new_context(viewport=VIEWPORT, base_url=web.base_url)
    ctx.add_init_script(f"window.ALFRED_CONFIG = {{defaultUser: {alice!r}}};")
    ctx.add_init_script(FAKE_PUSH % json.dumps([device.json()]))
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    try:
        # GIVEN alice turned notifications on in this browser after sending a message (3 steps of
        # 2 s: the job still runs once the browser's subscription is saved, so its end is pushed)
        open_page(page, alice)
        first = send(page, "[steps=3] [pace=2] rice")
        page.get_by_role("button", name="Turn on notifications").click()
        expect(page.locator("#notify-prompt")).to_be_hidden()  # after the subscription was saved
        assert web.stack.deps.push is not None
        assert web.api(alice, "GET", f"/api/jobs/{first}").json()["status"] not in TERMINAL, \
            "the job ended before the subscription was saved: make it longer"
        deadline = time.monotonic() + 20
        while not receiver.for_endpoint(device.endpoint):  # her job's push reached the browser
            assert time.monotonic() < deadline, "alice's push never came"
            time.sleep(0.05)
        (pushed,) = receiver.for_endpoint(device.endpoint)
        expect(bubble(page, first).locator(".reply")).to_contain_text(REPLY_START)
        # AND by default the lock screen's text says what happened, nothing of the reply
        assert pushed.error is None and pushed.payload is not None
        assert pushed.payload["title"] == "Alfred finished" and pushed.payload["body"] == ""
        assert REPLY_START not in json.dumps(pushed.payload)

        # WHEN bob signs in on the same browser (the account dialog's Switch)
        page.locator("#account-button").click()
        page.get_by_label("Your name").fill(bob)
        page.get_by_role("button", name="Switch").click()
        expect(page.locator("#account-name")).to_have_text(bob)
        # THEN the browser dropped the subscription and the server forgot it for alice
        assert page.evaluate("window.pushLog") == [["subscribe", device.endpoint], ["unsubscribe", device.endpoint]]
        assert web.stack.deps.push.list(alice) == []

        # WHEN alice's next job (sent from her phone, which has notifications on) ends
        phone = receiver.subscribe()
        saved = web.api(alice, "POST", "/api/push/subscriptions", json=phone.json())
        assert saved.status_code == 201, saved.text
        job = web.api(alice, "POST", "/api/chat", json={"message": "[steps=1] beans"}).json()["job_id"]
        web.wait_status(alice, job, {"complete"})
        # THEN its push reaches her phone, and nothing more reached this browser: the worker sends a
        # job's end to all of its user's subscriptions in one pass, so a subscription still kept for
        # this browser would have been sent beside the phone's (a wait on that event, not the clock)
        deadline = time.monotonic() + 20
        while not receiver.for_endpoint(phone.endpoint):
            assert time.monotonic() < deadline, "alice's push to her phone never came"
            time.sleep(0.05)
        assert len(receiver.for_endpoint(device.endpoint)) == 1
    finally:
        ctx.close()
