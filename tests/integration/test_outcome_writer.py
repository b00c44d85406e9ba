"""The outcome writer's step move, written with the run's changes (on PostgreSQL in one statement):
the run changes and its events are written only if the step's guard matched."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import psycopg
import pytest
from sqlalchemy import delete, event, select, update

from orchestrator import outcomes, service, writer
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core import stopping
from orchestrator.core.inputs import AttemptReport, Env
from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.transition import NOW, Draft
from orchestrator.core.vocabulary import EventType
from orchestrator.db import migrate
from orchestrator.db import repository as repo
from orchestrator.db.models import Outbox, Run, Step
from orchestrator.db.session import AutocommitSessions, make_engine, make_sessionmaker, transaction
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings
from orchestrator.states import RunStatus, StepStatus
from tests.integration.conftest import _libpq, fresh_database

ONE_STEP = {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}]}


@pytest.fixture(scope="module")
def quiet_database() -> Iterator[str]:
    """A PostgreSQL database of the module's own. These tests write runs' rows directly and read them
    back: on the session's database its scheduler would advance those runs in between (it did, on a
    slow host), and would act later on what they leave behind."""
    with fresh_database("switchyard_outcomes") as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request, settings, tmp_path, quiet_database):
    if request.param == "sqlite":
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'outcome.db'}", data_dir=tmp_path)
        migrate.upgrade(settings)
    else:
        settings = settings.model_copy(update={"database_url": quiet_database})
    engine = make_engine(settings)
    yield settings, make_sessionmaker(engine)
    engine.dispose()


@pytest.mark.parametrize("run_finishes", [False, True], ids=["run-stays", "run-succeeds"])
@pytest.mark.parametrize(("status_now", "applied"), [(StepStatus.RUNNING, True), (StepStatus.CANCELLED, False)])
def test_a_step_move_writes_the_runs_changes_only_if_its_guard_matched(sessions, status_now, applied, run_finishes):
    """With ``run_finishes`` the run's update carries a status guard (running -> succeeded), which the
    locked run passes: the move still shares the run's statement, and its guard still decides."""
    settings, factory = sessions
    with transaction(factory) as session:
        service.publish_workflow(session, settings, "t", "one", ONE_STEP)
        run_id = service.start_run(session, settings, "t", "one", {}).run.id
        # Another writer put the step where it is now (the outcome expects it running at attempt 1).
        session.execute(update(Step).where(Step.run_id == run_id).values(status=status_now.value, attempt=1))
        session.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.RUNNING.value))
    with transaction(factory) as session:
        run = repo.lock_run(session, run_id)
        # What the report expects: the step running at attempt 1.
        draft = Draft(RunState.from_row(run, [StepState("a", "tool", StepStatus.RUNNING, 1, 3, "q")]))
        draft.move(draft.step("a"), StepStatus.SUCCEEDED, only_from=[StepStatus.RUNNING], reported=True,
                   output={"n": 1}, completed_at=NOW)
        draft.run_values["has_work"] = True
        draft.event(EventType.STEP_COMPLETED, "a", 1, output={"n": 1})
        if run_finishes:
            stopping.succeed_run(draft, {"a": {"n": 1}})
        with _statements_sent(session.get_bind()) as statements:
            assert writer.apply(session, draft.finish()).applied is applied
    if settings.resolved_database_url.startswith("postgresql"):
        assert len(statements) == 1  # the step's move, the run's update and its events: one statement
    with transaction(factory) as session:
        step = repo.step_fields(session, run_id, "a")
        events = [e.type for e in repo.run_events(session, run_id, 0, 100)]
        after = repo.lock_run(session, run_id)
    assert step.status == (StepStatus.SUCCEEDED if applied else status_now)
    assert (step.output == {"n": 1}) is applied
    assert ("step_completed" in events) is applied
    assert ("run_succeeded" in events) is (applied and run_finishes)
    assert after.status == (RunStatus.SUCCEEDED if applied and run_finishes else RunStatus.RUNNING)
    assert after.last_seq == run.last_seq + ((2 if run_finishes else 1) if applied else 0)


CHAIN = {"name": "chain", "steps": [
    {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}},
    {"id": "b", "type": "tool", "tool": "echo", "args": {"text": "y"}, "needs": ["a"], "timeout_s": 7},
]}


def _chain_run_with_a_running(settings, factory) -> str:
    """A run of CHAIN as the scheduler left it: running, ``a`` queued and claimed, nothing more for the
    scheduler to do."""
    with transaction(factory) as session:
        service.publish_workflow(session, settings, "t", "chain", CHAIN)
        run_id = service.start_run(session, settings, "t", "chain", {}).run.id
        session.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.RUNNING.value, has_work=False))
        session.execute(update(Step).where(Step.run_id == run_id, Step.step_id == "a")
                        .values(status=StepStatus.RUNNING.value, attempt=1))
        session.execute(delete(Outbox).where(Outbox.run_id == run_id))
    return run_id


@pytest.mark.parametrize(("status_now", "queued"), [(StepStatus.RUNNING, True), (StepStatus.CANCELLED, False)])
def test_a_success_queues_the_next_step_with_its_outbox_row_only_if_its_guard_matched(sessions, status_now, queued):
    """The worker's dispatch: the step a success made ready is queued, with its outbox row and its
    event, in the outcome's transaction (on PostgreSQL the queueing and the outbox row are one
    statement); if another writer moved the reported step under the run's lock, nothing is written."""
    settings, factory = sessions
    run_id = _chain_run_with_a_running(settings, factory)
    catalog = DefinitionCatalog()
    with transaction(factory) as session:
        locked = repo.lock_run_with_steps(session, run_id, ["a", "b"])  # what the report saw
        # Another writer changes the step after that read, under the run's lock (its snapshot is older).
        session.execute(update(Step).where(Step.run_id == run_id, Step.step_id == "a")
                        .values(status=status_now.value))
        with _statements_sent(session.get_bind()) as statements:
            messages = repo.queue_steps_with_outbox(session, run_id, {"b": 7.0}, "a", 1)
        assert locked[1][0].status is StepStatus.RUNNING
    if settings.resolved_database_url.startswith("postgresql"):
        assert len(statements) == 1
    with transaction(factory) as session:
        step = repo.step_fields(session, run_id, "b")
        outbox = session.execute(select(Outbox.id, Outbox.step_id, Outbox.attempt, Outbox.soft_time_limit)
                                 .where(Outbox.run_id == run_id)).all()
    if not queued:
        assert (messages, step.status, step.attempt, outbox) == ([], StepStatus.PENDING, 0, [])
        return
    [message] = messages
    assert message == StepMessage(run_id, "b", 1, settings.default_queue, 7.0, message.outbox_id)
    assert (step.status, step.attempt) == (StepStatus.QUEUED, 1)
    assert outbox == [(message.outbox_id, "b", 1, 7.0)]

    # The whole report: a's success, b queued, its event, and no work left for the scheduler.
    with transaction(factory) as session:
        session.execute(update(Step).where(Step.run_id == run_id).values(
            status=StepStatus.PENDING.value, attempt=0))
        session.execute(update(Step).where(Step.run_id == run_id, Step.step_id == "a").values(
            status=StepStatus.RUNNING.value, attempt=1))
        session.execute(delete(Outbox).where(Outbox.run_id == run_id))
    with transaction(factory) as session:
        definition = catalog.get(session, ("t", "chain", 1))
        recorded = outcomes.record_outcome(session, definition, _report(run_id, {"n": 1}, queue_ready=True), Env())
    assert recorded.applied and not recorded.wakes_scheduler
    assert [(m.step_id, m.attempt) for m in recorded.messages] == [("b", 1)]
    with transaction(factory) as session:
        events = [(e.type, e.step_id, e.attempt) for e in repo.run_events(session, run_id, 0, 100)]
        run = session.execute(select(Run.has_work, Run.status).where(Run.id == run_id)).one()
        steps = {s.step_id: (s.status, s.attempt) for s in repo.run_steps(session, run_id)}
    assert events[-2:] == [("step_completed", "a", 1), ("step_queued", "b", 1)]
    assert steps == {"a": (StepStatus.SUCCEEDED, 1), "b": (StepStatus.QUEUED, 1)}
    assert tuple(run) == (False, RunStatus.RUNNING.value)


def test_a_claim_in_autocommit_and_a_delivery_to_a_paused_run_deferred_in_a_transaction(sessions):
    """The worker claims in autocommit on PostgreSQL (the claim is one statement there); a message for a
    paused run is not claimed, and defer_attempt then puts its step back to `pending`, attempt unspent."""
    settings, factory = sessions
    with transaction(factory) as session:
        service.publish_workflow(session, settings, "t", "one", ONE_STEP)
        run_ids = [service.start_run(session, settings, "t", "one", {}).run.id for _ in range(2)]
        for run_id, status in zip(run_ids, (RunStatus.RUNNING, RunStatus.PAUSED), strict=True):
            session.execute(update(Run).where(Run.id == run_id).values(status=status.value))
            session.execute(update(Step).where(Step.run_id == run_id).values(status=StepStatus.QUEUED.value, attempt=1))
    engine = factory.kw["bind"]
    autocommit = (make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
                  if engine.dialect.name == "postgresql" else factory)
    catalog = DefinitionCatalog()
    running, paused = run_ids
    with transaction(autocommit) as session:
        claim = outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(running, "a", 1), worker="w:1", lease_s=30)
        assert outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(paused, "a", 1), worker="w:1",
                                      lease_s=30) is None
    assert claim is not None and claim.definition.steps[0].id == "a"
    with transaction(factory) as session:
        assert outcomes.defer_attempt(session, outcomes.AttemptKey(paused, "a", 1))
        assert not outcomes.defer_attempt(session, outcomes.AttemptKey(running, "a", 1))  # running: nothing to defer
    with transaction(factory) as session:
        facts = {r: (repo.step_fields(session, r, "a").status, repo.step_fields(session, r, "a").attempt,
                     [e.type for e in repo.run_events(session, r, 0, 100)][-1]) for r in run_ids}
    assert facts[running] == (StepStatus.RUNNING, 1, "step_started")
    assert facts[paused] == (StepStatus.PENDING, 0, "step_deferred")


def _claimed(settings, factory, workflow: dict, catalog: DefinitionCatalog) -> tuple[str, outcomes.Claim]:
    """A run of ``workflow`` whose first step a worker claimed (in autocommit, as the worker does;
    ``catalog`` then holds its definition, as a worker's does)."""
    with transaction(factory) as session:
        service.publish_workflow(session, settings, "t", workflow["name"], workflow)
        run_id = service.start_run(session, settings, "t", workflow["name"], {}).run.id
        session.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.RUNNING.value, has_work=False))
        session.execute(update(Step).where(Step.run_id == run_id, Step.step_id == "a")
                        .values(status=StepStatus.QUEUED.value, attempt=1))
    with transaction(_autocommit(factory)) as session:
        claim = outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(run_id, "a", 1), worker="w:1", lease_s=30)
    assert claim is not None
    return run_id, claim


def _report(run_id: str, output=None, *, error=None, queue_ready: bool = False) -> AttemptReport:
    outcome = outcomes.Outcome(error=error) if error is not None else outcomes.Outcome(output=output)
    return AttemptReport(run_id, "a", 1, outcome, queue_ready=queue_ready)


@contextmanager
def _statements_sent(engine) -> Iterator[list]:
    """The statements sent meanwhile: through SQLAlchemy, and on PostgreSQL where psycopg sends them
    (the run's statement goes straight to the driver, past SQLAlchemy's events)."""
    statements: list = []
    if engine.dialect.name != "postgresql":
        def sent(*_args):
            statements.append(1)

        event.listen(engine, "before_cursor_execute", sent)
        try:
            yield statements
        finally:
            event.remove(engine, "before_cursor_execute", sent)
        return
    execute = psycopg.Cursor.execute

    def counted(cursor, query, *args, **kwargs):
        if str(query) != ";":  # the pool's pre-ping of the connection it hands out: not the writer's
            statements.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    psycopg.Cursor.execute = counted
    try:
        yield statements
    finally:
        psycopg.Cursor.execute = execute


def _autocommit(factory):
    engine = factory.kw["bind"]
    if engine.dialect.name != "postgresql":
        return factory
    return make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))


def _facts(factory, run_id: str) -> tuple:
    with transaction(factory) as session:
        run = session.execute(select(Run.status, Run.last_seq, Run.has_work, Run.usage, Run.output)
                              .where(Run.id == run_id)).one()
        steps = {s.step_id: (s.status, s.attempt, s.output) for s in repo.run_steps(session, run_id)}
        events = [(e.seq, e.type, e.step_id) for e in repo.run_events(session, run_id, 0, 100)]
    return tuple(run), steps, events


def test_a_success_as_claimed_writes_what_the_locked_outcome_writes_in_one_statement(sessions):
    """A run's last step succeeds from what its claim saw: one statement, no BEGIN or COMMIT, and the
    same step, run and events as record_outcome writes under the run's lock for the same report."""
    settings, factory = sessions
    written = {}
    catalog = DefinitionCatalog()
    for path in ("as claimed", "locked"):
        run_id, claim = _claimed(settings, factory, ONE_STEP, catalog)
        report = AttemptReport(run_id, "a", 1, outcomes.Outcome(output={"text": "x"}, usage={"tool_calls": 1}))
        env = Env(prices=settings.prices)
        if path == "locked":
            with transaction(factory) as session:
                recorded = outcomes.record_outcome(session, claim.definition, report, env)
        else:
            engine = factory.kw["bind"]
            with _statements_sent(engine) as statements, transaction(_autocommit(factory)) as session:
                recorded = outcomes.record_as_claimed(session, claim.definition, claim.seen, report, env)
            if engine.dialect.name != "postgresql":
                assert claim.seen is None or not recorded.applied  # SQLite: the locked path only
                return
            assert len(statements) == 1
        assert recorded.applied and not recorded.wakes_scheduler
        run, steps, events = _facts(factory, run_id)
        written[path] = (run, steps, [(t, s) for _seq, t, s in events])
        assert [seq for seq, _t, _s in events] == list(range(1, len(events) + 1))
    assert written["as claimed"] == written["locked"]
    run, steps, events = written["as claimed"]
    assert run[0] == RunStatus.SUCCEEDED.value and run[3]["tool_calls"] == 1 and run[4] == {"a": {"text": "x"}}
    assert steps == {"a": (StepStatus.SUCCEEDED, 1, {"text": "x"})}
    assert events[-3:] == [("step_started", "a"), ("step_completed", "a"), ("run_succeeded", None)]


@pytest.mark.parametrize("meanwhile", ["run-changed", "step-moved", "queues-next", "not-a-success"])
def test_a_success_as_claimed_writes_nothing_unless_the_run_is_as_the_claim_left_it(sessions, meanwhile):
    """Written nothing (None), the report goes to record_outcome: when another writer changed the run
    after the claim (its last_seq moved), when the step moved without it (the step's guard misses:
    the run must not move either, though the step's update is a CTE that always runs), when the success
    queues the next step (more than one statement), and for anything but a success."""
    settings, factory = sessions
    catalog = DefinitionCatalog()
    run_id, claim = _claimed(settings, factory, CHAIN if meanwhile == "queues-next" else ONE_STEP, catalog)
    if claim.seen is None:
        assert factory.kw["bind"].dialect.name == "sqlite"
        return
    if meanwhile == "run-changed":
        with transaction(factory) as session:
            session.execute(update(Run).where(Run.id == run_id).values(last_seq=Run.last_seq + 1))
    elif meanwhile == "step-moved":
        with transaction(factory) as session:
            session.execute(update(Step).where(Step.run_id == run_id).values(status=StepStatus.CANCELLED.value))
    report = (_report(run_id, error=outcomes.ErrorInfo("boom", "failed", False), queue_ready=True)
              if meanwhile == "not-a-success" else _report(run_id, {"text": "x"}, queue_ready=True))
    before = _facts(factory, run_id)
    with transaction(_autocommit(factory)) as session:
        assert not outcomes.record_as_claimed(session, claim.definition, claim.seen, report, Env()).applied
    assert _facts(factory, run_id) == before
    with transaction(factory) as session:
        recorded = outcomes.record_outcome(session, claim.definition, report, Env())
    assert recorded.applied is (meanwhile != "step-moved")
    if meanwhile == "queues-next":
        assert [m.step_id for m in recorded.messages] == ["b"]


def _written_facts(factory, run_id: str) -> tuple:
    with transaction(factory) as session:
        events = [(e.type, e.step_id, e.attempt) for e in repo.run_events(session, run_id, 0, 100)]
        steps = {s.step_id: (s.status, s.attempt) for s in repo.run_steps(session, run_id)}
        outbox = session.execute(select(Outbox.step_id, Outbox.attempt).where(Outbox.run_id == run_id)).all()
        run = session.execute(select(Run.status, Run.has_work, Run.last_seq).where(Run.id == run_id)).one()
    return events, steps, [tuple(row) for row in outbox], tuple(run)


def test_a_success_sent_together_writes_what_the_statements_one_by_one_write(settings, quiet_database):
    """writer.apply(together=True), as a worker's outcome is written: the next step's queueing and the
    run's statement go in one pipeline, the events naming the attempt decided. The rows written are
    those of the two statements sent one after the other."""
    settings = settings.model_copy(update={"database_url": quiet_database})
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    catalog = DefinitionCatalog()
    try:
        facts = []
        for together in (False, True):
            run_id = _chain_run_with_a_running(settings, factory)
            with transaction(factory) as session:
                definition = catalog.get(session, ("t", "chain", 1))
                recorded = outcomes.record_outcome(session, definition, _report(run_id, {"n": 1}, queue_ready=True),
                                                   Env(), together=together)
            assert [(m.step_id, m.attempt) for m in recorded.messages] == [("b", 1)]
            facts.append(_written_facts(factory, run_id))
        assert facts[0] == facts[1]
        events, steps, outbox, _run = facts[1]
        assert events[-2:] == [("step_completed", "a", 1), ("step_queued", "b", 1)]
        assert (steps, outbox) == ({"a": (StepStatus.SUCCEEDED, 1), "b": (StepStatus.QUEUED, 1)}, [("b", 1)])
    finally:
        engine.dispose()


def test_steps_queued_together_at_other_attempts_than_decided_are_written_again_one_by_one(
        settings, quiet_database, monkeypatch, caplog):
    """The race the check is for: a step's row read with the run's lock is older than the lock (the
    lock's read may predate it), and a writer moved it meanwhile. Sent together, the run's events
    would name the attempt decided from the stale row: the transaction is undone and the outcome
    written again, the queueing first, so its events name the attempt the database queued."""
    settings = settings.model_copy(update={"database_url": quiet_database})
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    autocommit = AutocommitSessions(make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")))
    worker = SimpleNamespace(one_statement=autocommit, transaction=autocommit.transaction)
    try:
        run_id = _chain_run_with_a_running(settings, factory)
        read_with_the_lock = repo.lock_run_with_steps
        raced: list[int] = []

        def then_another_writer_moves_b(session, run, step_ids):
            found = read_with_the_lock(session, run, step_ids)
            if not raced:  # once: b's attempt goes up after the read (b stays pending)
                with psycopg.connect(_libpq(quiet_database), autocommit=True) as other:
                    raced.append(other.execute("UPDATE steps SET attempt = 4 WHERE run_id = %s AND step_id = 'b'",
                                               (run_id,)).rowcount)
            return found

        monkeypatch.setattr(outcomes.repo, "lock_run_with_steps", then_another_writer_moves_b)
        with transaction(factory) as session:
            definition = DefinitionCatalog().get(session, ("t", "chain", 1))
        with caplog.at_level("INFO", logger="orchestrator.outcomes"):
            recorded = outcomes.record(worker, definition, _report(run_id, {"n": 1}, queue_ready=True),
                                       seen=None, env=Env())
        assert raced == [1]
        assert "not as decided" in caplog.text
        assert [(m.step_id, m.attempt) for m in recorded.messages] == [("b", 5)]
        events, steps, outbox, _run = _written_facts(factory, run_id)
        assert events[-2:] == [("step_completed", "a", 1), ("step_queued", "b", 5)]
        assert [e for e in events if e[0] == "step_completed"] == [("step_completed", "a", 1)]  # written once
        assert (steps, outbox) == ({"a": (StepStatus.SUCCEEDED, 1), "b": (StepStatus.QUEUED, 5)}, [("b", 5)])
    finally:
        autocommit.close()
        engine.dispose()


def _claim_facts(factory, run_id: str) -> tuple:
    """_written_facts with what a claim writes: the claimed step's worker and whether it has a lease,
    and the events' sequence numbers (dense, the run's last_seq the last)."""
    events, steps, outbox, run = _written_facts(factory, run_id)
    with transaction(factory) as session:
        claimed = session.execute(select(Step.worker, Step.lease_expires_at.is_not(None))
                                  .where(Step.run_id == run_id, Step.step_id == "b")).one()
        seqs = [e.seq for e in repo.run_events(session, run_id, 0, 100)]
    return events, steps, outbox, run, tuple(claimed), seqs == list(range(1, run[2] + 1))


def _worker_sessions(engine) -> SimpleNamespace:
    autocommit = AutocommitSessions(make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")))
    return SimpleNamespace(one_statement=autocommit, transaction=autocommit.transaction, close=autocommit.close)


def _claim_next(accepts=lambda _message: True) -> writer.ClaimNext:
    return writer.ClaimNext("w:2", 30, "steps", accepts)


@contextmanager
def _chain_with_a_running(settings, url: str) -> Iterator[SimpleNamespace]:
    """A run of CHAIN with ``a`` running (``run_id``), its ``definition``, the tests' sessions (``factory``)
    and a worker's (``worker``), closed after."""
    engine = make_engine(settings.model_copy(update={"database_url": url}))
    factory = make_sessionmaker(engine)
    worker = _worker_sessions(engine)
    try:
        run_id = _chain_run_with_a_running(settings, factory)
        with transaction(factory) as session:
            definition = DefinitionCatalog().get(session, ("t", "chain", 1))
        yield SimpleNamespace(factory=factory, worker=worker, run_id=run_id, definition=definition)
    finally:
        worker.close()
        engine.dispose()


def test_an_outcome_that_claims_the_next_step_writes_what_its_outcome_and_the_claim_write(settings, quiet_database):
    """writer.ClaimNext, as a worker that runs the next step itself records its outcome: the next step is
    claimed in the outcome's transaction, sent with its queueing and the run's statement. The rows are
    those of the outcome followed by the claim of the step's message (claim_attempt with its outbox row),
    but no outbox row is ever written; and the claim answers what claim_attempt's would."""
    settings = settings.model_copy(update={"database_url": quiet_database})
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    worker = _worker_sessions(engine)
    catalog = DefinitionCatalog()
    try:
        facts, claims = [], []
        for together in (False, True):
            run_id = _chain_run_with_a_running(settings, factory)
            with transaction(factory) as session:
                definition = catalog.get(session, ("t", "chain", 1))
            report = _report(run_id, {"n": 1}, queue_ready=True)
            key = outcomes.AttemptKey(run_id, "b", 1)
            if together:
                with _statements_sent(engine) as sent:
                    recorded = outcomes.record(worker, definition, report, seen=None, env=Env(),
                                               claim_next=_claim_next())
                assert recorded.claimed is not None and recorded.claimed.claimed
                assert [(m.step_id, m.attempt, m.outbox_id) for m in recorded.messages] == [("b", 1, None)]
                assert sum("INSERT INTO outbox" in q for q in sent) == 0, sent
                with worker.one_statement() as session:
                    claim = outcomes.claim_of(session, catalog, key, recorded.claimed)
            else:
                recorded = outcomes.record(worker, definition, report, seen=None, env=Env())
                assert recorded.claimed is None
                with worker.one_statement() as session:
                    claim = outcomes.claim_attempt(session, catalog, key, worker="w:2", lease_s=30,
                                                   outbox_id=recorded.messages[0].outbox_id)
            facts.append(_claim_facts(factory, run_id))
            claims.append(claim)
            assert claim.seen.last_seq == facts[-1][3][2]  # the claim's snapshot: its own event is the run's last
        assert facts[0] == facts[1]
        events, steps, outbox, _run, claimed, dense = facts[1]
        assert events[-3:] == [("step_completed", "a", 1), ("step_queued", "b", 1), ("step_started", "b", 1)]
        assert (steps, outbox, claimed, dense) == (
            {"a": (StepStatus.SUCCEEDED, 1), "b": (StepStatus.RUNNING, 1)}, [], ("w:2", True), True)

        def what_it_runs(claim: outcomes.Claim) -> tuple:
            return (claim.step_id, claim.attempt, claim.tenant_id, claim.run_input, claim.run_attempt, claim.outputs,
                    claim.checkpoint, claim.limits, claim.run_usage, claim.seen.steps["b"].status)

        assert what_it_runs(claims[1]) == what_it_runs(claims[0])
    finally:
        worker.close()
        engine.dispose()


def test_an_outcome_claims_the_next_step_only_if_the_worker_takes_its_message(settings, quiet_database):
    """ClaimNext's ``accepts`` says no (the worker's budget for eager steps is spent): the step is queued
    with its outbox row, for its message to be published."""
    with _chain_with_a_running(settings, quiet_database) as chain:
        offered: list[StepMessage] = []
        recorded = outcomes.record(chain.worker, chain.definition, _report(chain.run_id, {"n": 1}, queue_ready=True),
                                   seen=None, env=Env(),
                                   claim_next=_claim_next(lambda message: offered.append(message) and False))
        assert [(m.step_id, m.attempt) for m in offered] == [("b", 1)]
        assert recorded.claimed is None and recorded.messages[0].outbox_id is not None
        _events, steps, outbox, _run = _written_facts(chain.factory, chain.run_id)
        assert (steps, outbox) == ({"a": (StepStatus.SUCCEEDED, 1), "b": (StepStatus.QUEUED, 1)}, [("b", 1)])


def test_a_claim_with_the_outcome_that_matches_nothing_is_written_again_without_it(
        settings, quiet_database, monkeypatch, caplog):
    """A claim sent with the outcome whose guard matches nothing would leave its step queued with no
    outbox row, so no message: the transaction is undone and the outcome written again, one statement
    after the other, the step queued with its outbox row. (The claim is sent for an attempt the step
    does not have: under the run's lock nothing else can make a claim of the queued step miss.)"""
    send_claim = repo.send_claim

    def claim_another_attempt(session, run, step_id, attempt, **kwargs):
        return send_claim(session, run, step_id, attempt + 1, **kwargs)

    monkeypatch.setattr(writer.repo, "send_claim", claim_another_attempt)
    with _chain_with_a_running(settings, quiet_database) as chain, \
            caplog.at_level("INFO", logger="orchestrator.outcomes"):
        recorded = outcomes.record(chain.worker, chain.definition, _report(chain.run_id, {"n": 1}, queue_ready=True),
                                   seen=None, env=Env(), claim_next=_claim_next())
        assert "not claimed" in caplog.text
        assert recorded.claimed is None and [(m.step_id, m.attempt) for m in recorded.messages] == [("b", 1)]
        events, steps, outbox, _run = _written_facts(chain.factory, chain.run_id)
        assert [e for e in events if e[0] in ("step_completed", "step_started")] == [("step_completed", "a", 1)]
        assert (steps, outbox) == ({"a": (StepStatus.SUCCEEDED, 1), "b": (StepStatus.QUEUED, 1)}, [("b", 1)])
