"""The `alfred-jobs` client commands end to end, against `alfred-jobs dev` running as a real process."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from alfred_jobs.service.auth import verify_local_token
from alfred_jobs.settings import Settings
from alfred_tools.emulator import free_port
from tests.integration.test_devstack import CLI, DevProcess, start_dev
from tests.support.stack import wait_until

# The CLI end to end against `alfred-jobs dev`, whose workers poll the target's queue (the
# LocalStack leg runs this module: infra/localstack-sqs.sh).
pytestmark = pytest.mark.queue

STEP = "0.2"  # long enough to drop a connection or cancel mid-job, short enough for a fast suite


@pytest.fixture(scope="module")
def dev() -> Iterator[DevProcess]:
    with start_dev(workers=2, ALFRED_DEMO_STEP_SECONDS=STEP) as d:
        yield d


def run(dev: DevProcess, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=dev.cli_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


class DroppingProxy:
    """A TCP proxy in front of the API that can cut every open connection at once (a phone locking)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [client, upstream]
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_all(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.drop_all()


def test_chat_follow_shows_progress_to_completion(dev: DevProcess) -> None:
    out = run(dev, "chat", "chicken and rice [steps=3]", "--new", "--follow")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # plain output (not a terminal): one line per event, seqs 1..N in order
    assert [int(line.split()[0]) for line in lines] == list(range(1, len(lines) + 1))
    assert "step 1/3 started: Search recipes with chicken and rice" in out.stdout
    assert "step 3/3 completed" in out.stdout
    assert " delta " in out.stdout
    assert lines[-1].split()[1] == "complete" and "Here are 3 recipes with chicken and rice" in lines[-1]
    assert out.stderr.startswith("job ")


def test_chat_follow_by_long_poll_sees_the_same_log(dev: DevProcess) -> None:
    out = run(dev, "chat", "leeks [steps=2]", "--new", "--follow", "--transport", "poll", "--json")
    assert out.returncode == 0, out.stderr
    events = events_of(out.stdout)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "complete"


def test_watch_resumes_after_a_dropped_connection_seeing_every_event_once(dev: DevProcess) -> None:
    # GIVEN a long job and a watcher whose connections go through a proxy we can cut
    # a step a second: the job is still running when the connection drops, however busy the machine
    job_id = run(dev, "chat", "beans and corn [steps=6] [pace=1]", "--new").stdout.strip()
    proxy = DroppingProxy(dev.port)
    try:
        watcher = subprocess.Popen([*CLI, "watch", job_id, "--json"],
                                   env=dev.cli_env(ALFRED_API_URL=f"http://127.0.0.1:{proxy.port}"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert watcher.stdout is not None
        received: list[dict[str, Any]] = []
        dropped_at = None
        for line in watcher.stdout:
            received.append(json.loads(line))
            ev = received[-1]
            # WHEN the connection drops mid-job (after step 2 completed)
            if dropped_at is None and ev["type"] == "step" and ev["data"] == {**ev["data"], "index": 2,
                                                                                  "status": "completed"}:
                dropped_at = ev["seq"]
                proxy.drop_all()
        code = watcher.wait(timeout=60)
        stderr = watcher.stderr.read() if watcher.stderr else ""
    finally:
        proxy.close()
    # THEN it reconnected by itself from the last seq and saw every event exactly once
    assert code == 0, stderr
    assert dropped_at is not None
    resumed_from = [int(k) for k in re.findall(r"reconnecting from seq (\d+)", stderr)]
    assert resumed_from and resumed_from[0] >= dropped_at, stderr  # it may have read ahead of us
    assert proxy.accepted >= 2  # the first connection (kept alive across requests) and a new one
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    assert received[-1]["type"] == "complete"
    assert "warning" not in stderr


def test_watch_after_n_and_after_the_end(dev: DevProcess) -> None:
    done = run(dev, "chat", "eggs [steps=1]", "--new", "--follow", "--json")
    events = events_of(done.stdout)
    job_id = done.stderr.split()[1]
    # from the middle: exactly the rest
    rest = run(dev, "watch", job_id, "--after", "3", "--json")
    assert rest.returncode == 0, rest.stderr
    assert [e["seq"] for e in events_of(rest.stdout)] == [e["seq"] for e in events][3:]
    # from the end: nothing to show, no hang, and the outcome
    end = run(dev, "watch", job_id, "--after", str(events[-1]["seq"]), timeout=20)
    assert end.returncode == 0, end.stderr
    assert "already complete" in end.stdout


def test_list_status_and_cancel(dev: DevProcess) -> None:
    # GIVEN a long job
    # 20 steps of 3 s: it cannot end before the cancel, however slow the machine (it stops at once)
    job_id = run(dev, "chat", "a long one [steps=20] [pace=3]", "--new").stdout.strip()
    assert len(job_id) == 32
    # THEN it is listed as active, and status shows it
    listed = run(dev, "list", "--status", "active")
    assert listed.returncode == 0 and job_id in listed.stdout, listed
    status = run(dev, "status", job_id)
    assert status.returncode == 0 and f"job          {job_id}" in status.stdout
    # WHEN it is cancelled
    cancel = run(dev, "cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    assert job_id in cancel.stdout
    # THEN it ends cancelled, and cancelling again is idempotent
    wait_until(lambda: json.loads(run(dev, "status", job_id, "--json").stdout)["status"] == "cancelled",
               timeout=20, interval=0.2, what="the job to be cancelled")
    again = run(dev, "cancel", job_id)
    assert again.returncode == 0 and "cancelled" in again.stdout
    assert job_id in run(dev, "list", "--status", "cancelled").stdout
    assert job_id not in run(dev, "list", "--status", "active").stdout
    # and a followed cancelled job exits non-zero
    follow = run(dev, "watch", job_id)
    assert follow.returncode == 1 and "cancelled" in follow.stdout


def test_cancel_of_a_complete_job_is_an_api_error(dev: DevProcess) -> None:
    done = run(dev, "chat", "rice [steps=1]", "--new", "--follow")
    job_id = done.stderr.split()[1]
    out = run(dev, "cancel", job_id)
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and "complete" in out.stderr


@pytest.mark.parametrize(("args", "code", "text"), [
    (["status", "not-a-job"], 1, "error: not-a-job is not a job id"),
    (["status", "0" * 32], 1, "not found"),
    (["watch", "f" * 32], 1, "not found"),
    (["cancel", "0" * 32], 1, "not found"),
    (["chat", ""], 1, "error: message: must not be empty"),
    (["chat"], 2, "usage:"),
    (["list", "--status", "bogus"], 2, "invalid choice"),
    (["watch", "0" * 32, "--after", "-1"], 2, "--after"),
    (["nonsense"], 2, "invalid choice"),
])
def test_errors_are_shown_as_their_message_with_a_nonzero_exit(dev: DevProcess, args: list[str], code: int,
                                                                text: str) -> None:
    out = run(dev, *args, timeout=20)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_auth_errors_and_an_unreachable_api(dev: DevProcess) -> None:
    bad = run(dev, "list", ALFRED_TOKEN="not-a-token")
    assert bad.returncode == 1 and "error: invalid token" in bad.stderr
    remote = run(dev, "list", ALFRED_API_URL="https://alfred.example.com")
    assert remote.returncode == 1 and "set ALFRED_TOKEN" in remote.stderr
    down = run(dev, "list", ALFRED_API_URL=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach the API" in down.stderr
    assert "is the local system running?" in down.stderr and "./run.sh" in down.stderr


def test_users_see_only_their_own_jobs(dev: DevProcess) -> None:
    ann = run(dev, "token", "--user", "ann").stdout.strip()
    bob = run(dev, "token", "--user", "bob").stdout.strip()
    assert verify_local_token(Settings(), ann) == "ann"
    job_id = run(dev, "chat", "ann's soup [steps=1]", "--new", ALFRED_TOKEN=ann).stdout.strip()
    assert job_id in run(dev, "list", ALFRED_TOKEN=ann).stdout
    assert job_id not in run(dev, "list", ALFRED_TOKEN=bob).stdout
    other = run(dev, "status", job_id, ALFRED_TOKEN=bob)
    assert other.returncode == 1 and "not found" in other.stderr
    bad_user = run(dev, "token", "--user", "no spaces please")
    assert bad_user.returncode == 1 and "user names" in bad_user.stderr


def test_the_same_idempotency_key_gives_the_same_job(dev: DevProcess) -> None:
    first = run(dev, "chat", "pasta [steps=1]", "--new", "--idempotency-key", "k-1").stdout.strip()
    second = run(dev, "chat", "pasta [steps=1]", "--new", "--idempotency-key", "k-1").stdout.strip()
    assert first == second and len(first) == 32
    clash = run(dev, "chat", "pizza [steps=1]", "--new", "--idempotency-key", "k-1")
    assert clash.returncode == 1 and clash.stderr.startswith("error: ")


def test_bench_dispatches_lazily() -> None:
    out = subprocess.run([*CLI, "bench", "--help"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "--quick" in out.stdout
    t0 = time.monotonic()
    assert subprocess.run([*CLI, "token", "--user", "x"], capture_output=True, timeout=20).returncode == 0
    assert time.monotonic() - t0 < 10


def test_chat_multitask_reject_names_the_active_job_then_interrupt_stops_it(dev: DevProcess) -> None:
    # GIVEN a conversation with a long job under way
    conv = uuid.uuid4().hex
    # 20 steps of 3 s: still running when the next messages arrive, however slow the machine
    first = run(dev, "chat", "slow soup [steps=20] [pace=3]", "--conversation", conv).stdout.strip()
    assert len(first) == 32
    # WHEN another message is sent with --multitask reject
    busy = run(dev, "chat", "and a salad", "--conversation", conv, "--multitask", "reject")
    # THEN it is refused with a message naming the active job and what to do instead; nothing is created
    assert busy.returncode == 1, (busy.stdout, busy.stderr)
    assert busy.stdout == ""
    assert busy.stderr.startswith(f"error: this conversation has a job under way: {first} (conversation_busy, "
                                  "HTTP 409)"), busy.stderr
    assert "--multitask enqueue" in busy.stderr and "--multitask interrupt" in busy.stderr
    assert f"alfred-jobs watch {first}" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert [j["job_id"] for j in json.loads(run(dev, "list", "--json").stdout)["jobs"]
            if j["conversation_id"] == conv] == [first]
    # WHEN it is sent with --multitask interrupt (and followed)
    second = run(dev, "chat", "just a salad [steps=1]", "--conversation", conv, "--multitask", "interrupt",
                 "--follow", "--json")
    # THEN the new job runs to completion, and the first ended cancelled, interrupted by it
    assert second.returncode == 0, second.stderr
    second_id = second.stderr.split()[1]
    assert events_of(second.stdout)[-1]["type"] == "complete"
    assert json.loads(run(dev, "status", first, "--json").stdout)["status"] == "cancelled"
    shown = run(dev, "watch", first)
    assert shown.returncode == 1
    assert shown.stdout.splitlines()[-1].endswith(f"cancelled interrupted by={second_id}"), shown.stdout
    last = events_of(run(dev, "watch", first, "--json").stdout)[-1]
    assert (last["type"], last["data"]) == ("cancelled", {"reason": "interrupted", "by": second_id})


def test_chat_multitask_steer_says_whether_the_message_joined_the_job_or_was_queued(dev: DevProcess) -> None:
    # GIVEN a conversation with a job under way (6 steps of a second: still acting when steered)
    conv = uuid.uuid4().hex
    first = run(dev, "chat", "chicken curry [steps=6] [pace=1]", "--conversation", conv).stdout.strip()
    # WHEN the user adds to it
    steer = run(dev, "chat", "and make it vegetarian", "--conversation", conv, "--multitask", "steer")
    # THEN it joined that job, and the command says so (stdout keeps the job id alone)
    assert steer.returncode == 0, steer.stderr
    assert steer.stdout.strip() == first
    assert steer.stderr.startswith(f"Added to the running job {first}"), steer.stderr
    done = events_of(run(dev, "watch", first, "--json").stdout)
    assert [e["data"]["text"] for e in done if e["type"] == "steered"] == ["and make it vegetarian"]
    assert "chicken" not in done[-1]["data"]["output"]["reply"].lower()
    plain = run(dev, "watch", first).stdout  # not a terminal: one plain line per event
    assert any(" steered " in line and line.endswith('"and make it vegetarian"') for line in plain.splitlines())
    # WHEN it is sent once that job has ended
    late = run(dev, "chat", "and a dessert [steps=1]", "--conversation", conv, "--multitask", "steer")
    # THEN it is a new job of its own, and the command says so
    assert late.returncode == 0, late.stderr
    assert late.stdout.strip() != first and late.stderr.startswith("Queued as a new job"), late.stderr


def test_chat_enqueued_in_a_busy_conversation_runs_after_the_earlier_job(dev: DevProcess) -> None:
    conv = uuid.uuid4().hex
    first = run(dev, "chat", "rice [steps=3]", "--conversation", conv).stdout.strip()
    # --multitask enqueue is the server's default, sent explicitly here; it waits, then runs
    second = run(dev, "chat", "and beans [steps=1]", "--conversation", conv, "--multitask", "enqueue",
                 "--follow", "--json")
    assert second.returncode == 0, second.stderr
    events = events_of(second.stdout)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "complete"
    done_first = json.loads(run(dev, "status", first, "--json").stdout)
    assert done_first["status"] == "complete"
    # it started only after the first job had ended
    done_second = json.loads(run(dev, "status", second.stderr.split()[1], "--json").stdout)
    started, ended = (datetime.fromisoformat(t.replace("Z", "+00:00"))
                      for t in (done_second["started_at"], done_first["completed_at"]))
    assert started >= ended, (done_second, done_first)


def test_chat_past_the_active_jobs_limit_says_when_to_try_again(dev: DevProcess) -> None:
    # GIVEN a user with as many jobs under way as allowed (20): one long job, the rest queued behind it
    user = f"busy{uuid.uuid4().hex[:6]}"
    token = run(dev, "token", "--user", user).stdout.strip()
    conv = uuid.uuid4().hex
    jobs: list[str] = []
    with httpx.Client(base_url=dev.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        for i in range(20):
            message = "slow soup [steps=20] [pace=3]" if i == 0 else f"then dish {i}"
            r = http.post("/api/chat", json={"message": message, "conversation_id": conv})
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        try:
            # WHEN one more is sent
            out = run(dev, "chat", "one too many", "--new", ALFRED_TOKEN=token)
            # THEN it is refused with the server's reason and when to try again
            assert out.returncode == 1, (out.stdout, out.stderr)
            assert re.match(r"error: you have 20 jobs under way; wait for one to end \(too_many_jobs, HTTP 429\); "
                            r"try again in \d+ s\n", out.stderr), out.stderr
            assert "alfred-jobs list --status active" in out.stderr
            assert "Traceback" not in out.stderr
        finally:
            for job_id in reversed(jobs):  # the queued ones first: cancelling them starts nothing
                http.post(f"/api/jobs/{job_id}/cancel")


# ---- questions: a job that asks (the demo agent asks before it changes the pantry) ------------

PANTRY = "chicken from my pantry [steps=2]"


class Lines:
    """A process's pipe read line by line in a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def until(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if m := re.search(pattern, line):
                    return m
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"the output ended without {pattern!r}: {self.seen}")
            self.seen.append(line)


class Terminal:
    """A CLI process on a pseudo-terminal (stdin and stdout are a TTY), as a user at a shell sees it."""

    def __init__(self, dev: DevProcess, *args: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen([*CLI, *args], env=dev.cli_env(), stdin=slave, stdout=slave,
                                     stderr=subprocess.PIPE, start_new_session=True)
        os.close(slave)
        self.text = ""

    def _read(self, timeout: float) -> bool | None:
        """Read what is there: True if something was, None if nothing came in time, False at the end."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the process ended and closed the terminal
            return False
        self.text += data.decode(errors="replace")
        return bool(data)

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            if time.monotonic() > deadline or self._read(0.2) is False:
                raise AssertionError(f"{text!r} not shown in {timeout}s; the terminal shows:\n{self.text}")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test: the prompt would wait forever
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        while self._read(0.1):  # what it wrote last
            pass
        return code


def job_id_of(text: str) -> str:
    m = re.search(r"job ([0-9a-f]{32})", text)
    assert m, text
    return m.group(1)


def test_chat_follow_piped_shows_the_question_and_the_answer_command_then_goes_on(dev: DevProcess) -> None:
    # GIVEN a job that asks, followed with its output piped (not a terminal)
    proc = subprocess.Popen([*CLI, "chat", PANTRY, "--new", "--follow"], env=dev.cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        err = Lines(proc.stderr)
        # THEN it prints the question and the exact command that answers it, and keeps following
        err.until(r"Alfred asks: Use the 2 lb of chicken from your pantry\? \(yes or no\)")
        command = err.until(r"^  alfred-jobs answer ([0-9a-f]{32}) yes$")
        err.until(r"^  alfred-jobs answer [0-9a-f]{32} no$")
        job_id = command.group(1)
        assert proc.poll() is None  # the job waits, and so does the follower
        # WHEN that command is run (from another shell)
        answered = run(dev, "answer", job_id, "yes")
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.startswith('answered: yes (to "Use the 2 lb of chicken from your pantry?")')
        # AND again: the same answer is fine; another answer is refused
        again = run(dev, "answer", job_id, "y")
        assert again.returncode == 0 and again.stdout.startswith("already answered: yes"), again
        other = run(dev, "answer", job_id, "no")
        assert other.returncode == 1, other
        assert other.stderr.startswith("error: this question was already answered, with another answer "
                                       "(input_answered, HTTP 409)"), other.stderr
        # THEN the follower sees the answer and the job completes with the pantry used
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    lines = out.splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(1, len(lines) + 1))
    assert any(line.endswith("input_required confirm s1q1: Use the 2 lb of chicken from your pantry?")
               for line in lines), out
    assert any(line.endswith("input_received s1q1 = yes") for line in lines), out
    assert lines[-1].split()[1] == "complete" and "I used the 2 lb of chicken from your pantry." in lines[-1]


def test_chat_follow_on_a_terminal_asks_and_goes_on(dev: DevProcess) -> None:
    # GIVEN a job that asks, followed on a terminal
    with Terminal(dev, "chat", PANTRY, "--new", "--follow") as term:
        # THEN the question is asked in the terminal; an answer that does not fit is asked again
        term.expect("? Use the 2 lb of chicken from your pantry?")
        term.expect("answer [y/n]: ")
        term.type("perhaps")
        term.expect('this question takes yes or no, not "perhaps"')
        term.type("n")
        # AND the job goes on with the answer, to completion
        code = term.wait()
    assert code == 0, term.text
    assert "✓ answered: no" in term.text
    assert "I left your pantry as it was: the chicken is still there." in term.text
    assert term.text.rstrip().endswith("✓ complete"), term.text


def test_a_terminal_question_answered_on_another_device_stops_asking(dev: DevProcess) -> None:
    # GIVEN a job asking in a terminal
    with Terminal(dev, "chat", PANTRY, "--new", "--follow") as term:
        term.expect("answer [y/n]: ")
        job_id = job_id_of(term.text)
        # WHEN the question is answered elsewhere (the phone, through the API)
        token = run(dev, "token", "--user", "you").stdout.strip()
        r = httpx.post(f"{dev.url}/api/jobs/{job_id}/input", json={"input_id": "s1q1", "answer": True},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 202, r.text
        # THEN the terminal stops asking, shows the answer, and follows the job to its end
        term.expect("(answered elsewhere, or the job moved on)")
        code = term.wait()
    assert code == 0, term.text
    assert "✓ answered: yes" in term.text and "I used the 2 lb of chicken from your pantry." in term.text


def test_answer_errors_are_clear(dev: DevProcess) -> None:
    # a job that asked nothing
    plain = run(dev, "chat", "rice [steps=1]", "--new", "--follow").stderr
    nothing = run(dev, "answer", job_id_of(plain), "yes")
    assert nothing.returncode == 1 and "has asked nothing (it is complete)" in nothing.stderr, nothing.stderr
    # an answer that does not fit the question: refused before it is sent, the job still waits
    job_id = run(dev, "chat", PANTRY, "--new").stdout.strip()
    wait_until(lambda: json.loads(run(dev, "status", job_id, "--json").stdout)["status"] == "waiting",
               timeout=30, interval=0.2, what="the job to ask")
    status = run(dev, "status", job_id)
    assert "status       waiting" in status.stdout and "Waiting for your answer" in status.stdout
    assert job_id in run(dev, "list", "--status", "waiting").stdout
    bad = run(dev, "answer", job_id, "maybe")
    assert bad.returncode == 1 and 'error: this question takes yes or no, not "maybe"' in bad.stderr
    stale = run(dev, "answer", job_id, "yes", "--input-id", "s9q9")
    assert stale.returncode == 1 and "(stale_input, HTTP 409)" in stale.stderr, stale.stderr
    # a job that ended while it waited (cancel works while waiting)
    assert run(dev, "cancel", job_id).returncode == 0
    wait_until(lambda: json.loads(run(dev, "status", job_id, "--json").stdout)["status"] == "cancelled",
               timeout=20, interval=0.2, what="the waiting job to be cancelled")
    late = run(dev, "answer", job_id, "yes")
    assert late.returncode == 1 and "the job has already ended (job_finished, HTTP 409)" in late.stderr, late.stderr
    assert "Traceback" not in bad.stderr + stale.stderr + late.stderr
    missing = run(dev, "answer", "0" * 32, "yes")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_ctrl_c_on_chat_follow_exits_cleanly_and_the_job_goes_on(dev: DevProcess) -> None:
    # GIVEN a followed job under way
    proc = subprocess.Popen([*CLI, "chat", "soup [steps=6] [pace=0.5]", "--new", "--follow"], env=dev.cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    while not any(" step 1/6 completed" in line for line in seen):
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        seen.append(line)
    # WHEN the user hits Ctrl-C
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    # (read through the same buffered pipes: communicate() would skip what readline read ahead)
    out, err = proc.stdout.read(), proc.stderr.read() if proc.stderr else ""
    # THEN it exits 130 without a traceback, saying how to pick the job up again
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    m = re.search(r"the job goes on: alfred-jobs watch ([0-9a-f]{32}) --after (\d+)", err)
    assert m, err
    last = max(int(line.split()[0]) for line in seen + out.splitlines() if line.strip()[:1].isdigit())
    assert int(m.group(2)) == last
    # AND the job does go on, and that command follows it from there to the end
    follow = run(dev, "watch", m.group(1), "--after", m.group(2))
    assert follow.returncode == 0, follow.stderr
    seqs = [int(line.split()[0]) for line in follow.stdout.splitlines()]
    assert seqs[0] == last + 1 and "complete" in follow.stdout.splitlines()[-1]


def test_a_unique_id_prefix_is_taken_like_git(dev: DevProcess) -> None:
    job_id = run(dev, "chat", "rice [steps=1]", "--new").stdout.strip()
    # a unique prefix of 6 characters or more works for status, watch and cancel
    status = run(dev, "status", job_id[:8])
    assert status.returncode == 0 and f"job          {job_id}" in status.stdout, status.stderr
    assert run(dev, "watch", job_id[:6]).returncode == 0
    # a prefix matching none of the caller's jobs says so; a shorter one is not a prefix
    none = run(dev, "status", "f" * 31 if not job_id.startswith("f") else "0" * 31)
    assert none.returncode == 1 and "no job of yours starts with" in none.stderr
    short = run(dev, "status", job_id[:5]).stderr
    assert f"{job_id[:5]} is too short: give at least 6 characters" in short and "malformed" not in short


def test_an_ambiguous_prefix_lists_the_matches() -> None:
    from alfred_tools.api_client import ApiClient, CliError

    class Fake(ApiClient):
        def jobs(self, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
            ids = ["abcdef01" + "0" * 24, "abcdef02" + "0" * 24, "99" * 16]
            return {"jobs": [{"job_id": i, "status": "complete", "created_at": "t"} for i in ids],
                    "next_cursor": None}

    client = Fake("http://127.0.0.1:1", "t")
    assert client.resolve("abcdef01") == "abcdef01" + "0" * 24
    with pytest.raises(CliError) as err:
        client.resolve("abcdef")
    assert "ambiguous: 2 of your jobs" in str(err.value)
    assert "abcdef01" + "0" * 24 in str(err.value) and "abcdef02" + "0" * 24 in str(err.value)
    assert client.resolve("a" * 32) == "a" * 32
    with pytest.raises(CliError, match="too short"):
        client.resolve("abc")


def test_status_says_step_k_of_n_as_the_web_does_and_list_has_a_header(dev: DevProcess) -> None:
    job_id = run(dev, "chat", "stew [steps=2] [pace=6]", "--new").stdout.strip()
    token = run(dev, "token", "--user", "you").stdout.strip()

    def phase() -> str:
        job = httpx.get(f"{dev.url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}).json()
        return str(job["progress"].get("phase"))

    wait_until(lambda: phase() == "act", timeout=20, what="a step under way")
    # while step k runs (k-1 completed), status says "Step k of n", as the web page's stepOf does
    line = next(ln for ln in run(dev, "status", job_id).stdout.splitlines() if ln.startswith("progress"))
    m = re.search(r"Step (\d) of 2 — .+ \((\d) done\)", line)
    assert m and int(m.group(1)) == int(m.group(2)) + 1, line
    run(dev, "watch", job_id)
    assert "progress     2 of 2 steps done" in run(dev, "status", job_id).stdout
    listed = run(dev, "list").stdout.splitlines()
    assert listed[0].split() == ["JOB", "STATUS", "PROGRESS", "MESSAGE"]
    row = next(ln for ln in listed[1:] if ln.startswith(job_id))
    assert "2 of 2 steps done" in row and "stew [steps=2] [pace=6]" in row


def test_chat_continues_the_latest_conversation_so_the_page_shows_it(dev: DevProcess) -> None:
    # GIVEN a conversation the page started (the web client's user is the CLI's: "you")
    token = run(dev, "token", "--user", "you").stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    conv = uuid.uuid4().hex
    resp = httpx.post(f"{dev.url}/api/chat", json={"message": "from the page [steps=1]", "conversation_id": conv},
                      headers=headers)
    assert resp.status_code == 202

    def latest() -> str:
        return str(httpx.get(f"{dev.url}/api/conversations?limit=1", headers=headers).json()
                   ["conversations"][0]["conversation_id"])

    wait_until(lambda: latest() == conv, timeout=10, what="the page's conversation to be the latest")
    # WHEN the CLI sends a message without --conversation
    out = run(dev, "chat", "and from the CLI [steps=1]", "--follow")
    # THEN it went to that conversation (and said so), and the page reads both turns there
    assert out.returncode == 0, out.stderr
    assert f"conversation {conv}; continues your latest conversation; --new starts another" in out.stderr
    turns = httpx.get(f"{dev.url}/api/conversations/{conv}", headers=headers).json()["messages"]
    assert [m["text"] for m in turns if m["role"] == "user"] == ["from the page [steps=1]",
                                                                 "and from the CLI [steps=1]"]
    # AND --new starts another, which is then the latest
    fresh = run(dev, "chat", "something new [steps=1]", "--new", "--json")
    assert fresh.returncode == 0 and json.loads(fresh.stdout)["conversation_id"] != conv
    wait_until(lambda: latest() == json.loads(fresh.stdout)["conversation_id"], timeout=10,
               what="the new conversation to be the latest")


def test_hints_run_as_printed_through_run_sh(dev: DevProcess) -> None:
    # run.sh exports how it was started; a hint names it (a cancelled, never-started job's status)
    busy_conv = uuid.uuid4().hex
    first = run(dev, "chat", "a long one [steps=3] [pace=2]", "--conversation", busy_conv).stdout.strip()
    refused = run(dev, "chat", "and this", "--conversation", busy_conv, "--multitask", "reject",
                  ALFRED_CLI_COMMAND="./run.sh")
    assert refused.returncode == 1 and f"or follow it: ./run.sh watch {first}" in refused.stderr
    run(dev, "cancel", first)
