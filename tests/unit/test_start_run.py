"""Starting a run on SQLite: the version it pins, and the Idempotency-Key's answers, including when
another request with the same key commits between this one's lookup and its insert."""

from __future__ import annotations

import pytest

from orchestrator import service
from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.errors import IdempotencyConflict, NotFound

ONE_STEP = {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}]}


@pytest.fixture
def db(sqlite_settings):
    """The settings and sessions of a database where workflow 'one' has two versions."""
    engine = make_engine(sqlite_settings)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        for _ in range(2):
            service.publish_workflow(session, sqlite_settings, "t", "one", ONE_STEP)
    yield sqlite_settings, sessions
    engine.dispose()


def test_a_run_pins_the_latest_version_unless_told_which(db):
    settings, sessions = db
    with transaction(sessions) as session:
        latest, created = _pair(service.start_run(session, settings, "t", "one", {}))
        first, _ = _pair(service.start_run(session, settings, "t", "one", {}, version=1))
        assert (latest.workflow_version, first.workflow_version, created) == (2, 1, True)
        assert [s.step_id for s in repo.run_steps(session, latest.id)] == ["a"]
        with pytest.raises(NotFound, match="no version 3"):
            service.start_run(session, settings, "t", "one", {}, version=3)


def test_the_same_key_returns_the_first_run_and_refuses_another_body(db):
    settings, sessions = db
    with transaction(sessions) as session:
        first, created = _pair(service.start_run(session, settings, "t", "one", {}, idempotency_key="k", body_hash="h1"))
        again, created_again = _pair(service.start_run(session, settings, "t", "one", {}, idempotency_key="k", body_hash="h1"))
        assert (again.id, created, created_again) == (first.id, True, False)
        with pytest.raises(IdempotencyConflict):
            service.start_run(session, settings, "t", "one", {}, idempotency_key="k", body_hash="h2")


def test_a_key_whose_run_was_inserted_after_the_lookup_answers_as_that_run(db, monkeypatch):
    settings, sessions = db
    with transaction(sessions) as session:
        winner, _ = _pair(service.start_run(session, settings, "t", "one", {}, idempotency_key="k", body_hash="h1"))
    lookup = repo.find_run_by_idempotency_key
    calls = []

    def late_lookup(session, tenant_id, key):
        # The first lookup misses, as if the other request had not committed yet; the insert then collides.
        calls.append(key)
        return None if len(calls) == 1 else lookup(session, tenant_id, key)

    monkeypatch.setattr(repo, "find_run_by_idempotency_key", late_lookup)
    with transaction(sessions) as session:
        run, created = _pair(service.start_run(session, settings, "t", "one", {}, idempotency_key="k", body_hash="h1"))
        assert (run.id, created, len(calls)) == (winner.id, False, 2)
    calls.clear()
    with transaction(sessions) as session, pytest.raises(IdempotencyConflict):
        service.start_run(session, settings, "t", "one", {}, idempotency_key="k", body_hash="h2")


def _pair(started: service.Started) -> tuple:
    return started.run, started.created


GATED = {"name": "gated", "steps": [{"id": "gate", "type": "approval"},
                                    {"id": "after", "type": "tool", "tool": "echo", "needs": ["gate"]}]}


def test_a_start_that_takes_the_first_pass_queues_the_first_steps_with_their_outbox_rows(db):
    """POST /runs' start: the run is written started, its first worker step queued with an outbox row
    and the events the scheduler's first pass would write; the live streams see it created queued,
    then started."""
    settings, sessions = db
    with transaction(sessions) as session:
        started = service.start_run(session, settings, "t", "one", {}, first_pass=True)
        staged = [(w["previous_status"], w["status"], [e["type"] for e in w["events"]])
                  for w in session.info[repo.WRITTEN_EVENTS]]
        run_id = started.run.id
    assert [(m.run_id, m.step_id, m.attempt) for m in started.messages] == [(run_id, "a", 1)]
    assert all(m.outbox_id is not None for m in started.messages)
    assert staged == [(None, "queued", ["run_created"]), ("queued", "running", ["run_started", "step_queued"])]
    with transaction(sessions) as session:
        run = repo.get_run(session, "t", run_id)
        steps = {s.step_id: (s.status, s.attempt) for s in repo.run_steps(session, run_id)}
        events = [(e.seq, e.type) for e in repo.run_events(session, run_id, 0, 10)]
        assert (run.status, run.has_work, run.last_seq, run.started_at is not None) == ("running", False, 3, True)
    assert steps == {"a": ("queued", 1)}
    assert events == [(1, "run_created"), (2, "run_started"), (3, "step_queued")]


def test_a_start_whose_first_step_waits_leaves_the_run_to_the_scheduler(db):
    settings, sessions = db
    with transaction(sessions) as session:
        service.publish_workflow(session, settings, "t", "gated", GATED)
        started = service.start_run(session, settings, "t", "gated", {}, first_pass=True)
        run = repo.get_run(session, "t", started.run.id)
        assert (run.status, run.has_work, started.messages) == ("queued", True, [])
        assert {s.step_id: s.status for s in repo.run_steps(session, run.id)} == {"gate": "pending", "after": "pending"}
