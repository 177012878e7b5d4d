"""AgentDataStore: the contract of ``alfred_jobs.ports.AgentDataStore``, on the fake and on DynamoDB."""

from __future__ import annotations

from tests.contract.support import Backend, live, past, uid


def test_record_step_effect_counts_the_runs_of_each_step(backend: Backend) -> None:
    job = uid("job")
    assert backend.agent_data.step_effects(job) == {}
    assert backend.agent_data.record_step_effect(job, 1, 1, {"tool": "oven"}, live()) == 1
    assert backend.agent_data.record_step_effect(job, 2, 1, {"tool": "pan"}, live()) == 1
    assert backend.agent_data.record_step_effect(job, 1, 2, {"tool": "oven"}, live()) == 2
    assert backend.agent_data.record_step_effect(job, 1, 3, {}, live()) == 3
    assert backend.agent_data.step_effects(job) == {1: 3, 2: 1}


def test_step_effects_are_per_job(backend: Backend) -> None:
    a, b = uid("job"), uid("job")
    backend.agent_data.record_step_effect(a, 0, 1, {}, live())
    backend.agent_data.record_step_effect(b, 0, 1, {}, live())
    backend.agent_data.record_step_effect(b, 0, 2, {}, live())
    assert backend.agent_data.step_effects(a) == {0: 1}
    assert backend.agent_data.step_effects(b) == {0: 2}


def test_an_expired_record_is_hidden_and_counting_restarts(backend: Backend) -> None:
    """A job id reused after retention: the earlier job's step records are gone."""
    job = uid("job")
    assert backend.agent_data.record_step_effect(job, 1, 1, {}, past()) == 1
    assert backend.agent_data.record_step_effect(job, 1, 1, {}, past()) == 1, "each run lands on an expired record"
    assert backend.agent_data.step_effects(job) == {}
    assert backend.agent_data.record_step_effect(job, 1, 1, {}, live()) == 1
    assert backend.agent_data.record_step_effect(job, 1, 2, {}, live()) == 2
    backend.agent_data.record_step_effect(job, 2, 1, {}, past())
    assert backend.agent_data.step_effects(job) == {1: 2}
