"""The scheduler's pass on SQLite (the embedded default): the writes of a batch together, the guards
checked, published outbox rows deleted by the next transaction, due times fired when the loop wakes;
and what the outcome writer leaves it: nothing when the report of a run's last step finished the run,
or when a success queued the steps it made ready (the worker's dispatch)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, func, select, update

from orchestrator import broker, outcomes, service
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core.inputs import AttemptReport, Env
from orchestrator.db import repository as repo
from orchestrator.db.models import Outbox, Run, Step
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.db.types import db_now
from orchestrator.messages import StepMessage
from orchestrator.scheduler import Scheduler
from orchestrator.states import StepStatus
from orchestrator.writer import Written

ONE_STEP = {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}]}


@pytest.fixture
def scheduler(sqlite_settings):
    engine = make_engine(sqlite_settings)
    scheduler = Scheduler(sqlite_settings, make_sessionmaker(engine), broker.make_celery(sqlite_settings))
    yield scheduler
    engine.dispose()


def start_runs(scheduler: Scheduler, definition: dict, n: int) -> list[str]:
    with transaction(scheduler.sessions) as session:
        service.publish_workflow(session, scheduler.settings, "t", definition["name"], definition)
        return [service.start_run(session, scheduler.settings, "t", definition["name"], {}).run.id
                for _ in range(n)]


def run_facts(scheduler: Scheduler, run_id: str) -> tuple[str, list[str], dict[str, str]]:
    with transaction(scheduler.sessions) as session:
        status = repo.run_status(session, run_id)
        events = [e.type for e in repo.run_events(session, run_id, 0, 100)]
        steps = {s.step_id: s.status for s in repo.run_steps(session, run_id)}
    return status, events, steps


def outbox_rows(scheduler: Scheduler) -> int:
    with transaction(scheduler.sessions) as session:
        return session.execute(select(func.count()).select_from(Outbox)).scalar_one()


def statements_of(scheduler: Scheduler, action) -> int:
    engine = scheduler.sessions.kw["bind"]
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen)


def test_a_pass_writes_a_batch_in_statements_that_do_not_grow_with_its_runs(scheduler):
    few, many = start_runs(scheduler, ONE_STEP, 2), start_runs(scheduler, {**ONE_STEP, "name": "more"}, 20)
    with transaction(scheduler.sessions) as session:
        session.execute(update(Run).where(Run.id.in_(many)).values(has_work=False))
    small = statements_of(scheduler, scheduler.drain)
    with transaction(scheduler.sessions) as session:
        session.execute(update(Run).where(Run.id.in_(many)).values(has_work=True))
    large = statements_of(scheduler, scheduler.drain)

    # The second pass also reads the second workflow's definition and deletes the first pass's outbox rows.
    assert large <= small + 2, (small, large)
    for run_id in few + many:
        status, events, steps = run_facts(scheduler, run_id)
        assert (status, events, steps) == ("running", ["run_created", "run_started", "step_queued"], {"a": "queued"})
    assert outbox_rows(scheduler) == 20  # the first pass's rows went with the second pass's transaction
    scheduler.sweep()
    assert outbox_rows(scheduler) == 0 and scheduler.published_outbox == []


def test_a_step_guard_that_fails_in_a_batch_skips_that_step_and_the_others_advance(scheduler, monkeypatch):
    stale, fine = start_runs(scheduler, ONE_STEP, 2)
    with transaction(scheduler.sessions) as session:
        # Behind the views' back: the pass reads `pending` but the row is `skipped`.
        session.execute(update(Step).where(Step.run_id == stale).values(status="skipped"))
    views = repo.steps_for_update

    def pending_views(session, run_ids):
        result = views(session, run_ids)
        if stale in result:
            result[stale] = [step.moved(status=StepStatus.PENDING) for step in result[stale]]
        return result

    monkeypatch.setattr(repo, "steps_for_update", pending_views)
    published: list[StepMessage] = []
    monkeypatch.setattr(broker, "publish_steps", lambda _app, messages, _grace: published.extend(messages))
    scheduler.drain()

    assert [m.run_id for m in published] == [fine]
    assert run_facts(scheduler, fine)[2] == {"a": "queued"}
    status, events, steps = run_facts(scheduler, stale)
    assert steps == {"a": "skipped"} and "step_queued" not in events


def test_a_timer_fires_when_its_due_time_wakes_the_loop_without_a_sweep(scheduler):
    # Long enough that a pass slowed down by a busy machine still reads the due time ahead of it (one
    # that passes before the pass reads it: the next test).
    (run_id,) = start_runs(scheduler, {"name": "timer", "steps": [{"id": "t", "type": "timer", "duration_s": 1.5}]}, 1)
    scheduler.drain()
    assert run_facts(scheduler, run_id)[2] == {"t": "waiting"}
    assert 0.5 < scheduler.wait_timeout() < 1.6

    time.sleep(scheduler.wait_timeout())
    scheduler.drain()

    status, events, steps = run_facts(scheduler, run_id)
    assert (status, steps) == ("succeeded", {"t": "succeeded"})
    assert events[-2:] == ["step_completed", "run_succeeded"]
    assert scheduler.wait_timeout() == scheduler.settings.sweep_interval_s  # nothing is due any more


def test_a_due_time_that_passed_before_the_pass_read_it_wakes_the_loop_at_once_unless_its_run_is_paused(scheduler):
    timer = {"name": "timer", "steps": [{"id": "t", "type": "timer", "duration_s": 60}]}
    fired, paused = start_runs(scheduler, timer, 2)
    scheduler.drain()
    with transaction(scheduler.sessions) as session:
        # As if the machine stalled between the pass that parked the timers and its read of the next
        # due time; one run was paused meanwhile (its timer waits for its resume).
        session.execute(update(Step).values(due_at=db_now(-0.5)))
        session.execute(update(Run).where(Run.id == paused).values(status="paused"))
        scheduler._read_next_due(session)
    assert scheduler.wait_timeout() <= 0.011

    scheduler.drain()

    assert run_facts(scheduler, fired)[0] == "succeeded"
    assert run_facts(scheduler, paused)[2] == {"t": "waiting"}
    assert scheduler.wait_timeout() == scheduler.settings.sweep_interval_s  # the paused run's does not spin


def test_a_reused_statement_takes_each_calls_values_and_expressions(scheduler):
    """update_steps and apply_run_changes keep one statement per shape of change: a change that sets
    a column to an expression of its own (a due time) must not reuse the statement made for a plain
    value in that column, and a reused statement must take the new call's values."""
    run_id = start_runs(scheduler, ONE_STEP, 1)[0]
    due = {}
    for due_at, output in [(None, {"n": 1}), (db_now(3600), {"n": 2}), (None, {"n": 3}), (db_now(7200), {"n": 4})]:
        with transaction(scheduler.sessions) as session:
            session.execute(update(Step).where(Step.run_id == run_id).values(status=StepStatus.RUNNING.value))
            assert repo.update_steps(session, run_id, ["a"], StepStatus.RETRYING, due_at=due_at, output=output) == ["a"]
            row = session.execute(select(Step.due_at, Step.output, db_now()).where(Step.run_id == run_id)).one()
        assert row.output == output
        due[output["n"]] = None if row.due_at is None else (row.due_at - row[2]).total_seconds()
    assert due[1] is None and due[3] is None
    assert 3590 < due[2] < 3610 and 7190 < due[4] < 7210


# --- the outcome writer's hand-over to the scheduler ---------------------------------------------

CHAIN = {"name": "chain", "steps": [
    {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}},
    {"id": "b", "type": "tool", "tool": "echo", "args": {"text": "y"}, "needs": ["a"]},
]}


def run_step(scheduler, run_id: str, step_id: str, output: dict, dispatch: bool = False) -> Written:
    """What a worker does for one queued attempt: claim it, then report a success."""
    catalog = DefinitionCatalog()
    with transaction(scheduler.sessions) as session:
        claim = outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(run_id, step_id, 1), worker="test",
                                       lease_s=60)
        assert claim is not None
    report = AttemptReport(run_id, step_id, 1, outcomes.Outcome(output=output), queue_ready=dispatch)
    with transaction(scheduler.sessions) as session:
        return outcomes.record_outcome(session, claim.definition, report, Env())


def has_work(scheduler, run_id: str) -> bool:
    with transaction(scheduler.sessions) as session:
        return session.execute(select(Run.has_work).where(Run.id == run_id)).scalar_one()


def test_the_last_steps_report_finishes_the_run_without_the_scheduler(scheduler):
    [run_id] = start_runs(scheduler, ONE_STEP, 1)
    assert scheduler.drain() == 1

    recorded = run_step(scheduler, run_id, "a", {"text": "x"})

    assert recorded.applied and not recorded.wakes_scheduler
    status, events, steps = run_facts(scheduler, run_id)
    assert (status, steps) == ("succeeded", {"a": "succeeded"})
    assert events[-2:] == ["step_completed", "run_succeeded"] and events.count("run_succeeded") == 1
    assert not has_work(scheduler, run_id)
    with transaction(scheduler.sessions) as session:
        assert repo.get_run(session, "t", run_id).output == {"a": {"text": "x"}}
    assert scheduler.drain() == 0


def test_a_report_with_steps_still_to_run_leaves_the_run_to_the_scheduler(scheduler):
    [run_id] = start_runs(scheduler, CHAIN, 1)
    scheduler.drain()

    first = run_step(scheduler, run_id, "a", {"text": "x"})

    assert first.applied and first.wakes_scheduler
    assert run_facts(scheduler, run_id)[0] == "running" and has_work(scheduler, run_id)
    assert scheduler.drain() == 1  # dispatches b
    last = run_step(scheduler, run_id, "b", {"text": "y"})
    assert not last.wakes_scheduler
    with transaction(scheduler.sessions) as session:
        assert repo.get_run(session, "t", run_id).output == {"b": {"text": "y"}}  # the sink's output only
    assert run_facts(scheduler, run_id)[1].count("run_succeeded") == 1


def test_outputs_are_read_only_when_every_other_step_succeeded(scheduler):
    [run_id] = start_runs(scheduler, CHAIN, 1)

    def finish(session, step_id: str, output: dict) -> None:  # set up directly: not a transition under test
        session.execute(update(Step).where(Step.run_id == run_id, Step.step_id == step_id)
                        .values(status=StepStatus.SUCCEEDED.value, output=output))

    with transaction(scheduler.sessions) as session:
        assert repo.outputs_if_others_succeeded(session, run_id, "b", ["b"]) is None  # a is pending
        finish(session, "a", {"text": "x"})
        assert repo.outputs_if_others_succeeded(session, run_id, "b", ["b"]) == {}
        assert repo.outputs_if_others_succeeded(session, run_id, "b", ["a", "b"]) == {"a": {"text": "x"}}


# --- the worker's dispatch: a success queues the steps it made ready -------------------------------

DIAMOND = {"name": "diamond", "steps": [
    {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "a"}},
    {"id": "b", "type": "tool", "tool": "echo", "args": {"text": "b"}, "needs": ["a"]},
    {"id": "c", "type": "tool", "tool": "echo", "args": {"text": "c"}, "needs": ["a"]},
    {"id": "d", "type": "tool", "tool": "echo", "args": {"text": "d"}, "needs": ["b", "c"]},
]}


def queued_by(recorded: outcomes.Recorded) -> list[tuple[str, int]]:
    return [(m.step_id, m.attempt) for m in recorded.messages]


def outbox_steps(scheduler: Scheduler, run_id: str) -> set[str]:
    with transaction(scheduler.sessions) as session:
        return set(session.execute(select(Outbox.step_id).where(Outbox.run_id == run_id)).scalars())


def test_a_success_queues_the_steps_it_made_ready_and_a_join_when_its_last_need_succeeds(scheduler):
    [run_id] = start_runs(scheduler, DIAMOND, 1)
    assert scheduler.drain() == 1  # queues a
    scheduler._forget_published()

    after_a = run_step(scheduler, run_id, "a", {"text": "a"}, dispatch=True)

    assert after_a.applied and not after_a.wakes_scheduler
    assert queued_by(after_a) == [("b", 1), ("c", 1)]
    assert outbox_steps(scheduler, run_id) == {"b", "c"}  # deleted by the worker once published
    status, events, steps = run_facts(scheduler, run_id)
    assert (status, steps) == ("running", {"a": "succeeded", "b": "queued", "c": "queued", "d": "pending"})
    assert events[-3:] == ["step_completed", "step_queued", "step_queued"]
    assert not has_work(scheduler, run_id) and scheduler.drain() == 0

    after_b = run_step(scheduler, run_id, "b", {"text": "b"}, dispatch=True)
    assert after_b.applied and after_b.messages == [] and after_b.wakes_scheduler  # d still needs c
    assert scheduler.drain() == 1 and run_facts(scheduler, run_id)[2]["d"] == "pending"

    after_c = run_step(scheduler, run_id, "c", {"text": "c"}, dispatch=True)
    assert queued_by(after_c) == [("d", 1)] and not after_c.wakes_scheduler
    last = run_step(scheduler, run_id, "d", {"text": "d"}, dispatch=True)
    assert not last.wakes_scheduler and last.messages == []
    assert run_facts(scheduler, run_id)[0] == "succeeded"


def test_a_success_leaves_a_step_that_waits_in_the_database_to_the_scheduler(scheduler):
    definition = {"name": "gated", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "a"}},
        {"id": "ok", "type": "approval", "prompt": "go?", "needs": ["a"]},
    ]}
    [run_id] = start_runs(scheduler, definition, 1)
    scheduler.drain()

    recorded = run_step(scheduler, run_id, "a", {"text": "a"}, dispatch=True)

    assert recorded.applied and recorded.wakes_scheduler and recorded.messages == []
    assert has_work(scheduler, run_id)
    assert scheduler.drain() == 1
    assert run_facts(scheduler, run_id)[2]["ok"] == "waiting"


def test_without_dispatch_a_success_leaves_the_next_step_to_the_scheduler(scheduler):
    [run_id] = start_runs(scheduler, CHAIN, 1)
    scheduler.drain()

    recorded = run_step(scheduler, run_id, "a", {"text": "x"})

    assert recorded.wakes_scheduler and recorded.messages == []
    assert run_facts(scheduler, run_id)[2]["b"] == "pending"


def test_a_pass_writes_held_the_steps_it_queues_on_a_queue_with_held_messages(sqlite_settings, monkeypatch):
    settings = sqlite_settings.model_copy(update={"dispatch_window": 2})
    engine = make_engine(settings)
    scheduler = Scheduler(settings, make_sessionmaker(engine), broker.make_celery(settings))
    published: list[StepMessage] = []
    monkeypatch.setattr(broker, "publish_steps", lambda _app, messages, _grace: published.extend(messages))
    first = start_runs(scheduler, ONE_STEP, 5)
    scheduler.advance_batch()  # five steps queued: two fit the window, three are held after the commit
    assert len(published) == 2 and {m.run_id for m in published} <= set(first)
    [queue] = scheduler.held_queues
    assert scheduler.backlog

    later = start_runs(scheduler, ONE_STEP, 3)
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _k, statement, *_a: seen.append(statement))
    scheduler.advance_batch()
    # Written held with the step: no check of the window, no update of the rows after the commit.
    assert not [s for s in seen if s.lstrip().upper().startswith("UPDATE OUTBOX")], seen
    assert len(published) == 2
    with transaction(scheduler.sessions) as session:
        rows = {r.run_id: r for r in session.execute(select(Outbox).where(Outbox.run_id.in_(later))).scalars()}
        steps = {s.run_id: s for s in session.execute(select(Step).where(Step.run_id.in_(later))).scalars()}
    assert {(r.held, r.tenant_id, r.priority, r.queue) for r in rows.values()} == {(True, "t", 5, queue)}
    assert {(s.status, s.held) for s in steps.values()} == {("queued", True)}

    # Room for two: the oldest held messages go first (held after their commit), then the later ones.
    with transaction(scheduler.sessions) as session:
        session.execute(update(Step).where(Step.run_id.in_([m.run_id for m in published])).values(status="succeeded"))
    assert scheduler.admit() == 2
    assert {m.run_id for m in published[2:]} <= set(first) and scheduler.held_queues == {queue}
    assert len(published) == 4
    engine.dispose()


def test_a_long_drain_makes_the_looks_for_room_that_fall_due_between_its_batches(sqlite_settings, monkeypatch):
    """A flood's passes take many batches; the workers would run dry on the window's first messages if
    the scheduler looked for room only once every run had been advanced."""
    settings = sqlite_settings.model_copy(update={"dispatch_window": 2})
    engine = make_engine(settings)
    scheduler = Scheduler(settings, make_sessionmaker(engine), broker.make_celery(settings), batch_size=3)
    monkeypatch.setattr(broker, "publish_steps", lambda *_args: None)
    start_runs(scheduler, ONE_STEP, 9)
    runs_with_work_at_looks: list[int] = []
    admit = scheduler.admit

    def looked() -> int:
        with transaction(scheduler.sessions) as session:
            runs_with_work_at_looks.append(session.execute(
                select(func.count()).select_from(Run).where(Run.has_work.is_(True))).scalar_one())
        return admit()

    monkeypatch.setattr(scheduler, "admit", looked)
    assert scheduler.drain() == 9
    # The first batch's check held a step: the look fell due at once, with two batches still to pass.
    assert runs_with_work_at_looks[:1] == [6], runs_with_work_at_looks
    engine.dispose()


def test_the_sweep_forgets_held_messages_whose_steps_moved_on_once_a_minute(scheduler, monkeypatch):
    monkeypatch.setattr(broker, "publish_steps", lambda *_args: None)
    kept, cancelled = start_runs(scheduler, ONE_STEP, 2)
    scheduler.drain()
    with transaction(scheduler.sessions) as session:
        session.execute(update(Outbox).values(held=True, tenant_id="t", priority=5))
        session.execute(update(Step).where(Step.run_id == kept).values(held=True))
        session.execute(update(Step).where(Step.run_id == cancelled).values(status="cancelled"))
    scheduler.published_outbox.clear()
    scheduler.sweep()
    with transaction(scheduler.sessions) as session:
        assert [r.run_id for r in session.execute(select(Outbox)).scalars()] == [kept]
        # Another orphan within the minute is left for the next look (an admission deletes it if it comes first).
        session.execute(update(Step).where(Step.run_id == kept).values(status="cancelled"))
    scheduler.sweep()
    assert outbox_rows(scheduler) == 1
    scheduler.next_orphan_look = 0.0
    scheduler.sweep()
    assert outbox_rows(scheduler) == 0
