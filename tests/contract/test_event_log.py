"""EventLog: the contract of ``alfred_jobs.ports.EventLog``, on the fake and on DynamoDB."""

from __future__ import annotations

import pytest

from alfred_jobs.domain.models import EventType
from alfred_jobs.exceptions import ConditionFailed
from tests.contract.support import Backend, event, live, past, uid


def test_append_then_get_returns_the_event_as_written(backend: Backend) -> None:
    job_id = uid("job")
    ev = event(1, EventType.STEP, {"index": 1, "total": 3, "status": "completed", "label": "Chop",
                                    "output": {"nested": [1, 2.5, "x", None, True]}})
    backend.log.append(job_id, ev, live())
    assert backend.log.get(job_id, 1) == ev
    assert backend.log.get(job_id, 1, consistent=False) == ev


def test_get_of_a_missing_event_is_none(backend: Backend) -> None:
    job_id = uid("job")
    backend.log.append(job_id, event(1), live())
    assert backend.log.get(job_id, 2) is None
    assert backend.log.get(uid("job"), 1) is None


def test_append_on_a_taken_slot_raises_condition_failed_and_keeps_the_first(backend: Backend) -> None:
    job_id = uid("job")
    first = event(1)
    backend.log.append(job_id, first, live())
    with pytest.raises(ConditionFailed):
        backend.log.append(job_id, event(1, EventType.CANCELLED, {}), live())
    with pytest.raises(ConditionFailed):  # the very same event again (a retried put): taken too
        backend.log.append(job_id, first, live())
    assert backend.log.get(job_id, 1) == first


def test_an_expired_event_reads_as_gone(backend: Backend) -> None:
    job_id = uid("job")
    backend.log.append(job_id, event(1), past())
    backend.log.append(job_id, event(2), live())
    assert backend.log.get(job_id, 1) is None
    assert backend.log.get(job_id, 1, consistent=False) is None
    assert [e.seq for e in backend.log.read_range(job_id, 1, 2)] == [2]


def test_an_expired_events_slot_is_free(backend: Backend) -> None:
    job_id = uid("job")
    backend.log.append(job_id, event(1), past())
    fresh = event(1, EventType.STATUS, {"status": "running"})
    backend.log.append(job_id, fresh, live())
    assert backend.log.get(job_id, 1) == fresh
    with pytest.raises(ConditionFailed):
        backend.log.append(job_id, event(1), live())


def test_read_range_returns_the_existing_events_in_seq_order(backend: Backend) -> None:
    job_id = uid("job")
    events = {s: event(s, data={"n": s}) for s in (5, 1, 3, 2)}  # appended out of order, 4 missing
    for ev in events.values():
        backend.log.append(job_id, ev, live())
    backend.log.append(uid("job"), event(4), live())  # another job's seq 4
    assert backend.log.read_range(job_id, 1, 5) == [events[s] for s in (1, 2, 3, 5)]
    assert backend.log.read_range(job_id, 2, 4) == [events[2], events[3]]
    assert backend.log.read_range(job_id, 3, 3) == [events[3]]
    assert backend.log.read_range(job_id, 4, 4) == []
    assert backend.log.read_range(job_id, 6, 50) == []
    assert backend.log.read_range(job_id, 5, 1) == [], "an empty range"
    assert backend.log.read_range(job_id, 1, 5, consistent=False) == [events[s] for s in (1, 2, 3, 5)]


def test_read_range_over_many_seqs(backend: Backend) -> None:
    """Wider than one BatchGetItem (100 keys) on DynamoDB."""
    job_id = uid("job")
    seqs = [1, 99, 100, 101, 200, 201, 250]
    for s in seqs:
        backend.log.append(job_id, event(s), live())
    assert [e.seq for e in backend.log.read_range(job_id, 1, 250)] == seqs
    assert [e.seq for e in backend.log.read_range(job_id, 100, 201)] == [100, 101, 200, 201]
