"""The HTTP client of the CLI and the demo: the job API, SSE with reconnect from the last seq and a
long-poll fallback, and a renderer of events for a terminal (``alfred-jobs chat --follow``).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from alfred_jobs.domain.events import DeltaPayload, apply_delta
from alfred_jobs.service.auth import issue_local_token
from alfred_jobs.settings import Settings

TERMINAL_TYPES = {"complete", "failed", "cancelled"}
TERMINAL_STATUSES = {"complete", "failed", "cancelled"}
YES = {"yes", "y", "true"}
NO = {"no", "n", "false"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
MIN_PREFIX = 6  # the shortest job id prefix taken for a whole id


# ---- errors -----------------------------------------------------------------------------


class CliError(Exception):
    """Ends the command with a message and an exit code."""

    exit_code = 1


class ApiError(CliError):
    """The API answered with an error (its ``{"error": {code, message}}`` shape).

    ``job_id``: the conversation's active job, on a 409 ``conversation_busy``. ``retry_after``:
    the ``Retry-After`` header in seconds, when the answer had one (a 429, a 503).
    """

    def __init__(self, status: int, code: str, message: str, *, job_id: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.job_id = job_id
        self.retry_after = retry_after


class Unreachable(CliError):
    """The API could not be reached at all."""


def unreachable(base_url: str, exc: Exception) -> Unreachable:
    """``Unreachable`` for ``exc``; for an API on this machine that refused the connection, how to start it."""
    reason = str(exc) or type(exc).__name__
    hint = ""
    if isinstance(exc, httpx.ConnectError) and (urlsplit(base_url).hostname or "") in LOOPBACK:
        hint = ("\n  is the local system running? start it in another terminal: ./run.sh (from the repository), "
                "or alfred-jobs dev\n  (running it on another port? export ALFRED_API_URL=http://127.0.0.1:PORT)")
    return Unreachable(f"cannot reach the API at {base_url}: {reason}{hint}")


# ---- the HTTP client --------------------------------------------------------------------


DEFAULT_USER = "you"  # the web client's default user too: what the CLI submits shows up there


def default_user() -> str:
    """The user of the implicit local token (see the module docstring)."""
    return DEFAULT_USER


def resolve_token(settings: Settings) -> str:
    """``ALFRED_TOKEN``, or a freshly minted local token when the API is on this machine."""
    if settings.token:
        return settings.token
    host = urlsplit(settings.api_url).hostname or ""
    if host in LOOPBACK:
        return issue_local_token(settings, default_user())
    raise CliError(f"set ALFRED_TOKEN to call {settings.api_url} (alfred-jobs token --user NAME "
                   "prints a local one)")


def _retry_after(resp: httpx.Response) -> int | None:
    """``Retry-After`` in seconds (the API sends seconds, never an HTTP date)."""
    value = resp.headers.get("Retry-After", "").strip()
    return int(value) if value.isdigit() else None


def _api_error(resp: httpx.Response) -> ApiError:
    try:
        err = resp.json()["error"]
        job_id = err.get("job_id")
        return ApiError(resp.status_code, str(err["code"]), str(err["message"]),
                        job_id=job_id if isinstance(job_id, str) else None,
                        retry_after=_retry_after(resp))
    except (ValueError, KeyError, TypeError, AttributeError):
        text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else resp.reason_phrase
        return ApiError(resp.status_code, "http_error", text or f"HTTP {resp.status_code}")


@dataclass
class ApiClient:
    """The job API over HTTP (``ALFRED_API_URL``, bearer ``ALFRED_TOKEN``)."""

    base_url: str
    token: str
    timeout: float = 30.0
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                 headers={"Authorization": f"Bearer {self.token}"})

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        return cls(settings.api_url, resolve_token(settings))

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; an error status becomes ``ApiError``, no answer at all ``Unreachable``."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        if resp.status_code >= 400:
            raise _api_error(resp)
        return resp.json()

    def submit(self, message: str, conversation_id: str | None = None,
               idempotency_key: str | None = None, multitask: str | None = None) -> dict[str, Any]:
        """``POST /api/chat``. ``multitask`` (enqueue, reject, interrupt, steer) says what to do if the
        conversation has a job under way; None leaves it to the server (enqueue)."""
        body: dict[str, Any] = {"message": message}
        if conversation_id:
            body["conversation_id"] = conversation_id
        if multitask:
            body["multitask"] = multitask
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self.request("POST", "/api/chat", json=body, headers=headers)
        return result

    def resolve(self, ident: str) -> str:
        """A job id from a unique prefix of one of the caller's jobs (at least ``MIN_PREFIX``
        characters, as git takes a commit); a full id, or anything shorter, is left to the server."""
        ident = ident.strip().lower()
        if not (MIN_PREFIX <= len(ident) < 32) or any(c not in "0123456789abcdef" for c in ident):
            return ident
        matches: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self.jobs(limit=100, cursor=cursor)
            matches += [j for j in page["jobs"] if str(j["job_id"]).startswith(ident)]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        if len(matches) == 1:
            return str(matches[0]["job_id"])
        if not matches:
            raise CliError(f"no job of yours starts with {ident} (see them: alfred-jobs list)")
        shown = "".join(f"\n  {j['job_id']}  {j['status']:<9}  {j.get('created_at')}" for j in matches[:10])
        more = f"\n  … and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise CliError(f"{ident} is ambiguous: {len(matches)} of your jobs start with it; give more of the id:"
                       f"{shown}{more}")

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/jobs/{job_id}")
        return result

    def jobs(self, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        result: dict[str, Any] = self.request("GET", "/api/jobs", params=params)
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/api/jobs/{job_id}/cancel")
        return result

    def answer(self, job_id: str, input_id: str, answer: bool | str) -> tuple[int, dict[str, Any]]:
        """``POST /api/jobs/{id}/input``: (202, job) when the answer was taken and the job goes on,
        (200, job) for the same answer again; an error status is an ``ApiError`` (409, 400)."""
        try:
            resp = self.http.post(f"/api/jobs/{job_id}/input", json={"input_id": input_id, "answer": answer})
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        if resp.status_code >= 400:
            raise _api_error(resp)
        return resp.status_code, dict(resp.json())

    def all_events(self, job_id: str) -> list[dict[str, Any]]:
        """Every event of the job so far (long-poll pages read with no wait)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self.events(job_id, out[-1]["seq"] if out else 0, wait=0)
            if not page["events"]:
                return out
            out.extend(page["events"])

    def events(self, job_id: str, after: int, wait: float = 20.0) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/jobs/{job_id}/events",
                                              params={"after": after, "wait": wait},
                                              timeout=wait + 15)
        return result

    def absolute(self, url: str) -> str:
        """``links.stream`` may be relative (same origin) or absolute (a separate stream function)."""
        return url if urlsplit(url).scheme else f"{self.base_url}{url}"


# ---- following a job: SSE with resume, long-poll as the fallback ----------------------------


class StreamUnavailable(Exception):
    """The stream endpoint is missing or does not speak SSE: use long-poll."""


class StreamAuthExpired(Exception):
    """The job-scoped stream token was refused: fetch the job again for a fresh link."""


class Dropped(Exception):
    """The connection ended before the job's terminal event."""


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None, int | None]]:
    """SSE frames as ``(event, data, id, retry_ms)``; comments (heartbeats) are skipped."""
    event, ident, retry = "message", None, None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield event, "\n".join(data), ident, retry
            event, data, retry = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value
        elif name == "retry" and value.isdigit():
            retry = int(value)


@dataclass
class Follower:
    """Yields a job's events in order from ``after``, reconnecting by itself with the last seq.

    ``transport``: ``auto`` (SSE, falling back to long-poll if the stream is unavailable),
    ``sse`` or ``poll``. With ``dedupe`` (the default) an event already seen is reported through
    ``notice`` and not yielded again; the client never shows anything twice.
    """

    client: ApiClient
    notice: Callable[[str], None] = lambda msg: None
    transport: str = "auto"
    dedupe: bool = True
    give_up_after: float = 120.0
    reconnects: int = 0
    duplicates: int = 0
    gaps: int = 0
    retry_ms: int = 500

    def follow(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        job = self.client.job(job_id)  # a missing job is an ApiError here, not a reconnect loop
        link = self.client.absolute(job["links"]["stream"])
        mode = "poll" if self.transport == "poll" else "sse"
        last = after
        failing_since: float | None = None
        delay = 0.2
        while True:
            try:
                source = self._sse(link, last) if mode == "sse" else self._poll(job_id, last)
                for ev in source:
                    failing_since, delay = None, 0.2
                    seq = int(ev["seq"])
                    if self.dedupe and seq <= last:
                        self.duplicates += 1
                        self.notice(f"warning: seq {seq} received again; skipped")
                        continue
                    if seq != last + 1:
                        self.gaps += 1
                        self.notice(f"warning: expected seq {last + 1}, got {seq}")
                    last = max(last, seq) if self.dedupe else seq
                    yield ev
                    if ev["type"] in TERMINAL_TYPES:
                        return
                if mode == "poll":
                    continue  # a long-poll came back empty or partial: ask again
                # Closed without a terminal event: a drop, unless we resumed after the end.
                state = self.client.job(job_id)
                if state["status"] in TERMINAL_STATUSES and int(state["last_seq"]) <= last:
                    raise AlreadyOver(state["status"])
                raise Dropped("the stream closed before the job ended")
            except StreamUnavailable as exc:
                if self.transport == "sse":
                    raise CliError(f"the stream is unavailable: {exc}") from None
                self.notice(f"stream unavailable ({exc}); long-polling instead")
                mode = "poll"
            except StreamAuthExpired:
                link = self.client.absolute(self.client.job(job_id)["links"]["stream"])
                failing_since = failing_since or time.monotonic()
            except (httpx.TransportError, Dropped, Unreachable) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.give_up_after:
                    raise Unreachable(f"gave up reconnecting after {self.give_up_after:g}s: {exc}") from None
                self.reconnects += 1
                pause = max(delay, self.retry_ms / 1000) if mode == "sse" else delay
                self.notice(f"connection lost ({exc or type(exc).__name__}); "
                            f"reconnecting from seq {last} in {pause:.1f}s")
                time.sleep(pause)
                delay = min(5.0, delay * 2)

    def _sse(self, url: str, after: int) -> Iterator[dict[str, Any]]:
        target = httpx.URL(url).copy_merge_params({"after": str(after)})
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        # The server sends a heartbeat at least every 15 s: a 45 s silence is a dead connection.
        timeout = httpx.Timeout(10.0, read=45.0)
        with self.client.http.stream("GET", target, headers=headers, timeout=timeout) as resp:
            if resp.status_code == 401:
                raise StreamAuthExpired()
            if resp.status_code in (404, 405, 501):
                raise StreamUnavailable(f"HTTP {resp.status_code} from {target.path}")
            if resp.status_code >= 500:
                raise Dropped(f"HTTP {resp.status_code}")
            if resp.status_code >= 400:
                resp.read()
                raise _api_error(resp)
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                raise StreamUnavailable(f"not an event stream ({resp.headers.get('content-type')})")
            for _event, data, _ident, retry in parse_sse(resp.iter_lines()):
                if retry is not None:
                    self.retry_ms = retry
                try:
                    ev = json.loads(data)
                except ValueError:
                    continue
                if isinstance(ev, dict) and "seq" in ev:
                    yield ev

    def _poll(self, job_id: str, after: int) -> Iterator[dict[str, Any]]:
        page = self.client.events(job_id, after, wait=20)
        yield from page["events"]
        if page.get("done") and not page["events"]:
            # Done, and nothing after our cursor: the terminal event is behind us already.
            raise AlreadyOver(str(page.get("status", "")))


# ---- questions (the job asks, the user answers) -------------------------------------------------


def last_question(events: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    """The job's latest question (``input_required`` event) and whether it has an answer in the log."""
    question: dict[str, Any] | None = None
    answered = False
    for ev in events:
        if ev["type"] == "input_required":
            question, answered = ev, False
        elif ev["type"] == "input_received" and question is not None \
                and (ev.get("data") or {}).get("input_id") == question["data"].get("input_id"):
            answered = True
    return question, answered


def expected_answers(q: dict[str, Any]) -> str:
    """What a question takes, in words (``q``: an ``input_required`` event's data)."""
    if q.get("kind") == "confirm":
        return "yes or no"
    if q.get("kind") == "choice":
        return "one of " + ", ".join(json.dumps(o, ensure_ascii=False) for o in q.get("options") or [])
    return "any text"


def parse_answer(q: dict[str, Any], text: str) -> bool | str:
    """The answer to send for what the user typed: a bool for confirm (yes/no/y/n/true/false), one
    of the options for choice (or its number, 1-based), the text itself otherwise."""
    kind, word = q.get("kind"), text.strip()
    if kind == "confirm":
        if word.lower() in YES:
            return True
        if word.lower() in NO:
            return False
        raise CliError(f"this question takes yes or no, not {json.dumps(text, ensure_ascii=False)}")
    if kind == "choice":
        options = [str(o) for o in q.get("options") or []]
        if word in options:
            return word
        folded = [o for o in options if o.casefold() == word.casefold()]
        if len(folded) == 1:
            return folded[0]
        if word.isdigit() and 1 <= int(word) <= len(options):
            return options[int(word) - 1]
        raise CliError(f"this question takes {expected_answers(q)} (or its number)")
    if not word:
        raise CliError("the answer is empty")
    return text


def show_answer(answer: Any) -> str:
    """An answer as the user would say it."""
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    return str(answer)


def answer_command(job_id: str, q: dict[str, Any]) -> str:
    """The ``alfred-jobs answer`` command lines for a question, one per possible answer when few."""
    if q.get("kind") == "confirm":
        choices = ["yes", "no"]
    elif q.get("kind") == "choice":
        choices = [str(o) for o in q.get("options") or []]
    else:
        choices = ["YOUR ANSWER"]
    return "\n".join(f"  alfred-jobs answer {job_id} {shlex.quote(c)}" for c in choices[:6])


def question_hint(job_id: str, q: dict[str, Any]) -> str:
    """The question and how to answer it, for output that is not a terminal we may prompt on."""
    return (f"Alfred asks: {q.get('prompt')} ({expected_answers(q)})\n"
            f"answer it with one of:\n{answer_command(job_id, q)}\n"
            f"the job waits for the answer (until {q.get('expires_at')})")


class AlreadyOver(Exception):
    """Following from a cursor at or past the terminal event: there is nothing more to show."""


# ---- rendering ------------------------------------------------------------------------------


class Renderer:
    """Shows events: a live display on a terminal, one line per event otherwise, or JSON lines."""

    def __init__(self, out: TextIO, mode: str) -> None:
        self.out = out
        self.mode = mode  # "tty" | "plain" | "json"
        self.open_line = False
        self.in_reply = False
        self.status: str | None = None
        self.reply = ""  # the reply text the deltas show so far (``apply_delta``)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _line(self, text: str) -> None:
        if self.open_line or self.in_reply:
            self._write("\n")
            self.open_line = self.in_reply = False
        self._write(text + "\n")

    def event(self, ev: dict[str, Any]) -> None:
        t, d = ev["type"], ev.get("data") or {}
        if t in TERMINAL_TYPES:
            self.status = t
        delta = DeltaPayload.model_validate(d) if t == "delta" else None
        if delta is not None:
            self.reply = apply_delta(self.reply, delta)
        if self.mode == "json":
            self._write(json.dumps(ev, ensure_ascii=False) + "\n")
        elif self.mode == "plain":
            self._write(f"{ev['seq']} {t} {summarize(t, d)}\n")
        elif delta is not None:
            self._tty_delta(delta)
        else:
            self._tty(t, d)

    def _tty_delta(self, delta: DeltaPayload) -> None:
        if self.open_line:
            self._write("\n")
            self.open_line = False
        if delta.replace:  # the reply starts over: show it whole
            self._write("\n[reply restarted]\n" + self.reply)
        else:
            self._write(delta.text)
        self.in_reply = True

    def _tty(self, t: str, d: dict[str, Any]) -> None:
        if t == "status":
            extra = f" (retry in {d['retry_in']}s: {d['error']['message']})" if d.get("error") else ""
            self._line({"pending": "… queued", "running": "▶ running"}.get(d.get("status", ""),
                                                                          str(d.get("status"))) + extra)
            if d.get("status") == "running":
                self._line("… thinking")  # a job starts by thinking: no ``phase`` event says so
        elif t == "phase":
            if d.get("phase") == "think":
                self._line("… thinking")
            elif d.get("phase") == "reply":
                self._line("✎ reply:")
        elif t == "plan":
            self._line(f"  plan: {d.get('total_steps')} steps")
            nxt = d.get("next")
            if isinstance(nxt, dict):  # the first step started with the plan
                self._write(f"  ◦ {nxt.get('index')}/{d.get('total_steps')} {nxt.get('label')}…")
                self.open_line = True
        elif t == "step":
            text = f"{d.get('index')}/{d.get('total')} {d.get('label')}"
            if d.get("status") == "started":
                if self.open_line or self.in_reply:
                    self._write("\n")
                    self.in_reply = False
                self._write(f"  ◦ {text}…")
                self.open_line = True
            else:
                self._write(("\r\033[K" if self.open_line else "") + f"  ✓ {text}\n")
                self.open_line = False
                nxt = d.get("next")
                if isinstance(nxt, dict):  # the next step started with this one's completion
                    self._write(f"  ◦ {nxt.get('index')}/{d.get('total')} {nxt.get('label')}…")
                    self.open_line = True
        elif t == "input_required":
            self._line(f"? {d.get('prompt')}")
        elif t == "input_received":
            self._line(f"  ✓ answered: {show_answer(d.get('answer'))}")
        elif t == "resumed":
            self._line(f"↻ resumed by attempt {d.get('attempt')} (after seq {d.get('from_seq')})")
        elif t == "complete":
            self._line("✓ complete")
        elif t == "failed":
            err = d.get("error") or {}
            self._line(f"✗ failed: {err.get('message')} ({err.get('code')})")
        elif t == "cancelled":
            self._line("■ cancelled" + (f" (interrupted by job {d.get('by')})" if interrupted(d) else ""))


def interrupted(d: dict[str, Any]) -> bool:
    """A cancel made by a later job of the conversation (``multitask: interrupt``)."""
    return d.get("reason") == "interrupted"


def summarize(t: str, d: dict[str, Any]) -> str:
    """One line of text for an event (plain output)."""
    if t == "status":
        return str(d.get("status")) + (f" retry_in={d['retry_in']}" if "retry_in" in d else "")
    if t == "phase":
        return str(d.get("phase"))
    if t == "plan":
        nxt = d.get("next")
        then = f"; step {nxt.get('index')}/{d.get('total_steps')} started: {nxt.get('label')}" \
            if isinstance(nxt, dict) else ""
        return f"{d.get('total_steps')} steps{then}"
    if t == "step":
        nxt = d.get("next")
        then = f"; step {nxt.get('index')}/{d.get('total')} started: {nxt.get('label')}" \
            if isinstance(nxt, dict) else ""
        return f"{d.get('index')}/{d.get('total')} {d.get('status')}: {d.get('label')}{then}"
    if t == "delta":
        delta = DeltaPayload.model_validate(d)
        return ("replace " if delta.replace else "") + json.dumps(delta.text, ensure_ascii=False)
    if t == "input_required":
        options = f" [{'|'.join(str(o) for o in d.get('options') or [])}]" if d.get("options") else ""
        return f"{d.get('kind')} {d.get('input_id')}: {d.get('prompt')}{options}"
    if t == "input_received":
        return f"{d.get('input_id')} = {show_answer(d.get('answer'))}"
    if t == "resumed":
        return f"attempt={d.get('attempt')} from_seq={d.get('from_seq')}"
    if t == "complete":  # one line per event: a reply's lines are joined
        return " ".join(str((d.get("output") or {}).get("reply", "")).split("\n"))
    if t == "failed":
        err = d.get("error") or {}
        return f"{err.get('code')}: {err.get('message')}"
    if t == "cancelled" and interrupted(d):
        return f"interrupted by={d.get('by')}"
    return json.dumps(d, ensure_ascii=False) if d else ""
