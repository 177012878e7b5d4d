"""Steering through the HTTP API with a real worker process on the moto server (SPEC "Steering",
guarantee 15): a message steered into a 6-step job at step 2 is answered by that job's one reply;
one sent while the reply streams becomes a queued job of its own."""

from __future__ import annotations

import httpx

from alfred_jobs.domain.models import Event, EventType
from alfred_jobs.entry.http.jobs_api import create_app
from alfred_jobs.service.auth import issue_local_token
from tests.integration.helpers import assert_contiguous_single_terminal, log_of, wait_terminal
from tests.support.servers import serve
from tests.support.stack import make_stack, wait_until

CONV = "kitchen"


def at_step(events: list[Event], index: int) -> bool:
    """Whether step ``index`` has started (a ``started`` step event, or a ``next`` pointing at it)."""
    return any(e.type in (EventType.PLAN, EventType.STEP)
               and (e.data.get("next", {}).get("index") == index
                    or (e.data.get("index") == index and e.data.get("status") == "started"))
               for e in events)


def replying(events: list[Event]) -> bool:
    return any(e.type is EventType.PHASE and e.data.get("phase") == "reply" for e in events)


def kinds(events: list[Event]) -> list[str]:
    return [f"{e.type}:{e.data.get('phase', '')}" for e in events if e.type is not EventType.DELTA]


def test_a_steer_at_step_two_is_answered_by_the_one_reply_and_one_while_replying_is_queued(
        emulator: dict[str, str]) -> None:
    # Steps of half a second; thinking and the reply take 2 s each (half of the step setting).
    with make_stack(emulator, ALFRED_DEMO_STEP_SECONDS="4") as stack, serve(create_app(stack.deps)) as api:
        stack.start_worker()
        auth = {"Authorization": f"Bearer {issue_local_token(stack.settings, 'alice')}"}
        with httpx.Client(base_url=api, headers=auth, timeout=30) as client:
            # GIVEN a 6-step job at work on its second step
            first = client.post("/api/chat", json={"message": "chicken stir fry [steps=6] [pace=0.5]",
                                                   "conversation_id": CONV})
            assert first.status_code == 202
            job_id = first.json()["job_id"]
            wait_until(lambda: at_step(log_of(stack, job_id), 2), what="the job to be at step 2")
            # WHEN the user steers it
            steer = client.post("/api/chat", json={"message": "and make it vegetarian", "conversation_id": CONV,
                                                   "multitask": "steer"}, headers={"Idempotency-Key": "steer-1"})
            again = client.post("/api/chat", json={"message": "and make it vegetarian", "conversation_id": CONV,
                                                   "multitask": "steer"}, headers={"Idempotency-Key": "steer-1"})
            # THEN it joined the job under way, and a resend says the same
            assert steer.status_code == 202 and again.status_code == 202
            assert steer.json()["steered"] is True and steer.json()["job_id"] == job_id
            assert again.json()["steered"] is True and again.json()["job_id"] == job_id
            events = wait_terminal(stack, job_id, timeout=60)
            assert_contiguous_single_terminal(events)
            # AND the job recorded it once, before its one reply, which reflects it
            got = kinds(events)
            assert got.count("steered:") == 1 and got.index("steered:") < got.index("phase:reply")
            assert got[-1] == "complete:"
            reply = events[-1].data["output"]["reply"]
            assert "vegetarian" in reply and "chicken" not in reply.lower()
            # AND the conversation holds both user messages, then that reply
            conv = client.get(f"/api/conversations/{CONV}").json()["messages"]
            assert [(m["role"], m["text"]) for m in conv] == [
                ("user", "chicken stir fry [steps=6] [pace=0.5]"), ("user", "and make it vegetarian"),
                ("assistant", reply)]

            # GIVEN another job of the conversation, replying
            second = client.post("/api/chat", json={"message": "pasta [steps=1] [pace=0.2]", "conversation_id": CONV})
            second_id = second.json()["job_id"]
            wait_until(lambda: replying(log_of(stack, second_id)), what="the second job to reply")
            # WHEN the user steers it
            late = client.post("/api/chat", json={"message": "with mushrooms", "conversation_id": CONV,
                                                  "multitask": "steer"})
            # THEN the message became a queued job of its own, which runs after and answers it
            assert late.status_code == 202 and late.json()["steered"] is False
            late_id = late.json()["job_id"]
            assert late_id != second_id
            assert "steered:" not in kinds(wait_terminal(stack, second_id, timeout=60))
            assert wait_terminal(stack, late_id, timeout=60)[-1].type is EventType.COMPLETE
            conv = client.get(f"/api/conversations/{CONV}").json()["messages"]
            assert [(m["role"], m["job_id"]) for m in conv[3:]] == [
                ("user", second_id), ("assistant", second_id), ("user", late_id), ("assistant", late_id)]

