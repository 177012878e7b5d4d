"""The CLI a newcomer can use (issue 27, problems 3 and 7): ``chat`` continues the latest
conversation, ``list`` shows each job's message and the progress ``status`` shows, no cursor dump,
plain words for a bad id and for a resumed job, and hints that run as printed."""

from __future__ import annotations

import argparse
import io
from typing import Any

import pytest

from alfred_tools import cli
from alfred_tools.api_client import ApiClient, CliError, Renderer, answer_command, command

JOB = "2ae44763719d4dd5be7213ef7c05ff96"


class FakeClient(ApiClient):
    """The API as the commands see it, without a server."""

    def __init__(self, jobs: list[dict[str, Any]] | None = None, next_cursor: str | None = None,
                 latest: str | None = None) -> None:
        super().__init__("http://127.0.0.1:1", "t")
        self._jobs, self._next, self._latest = jobs or [], next_cursor, latest
        self.submitted: list[str | None] = []

    def jobs(self, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        return {"jobs": self._jobs, "next_cursor": self._next}

    def conversations(self, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        items = [{"conversation_id": self._latest, "updated_at": "t", "title": "x"}] if self._latest else []
        return {"conversations": items, "next_cursor": None}

    def submit(self, message: str, conversation_id: str | None = None, idempotency_key: str | None = None,
               multitask: str | None = None) -> dict[str, Any]:
        self.submitted.append(conversation_id)
        return {"job_id": JOB, "conversation_id": conversation_id or "fresh"}


def running_job(message: str) -> dict[str, Any]:
    return {"job_id": JOB, "status": "running", "message": message, "created_at": "2026-12-07T06:00:00.000Z",
            "progress": {"phase": "act", "completed_steps": 3, "total_steps": 5, "label": "Build the list"}}


def run_cli(monkeypatch: pytest.MonkeyPatch, client: FakeClient, *argv: str) -> str:
    monkeypatch.setattr(cli, "_client", lambda: client)
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert cli.main(list(argv)) == 0
    return out.getvalue()


# ---- chat goes to the latest conversation unless told otherwise -------------------------------


def test_chat_continues_the_latest_conversation_unless_new_or_named(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(latest="kitchen")
    run_cli(monkeypatch, client, "chat", "and a salad")
    run_cli(monkeypatch, client, "chat", "something else", "--new")
    run_cli(monkeypatch, client, "chat", "to this one", "--conversation", "other")
    assert client.submitted[0] == "kitchen" and client.submitted[2] == "other"
    assert client.submitted[1] not in (None, "kitchen")  # --new: a conversation of its own
    first = FakeClient(latest=None)  # none yet: a new one
    run_cli(monkeypatch, first, "chat", "my first message")
    assert first.submitted[0] and first.submitted[0] != "kitchen"


def test_a_resend_with_its_idempotency_key_sends_the_same_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # the first send started a conversation, which is the latest by the time of the resend
    client = FakeClient(latest=None)
    run_cli(monkeypatch, client, "chat", "rice", "--idempotency-key", "k-1")
    client._latest = client.submitted[0]
    run_cli(monkeypatch, client, "chat", "rice", "--idempotency-key", "k-1")
    assert client.submitted[0] == client.submitted[1]


def test_chat_help_says_it_continues_the_latest_conversation() -> None:
    chat = next(a for a in cli.build_parser()._subparsers._group_actions  # type: ignore[union-attr]
                if isinstance(a, argparse._SubParsersAction)).choices["chat"]
    text = chat.format_help()
    assert "--new" in text and "latest conversation" in text
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["chat", "m", "--new", "--conversation", "c"])


# ---- list -------------------------------------------------------------------------------------


def test_list_shows_the_message_and_the_progress_status_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    message = "Stir fry with the tofu from my pantry, and something green on the side, please"
    out = run_cli(monkeypatch, FakeClient([running_job(message)]), "list")
    header, row = out.splitlines()[:2]
    assert header.split() == ["JOB", "STATUS", "PROGRESS", "MESSAGE"]
    assert row.startswith(JOB) and "Step 4 of 5 — Build the list" in row and "Thinking" not in row
    assert "Stir fry with the tofu from my pantry" in row and message not in row  # shortened
    assert row.endswith("…")


def test_list_hints_at_more_without_dumping_the_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    cursor = "c" * 250
    out = run_cli(monkeypatch, FakeClient([running_job("rice")], next_cursor=cursor), "list", "--limit", "1")
    assert cursor not in out and "more: alfred-jobs list --limit 2" in out
    shown = run_cli(monkeypatch, FakeClient([running_job("rice")], next_cursor=cursor), "list", "--show-cursor",
                    "--status", "active")
    assert shown.splitlines()[-1] == f"more: alfred-jobs list --status active --limit 20 --cursor {cursor}"
    assert shown.count("more:") == 1


def test_a_job_without_a_plan_yet_says_where_it_is() -> None:
    assert cli.list_progress({"status": "pending", "progress": {}}) == "Waiting to start"
    assert cli.list_progress({"status": "running", "progress": {"phase": "think"}}) == "Thinking"


# ---- ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ident", "words"), [
    ("2ae44", "2ae44 is too short: give at least 6 characters"),
    ("not-a-job", "not-a-job is not a job id: job ids are 32 characters of 0-9 and a-f"),
    ("a" * 33, "is not a job id"),
])
def test_a_short_or_foreign_id_is_refused_in_plain_words(ident: str, words: str) -> None:
    with pytest.raises(CliError) as err:
        FakeClient([running_job("rice")]).resolve(ident)
    assert words in str(err.value) and "malformed" not in str(err.value)
    assert "see yours: alfred-jobs list" in str(err.value)


# ---- hints run as printed ------------------------------------------------------------------------


def test_hints_name_the_command_the_user_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    assert command(f"watch {JOB}") == f"alfred-jobs watch {JOB}"
    monkeypatch.setenv("ALFRED_CLI_COMMAND", "./run.sh")
    assert command(f"watch {JOB} --after 4") == f"./run.sh watch {JOB} --after 4"
    assert f"./run.sh answer {JOB} yes" in answer_command(JOB, {"kind": "confirm"})
    busy = cli.submit_refusal(cli.ApiError(409, "conversation_busy", "busy", job_id=JOB))
    assert busy is not None and f"or follow it: ./run.sh watch {JOB}" in str(busy)
    monkeypatch.setenv("ALFRED_CLI_COMMAND", "/home/me/my alfred/run.sh")
    assert command("list") == "'/home/me/my alfred/run.sh' list"  # quoted: runs as printed


# ---- a resumed job, in plain words ---------------------------------------------------------------


def render(events: list[tuple[str, dict[str, Any]]]) -> str:
    out = io.StringIO()
    renderer = Renderer(out, "tty")
    for seq, (t, d) in enumerate(events, 1):
        renderer.event({"seq": seq, "type": t, "data": d})
    return out.getvalue()


def step(i: int, total: int) -> tuple[str, dict[str, Any]]:
    return "step", {"index": i, "total": total, "status": "completed", "label": f"step {i}"}


def test_a_resume_says_why_and_from_which_step() -> None:
    plan = ("plan", {"total_steps": 5, "steps": []})
    crashed = render([("status", {"status": "running"}), plan, step(1, 5), step(2, 5),
                      ("resumed", {"attempt": 2, "from_seq": 4})])
    assert "picked up again after a worker stopped (attempt 2), from step 3 of 5" in crashed
    assert "resumed by attempt" not in crashed and "seq" not in crashed
    answered = render([plan, ("input_required", {"prompt": "Use the tofu?"}),
                       ("input_received", {"answer": True}), ("resumed", {"attempt": 2, "from_seq": 3})])
    assert "went on with your answer (attempt 2), from step 1 of 5" in answered
    retried = render([plan, step(1, 5), ("status", {"status": "pending", "retry_in": 1.0}),
                      ("resumed", {"attempt": 2, "from_seq": 4})])
    assert "trying again after a step failed (attempt 2), from step 2 of 5" in retried
