"""The world's own judgement of a history: when it is quiet, so that the end checks look at a
history the protocol is done with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

from alfred_jobs.domain.events import ErrorInfo, Event, FailedPayload
from alfred_jobs.domain.models import Job, fold
from alfred_tools.bootstrap import load_template
from alfred_tools.sim.kernel import Kernel, Process
from alfred_tools.sim.world import CLIENT_TIMEOUT, Config, World, draw_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_job_its_log_ended_is_not_quiet_until_its_record_is_finalized() -> None:
    """Sim seed 16182 at 2e09054: a sweeper ended a job whose question expired and froze after the
    gate removal, before its dead letter. The history was taken as quiet 30 s later (the job was
    ended by its log) and ``failed_jobs_are_parked`` failed, though the sweeper's next pass would
    have sent the job and a worker parked it. A job whose finalize is still owed is not quiet."""
    w = World(1)
    try:
        w.wire.faults_until = 0.0  # no faults: this checks the world's judgement, not the protocol
        now = w.k.now()
        job = Job("j1", "u1", "hello", "c1", created_at=now, expires_at=int(now + 3600), attempts=1)
        w.inner_jobs.create(job)
        failed = FailedPayload(error=ErrorInfo(code="input_timeout", message="no answer came in time"))
        ev = Event.of(1, failed, attempt=1, writer="sweeper", at=now)
        w.k.spawn(Process("ender"), "ender", lambda: w.log.append("j1", ev, job.expires_at))
        w.k.run(1.0)
        assert "j1" in w.log.terminal  # ended by its log; its record still says pending

        assert not w._quiet()  # its dead letter and terminal projection are still owed

        w.inner_jobs.save_projection(fold(job, [ev]), owner=None)
        assert w._quiet()
    finally:
        w.k.close()


def test_one_history_in_eight_is_question_heavy_and_the_others_are_drawn_as_before() -> None:
    """Every job of a question-heavy history asks (``ask_share`` 1), with one run slot per user
    more often and at least two workers; its draw comes from a stream of its own, so that the
    other histories are those their seeds made before it existed."""
    heavy = []
    for seed in range(1, 801):
        k = Kernel(seed)
        cfg = draw_config(k, 10)
        plain = _drawn_without_question_heavy(seed)
        if cfg.ask_share == 1.0:
            heavy.append(cfg)
            assert cfg.workers >= 2
            assert replace(cfg, ask_share=plain.ask_share, max_running=plain.max_running, workers=plain.workers,
                           plan=replace(cfg.plan, held=plain.plan.held)) == plain
        else:
            assert cfg == plain
            assert k.rng.getstate() == _rng_after_plain_draw(seed)
    assert 60 <= len(heavy) <= 140  # about 100
    assert sum(c.max_running == 1 for c in heavy) > len(heavy) / 2


def _drawn_without_question_heavy(seed: int) -> Config:
    with patch("alfred_tools.sim.world.QUESTION_HEAVY_SHARE", 0.0):
        return draw_config(Kernel(seed), 10)


def _rng_after_plain_draw(seed: int) -> object:
    k = Kernel(seed)
    with patch("alfred_tools.sim.world.QUESTION_HEAVY_SHARE", 0.0):
        draw_config(k, 10)
    return k.rng.getstate()


def test_every_job_of_a_question_heavy_history_asks() -> None:
    seed = next(s for s in range(1, 100) if draw_config(Kernel(s), 10).ask_share == 1.0)
    w = World(seed)
    try:
        assert all("ask=" in w._message() for _ in range(50))
    finally:
        w.k.close()


def test_a_client_gives_up_before_api_gateways_integration_limit() -> None:
    """A client of the simulation waits at most ``CLIENT_TIMEOUT`` for an answer, then retries as
    after a lost answer. API Gateway cuts a request at 29 s with a 504 (the API function's Timeout
    is set to it): were the client to wait that long, the simulator would have to answer that 504
    itself, not the late answer of a request frozen past it."""
    api = load_template(ROOT / "template.yaml")["Resources"]["SubmitFunction"]["Properties"]
    assert api["Timeout"] <= 29, "API Gateway's integration limit"
    assert api["Timeout"] > CLIENT_TIMEOUT
