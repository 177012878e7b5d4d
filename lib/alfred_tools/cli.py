"""``alfred-jobs``: run the system locally, and a real HTTP client of the job API.

Exit codes: 0 success (a followed job completed); 1 an API error (its message is printed; a
refused ``chat``, conversation busy or too many jobs, says what to do next), an unreachable API,
or a followed job that ended failed or cancelled; 2 bad usage.

Identity for the client commands: ``ALFRED_TOKEN`` when set. Otherwise, and only when
``ALFRED_API_URL`` is on this machine (localhost, 127.0.0.1, ::1), a local token is minted for
the user ``you`` (the web client's default user, so both show the same jobs) with the local
signing key — what ``alfred-jobs token --user you`` prints — so ``alfred-jobs dev`` plus
``alfred-jobs chat`` work with no set-up. A remote API always needs ``ALFRED_TOKEN``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from alfred_jobs.entry.wiring import get_settings
from alfred_jobs.service.auth import issue_local_token
from alfred_tools.api_client import (
    TERMINAL_STATUSES,
    AlreadyOver,
    ApiClient,
    ApiError,
    CliError,
    Follower,
    Renderer,
    last_question,
    parse_answer,
    question_hint,
    show_answer,
)


def output_mode(args: argparse.Namespace, out: TextIO) -> str:
    if getattr(args, "json", False):
        return "json"
    return "tty" if out.isatty() else "plain"


def progress_text(job: dict[str, Any]) -> str:
    """Where a job is, in the web page's words: a running job is on "Step k of n" from the moment
    step k starts (k = completed + 1), with its label; an ended one says how many steps were done."""
    p = job.get("progress") or {}
    n, done = int(p.get("total_steps") or 0), int(p.get("completed_steps") or 0)
    if not n:
        return ""
    if job["status"] in TERMINAL_STATUSES:
        return f"{done} of {n} steps done"
    if job["status"] == "waiting":
        return f"Waiting for your answer (Step {min(n, done + 1)} of {n}, {done} done)"
    if p.get("phase") == "reply":
        return f"Writing the reply ({done} of {n} steps done)"
    label = f" — {p['label']}" if p.get("label") else ""
    return f"Step {min(n, done + 1)} of {n}{label} ({done} done)"


def describe_job(job: dict[str, Any]) -> str:
    """A job in a few lines (``status``)."""
    lines = [f"job          {job['job_id']}",
             f"status       {job['status']}" + ("  (cancel requested)" if job.get("cancel_requested")
                                                 and job["status"] not in TERMINAL_STATUSES else ""),
             f"conversation {job.get('conversation_id')}",
             f"created      {job.get('created_at')}"]
    if progress_text(job):
        lines.append(f"progress     {progress_text(job)}")
    lines.append(f"attempts     {job.get('attempts')}    events {job.get('last_seq')}")
    if job.get("output"):
        lines.append(f"reply        {job['output'].get('reply', '')}")
    if job.get("error"):
        lines.append(f"error        {job['error'].get('code')}: {job['error'].get('message')}")
    return "\n".join(lines)


# ---- commands -------------------------------------------------------------------------------


def _client() -> ApiClient:
    return ApiClient.from_settings(get_settings())


# ---- questions: the job asks, the user answers ------------------------------------------------


def answer_refusal(exc: ApiError, job_id: str) -> CliError | None:
    """A clearer message for a 409 to an answer, or None."""
    why = {"input_answered": "this question was already answered, with another answer",
           "stale_input": "this question is not the one the job is waiting for any more",
           "input_expired": "this question expired unanswered; the job gave up (input_timeout)",
           "job_finished": "the job has already ended"}.get(exc.code)
    if why is None:
        return None
    return CliError(f"{why} ({exc.code}, HTTP {exc.status})\n  see it: alfred-jobs status {job_id}")


def question_open(client: ApiClient, job_id: str, seq: int) -> bool:
    """Whether the job still waits on the question at ``seq`` (nothing came after it)."""
    try:
        job = client.job(job_id)
    except CliError:
        return True  # cannot tell: keep asking; the follower reports the connection
    return job["status"] == "waiting" and int(job["last_seq"]) <= seq


def read_line(fd: int, still_open: Callable[[], bool], check_every: float = 2.0) -> str | None:
    """One line typed on the terminal ``fd``; '' at end of input; None once ``still_open`` says
    the question was answered elsewhere (checked every ``check_every`` seconds)."""
    next_check = time.monotonic() + check_every
    while True:
        ready, _, _ = select.select([fd], [], [], 0.25)
        if ready:
            return os.read(fd, 65536).decode(errors="replace")
        if time.monotonic() >= next_check:
            if not still_open():
                return None
            next_check = time.monotonic() + check_every


def ask_in_terminal(client: ApiClient, job_id: str, ev: dict[str, Any], fd: int, out: TextIO) -> None:
    """Prompt for the answer (y/n, a numbered choice, or a line) and post it. Returns when it was
    taken, when the question was answered elsewhere or ended, or at the end of input (then the
    answer command is shown: the job keeps waiting)."""
    q, seq = ev["data"], int(ev["seq"])
    options = [str(o) for o in q.get("options") or []]
    if q.get("kind") == "choice":
        out.write("".join(f"    {i}) {o}\n" for i, o in enumerate(options, 1)))
    prompt = {"confirm": "  answer [y/n]: ", "choice": f"  choose 1-{len(options)}: "}.get(
        str(q.get("kind")), "  your answer: ")
    while True:
        out.write(prompt)
        out.flush()
        line = read_line(fd, lambda: question_open(client, job_id, seq))
        if line is None:
            out.write("\n  (answered elsewhere, or the job moved on)\n")
            return
        if line == "":
            out.write("\n" + question_hint(job_id, q) + "\n")
            return
        if not line.strip():
            continue
        try:
            client.answer(job_id, q["input_id"], parse_answer(q, line.rstrip("\r\n")))
            return  # taken (202) or the same answer already (200): input_received follows
        except ApiError as exc:
            refusal = answer_refusal(exc, job_id)
            out.write(f"  {refusal or exc.message}\n")
            if refusal is not None:
                return
        except CliError as exc:
            out.write(f"  {exc}\n")


def on_question(client: ApiClient, job_id: str, ev: dict[str, Any], renderer: Renderer) -> None:
    """A followed job asked: prompt on a terminal, else show how to answer (the job waits)."""
    if not question_open(client, job_id, int(ev["seq"])):
        return  # answered or ended already: what followed is in the log
    if renderer.mode == "tty" and sys.stdin.isatty():
        ask_in_terminal(client, job_id, ev, sys.stdin.fileno(), sys.stdout)
    else:
        print(question_hint(job_id, ev["data"]), file=sys.stdout if renderer.mode == "tty" else sys.stderr,
              flush=True)


def _watch(client: ApiClient, job_id: str, after: int, args: argparse.Namespace) -> int:
    renderer = Renderer(sys.stdout, output_mode(args, sys.stdout))
    follower = Follower(client, notice=lambda m: print(m, file=sys.stderr, flush=True),
                        transport=args.transport)
    last = after
    # Ctrl-C while an event is being shown waits until it is shown and counted, so the command
    # printed below resumes exactly after the last event on the screen (none lost, none twice).
    state = {"showing": False, "interrupted": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if state["showing"]:
            state["interrupted"] = True
            return
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (embedded use): Ctrl-C is not ours to handle
        previous = None
    try:
        for ev in follower.follow(job_id, after):
            state["showing"] = True
            renderer.event(ev)
            last = max(last, int(ev["seq"]))
            state["showing"] = False
            if state["interrupted"]:
                raise KeyboardInterrupt
            if ev["type"] == "input_required":
                on_question(client, job_id, ev, renderer)
    except AlreadyOver:
        pass
    except KeyboardInterrupt:
        # Only this client stops: the job runs on the server; say how to pick it up again.
        if renderer.mode == "tty" and (renderer.open_line or renderer.in_reply):
            sys.stdout.write("\n")
            sys.stdout.flush()
        print(f"\nstopped following; the job goes on: alfred-jobs watch {job_id} --after {last}",
              file=sys.stderr, flush=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    status = renderer.status
    if status is None:  # resumed after the end: the job record says how it ended
        job = client.job(job_id)
        status = job["status"]
        if renderer.mode != "json":
            print(f"job already {status}" + (f": {job['output'].get('reply', '')}"
                                             if job.get("output") else ""))
    return 0 if status == "complete" else 1


def submit_refusal(exc: ApiError) -> CliError | None:
    """A clearer message for the two refusals of a submit that the caller can act on, or None."""
    if exc.code == "conversation_busy":
        active = exc.job_id or "?"
        return CliError(f"this conversation has a job under way: {active} (conversation_busy, HTTP 409)\n"
                        "  send anyway with --multitask enqueue (runs after it) or --multitask interrupt "
                        "(stops it),\n"
                        f"  or follow it: alfred-jobs watch {active}")
    if exc.code == "too_many_jobs":
        wait = f"try again in {exc.retry_after} s" if exc.retry_after else "try again later"
        return CliError(f"{exc.message} (too_many_jobs, HTTP 429); {wait}\n"
                        "  see them: alfred-jobs list --status active")
    return None


def cmd_chat(args: argparse.Namespace) -> int:
    client = _client()
    try:
        job = client.submit(args.message, args.conversation, args.idempotency_key, args.multitask)
    except ApiError as exc:
        raise submit_refusal(exc) or exc from None
    note = sys.stderr if args.json or not sys.stdout.isatty() else sys.stdout
    if "steered" in job:
        print(f"Added to the running job {job['job_id']}: it takes your message at its next step."
              if job["steered"] else
              f"Queued as a new job {job['job_id']}: the job under way had already begun its reply.",
              file=note if args.follow else sys.stderr, flush=True)
    if not args.follow:
        print(json.dumps(job) if args.json else job["job_id"])
        return 0
    print(f"job {job['job_id']} (conversation {job['conversation_id']})", file=note, flush=True)
    return _watch(client, job["job_id"], 0, args)


def cmd_watch(args: argparse.Namespace) -> int:
    client = _client()
    return _watch(client, client.resolve(args.job_id), args.after, args)


def cmd_status(args: argparse.Namespace) -> int:
    client = _client()
    job = client.job(client.resolve(args.job_id))
    print(json.dumps(job, indent=2) if args.json else describe_job(job))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    page = _client().jobs(args.status, args.limit, args.cursor)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    if not page["jobs"]:
        print("no jobs")
    else:
        print(f"{'JOB':<32}  {'STATUS':<9}  {'CREATED':<24}  {'STEPS':<5}  LABEL")
    for job in page["jobs"]:
        p = job.get("progress") or {}
        steps = f"{p.get('completed_steps')}/{p.get('total_steps')}" if p.get("total_steps") else "-"
        print(f"{job['job_id']:<32}  {job['status']:<9}  {job['created_at']:<24}  {steps:<5}  "
              f"{p.get('label') or ''}".rstrip())
    if page.get("next_cursor"):
        print(f"more: alfred-jobs list --cursor {page['next_cursor']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    client = _client()
    job = client.cancel(client.resolve(args.job_id))
    if args.json:
        print(json.dumps(job))
    elif job["status"] == "cancelled":
        print(f"{job['job_id']} cancelled")
    else:
        print(f"{job['job_id']} cancel requested (takes effect at the next step boundary)")
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    client = _client()
    args.job_id = client.resolve(args.job_id)
    question, _answered = last_question(client.all_events(args.job_id))
    if question is None:
        status = client.job(args.job_id)["status"]
        raise CliError(f"job {args.job_id} has asked nothing (it is {status})")
    q = question["data"]
    input_id = args.input_id or q["input_id"]
    answer = parse_answer(q, args.answer)
    try:
        code, job = client.answer(args.job_id, input_id, answer)
    except ApiError as exc:
        if exc.code == "invalid_answer":
            raise CliError(f"{exc.message} (invalid_answer, HTTP 400)") from None
        raise answer_refusal(exc, args.job_id) or exc from None
    if args.json:
        print(json.dumps(job))
    elif code == 202:
        print(f"answered: {show_answer(answer)} (to \"{q.get('prompt')}\"); Alfred goes on\n"
              f"  follow it: alfred-jobs watch {args.job_id} --after {question['seq']}")
    else:
        print(f"already answered: {show_answer(answer)} (the same answer; nothing changed)")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    try:
        print(issue_local_token(get_settings(), args.user, int(args.days * 86400)))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from alfred_tools.devstack import run_dev

    return run_dev(get_settings(), host=args.host, port=args.port, emulator_port=args.emulator_port,
                   workers=args.workers)


def cmd_worker(args: argparse.Namespace) -> int:
    from alfred_tools.local_worker import run_worker_threads

    settings = get_settings()
    where = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    print(f"worker: {args.concurrency} poller(s) on queue {settings.queue_name} at {where}; "
          "Ctrl-C stops", flush=True)
    run_worker_threads(settings, args.concurrency)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alfred_tools.demo import run_demo

    return run_demo()


def cmd_doctor(args: argparse.Namespace) -> int:
    """Whether the configured Bedrock model is reachable by the worker; exit 1 when a problem is found."""
    import boto3

    from alfred_tools.doctor import Target, diagnose, role_arn_of

    settings = get_settings()
    region = args.region or settings.bedrock_region or settings.region
    # The operator's own credentials and endpoints, as the AWS CLI would resolve them.
    session = boto3.session.Session()
    bedrock = session.client("bedrock", region_name=region)
    iam = session.client("iam", region_name=region) if args.role else None
    role = role_arn_of(args.role, session.client("sts", region_name=region), region) if args.role else None
    target = Target(model_id=args.model or settings.bedrock_model_id, region=region, role_arn=role,
                    foundation_model_id=args.foundation_model or None)
    report = diagnose(target, bedrock=bedrock, iam=iam)
    print(report.as_json() if args.json else report.render())
    return 1 if report.problems else 0


def cmd_bench(args: argparse.Namespace) -> int:
    # Imported only when asked for: the benchmarks pull in their own dependencies.
    if importlib.util.find_spec("alfred_tools.bench") is None:
        raise CliError("the benchmarks are not part of this installation (alfred_tools.bench is missing)")
    bench = importlib.import_module("alfred_tools.bench")
    result = bench.main(args)
    return int(result or 0)


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


ID_HELP = "a job id, or a unique prefix of one of your jobs' ids (6 characters or more, as git takes a commit)"


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="alfred-jobs", description="Durable background jobs for Alfred.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("dev", help="the whole system on this machine (emulator, API, stream, workers, web)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--emulator-port", type=int, default=0, help="moto server port (default: any free one)")
    d.add_argument("--workers", type=_positive, default=2, help="worker processes (default 2)")
    d.set_defaults(func=cmd_dev)

    w = sub.add_parser("worker", help="a worker pool polling the queue, as the Lambda event source would")
    w.add_argument("--concurrency", type=_positive, default=2)
    w.set_defaults(func=cmd_worker)

    def follow_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--transport", choices=["auto", "sse", "poll"], default="auto",
                        help="how to follow: SSE with long-poll fallback (auto), or only one")
        sp.add_argument("--json", action="store_true", help="print events as JSON lines")

    c = sub.add_parser("chat", help="submit a message as a job")
    c.add_argument("message")
    c.add_argument("--follow", "-f", action="store_true", help="show progress live until the job ends")
    c.add_argument("--conversation", metavar="ID")
    c.add_argument("--idempotency-key", metavar="KEY")
    c.add_argument("--multitask", choices=["enqueue", "reject", "interrupt", "steer"],
                   help="if the conversation has a job under way: run after it (the server's default), "
                        "refuse, stop it, or add the message to it (steer: if it is already replying, "
                        "the message is queued as a new job instead; the command says which)")
    follow_opts(c)
    c.set_defaults(func=cmd_chat)

    s = sub.add_parser("status", help="a job's status, progress and result")
    s.add_argument("job_id", metavar="ID", help=ID_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    ls = sub.add_parser("list", help="your jobs, newest first")
    ls.add_argument("--status", choices=["pending", "running", "waiting", "complete", "failed", "cancelled",
                                         "active"])
    ls.add_argument("--limit", type=_positive, default=20)
    ls.add_argument("--cursor")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    wa = sub.add_parser("watch", help="follow a job's events live (resumes after a dropped connection)")
    wa.add_argument("job_id", metavar="ID", help=ID_HELP)
    wa.add_argument("--after", type=int, default=0, metavar="N", help="start after seq N")
    follow_opts(wa)
    wa.set_defaults(func=cmd_watch)

    ca = sub.add_parser("cancel", help="cancel a job")
    ca.add_argument("job_id", metavar="ID", help=ID_HELP)
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=cmd_cancel)

    an = sub.add_parser("answer", help="answer the question a job is waiting on")
    an.add_argument("job_id", metavar="ID", help=ID_HELP)
    an.add_argument("answer", metavar="ANSWER",
                    help="yes/no (true/false) for a confirm, one of the options (or its number) for a choice, "
                         "else any text")
    an.add_argument("--input-id", metavar="QID", help="the question's input_id (default: its latest question)")
    an.add_argument("--json", action="store_true", help="print the job object")
    an.set_defaults(func=cmd_answer)

    t = sub.add_parser("token", help="print a local API token")
    t.add_argument("--user", required=True)
    t.add_argument("--days", type=float, default=30.0, help="validity (default 30 days)")
    t.set_defaults(func=cmd_token)

    de = sub.add_parser("demo", help="the phone-lock story end to end on an embedded stack")
    de.set_defaults(func=cmd_demo)

    dr = sub.add_parser("doctor", help="can the worker call its Bedrock model? (model, lifecycle, access, IAM)")
    dr.add_argument("--model", metavar="ID", help="model or inference profile id (default: ALFRED_BEDROCK_MODEL_ID "
                                                  "or the agent's default)")
    dr.add_argument("--region",
                    help="where the worker calls Bedrock (default: ALFRED_BEDROCK_REGION or AWS_DEFAULT_REGION)")
    dr.add_argument("--role", metavar="ARN|NAME", help="the worker's IAM role, to simulate its policy "
                                                        "(stack resource WorkerFunctionRole)")
    dr.add_argument("--foundation-model", metavar="ID", help="the stack's BedrockFoundationModelId, if set")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_doctor)

    b = sub.add_parser("bench", help="the benchmarks")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--json", metavar="FILE")
    b.set_defaults(func=cmd_bench)

    from alfred_tools.sim.cli import add_parser as add_sim

    add_sim(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``alfred-jobs`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "after", 0) < 0:
        build_parser().error("--after must be >= 0")
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"error: {exc.message if isinstance(exc, ApiError) else exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `alfred-jobs ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
