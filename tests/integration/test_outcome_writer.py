"""The outcome writer's step move, written with the run's changes (on PostgreSQL in one statement):
the run changes and its events are written only if the step's guard matched."""

from __future__ import annotations

import pytest
from sqlalchemy import event, update

from orchestrator import outcomes, service
from orchestrator.db import migrate
from orchestrator.db import repository as repo
from orchestrator.db.models import Run, Step
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from orchestrator.states import RunStatus, StepStatus

ONE_STEP = {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}}]}


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request, settings, tmp_path):
    if request.param == "sqlite":
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'outcome.db'}", data_dir=tmp_path)
        migrate.upgrade(settings)
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
        run_id = service.start_run(session, settings, "t", "one", None, {})[0].id
        # Another writer put the step where it is now (the outcome expects it running at attempt 1).
        session.execute(update(Step).where(Step.run_id == run_id).values(status=status_now.value, attempt=1))
        session.execute(update(Run).where(Run.id == run_id).values(status=RunStatus.RUNNING.value))
    with transaction(factory) as session:
        run = repo.lock_run(session, run_id)
        changes = repo.RunChanges(run, run_values={"has_work": True})
        changes.event("step_completed", "a", 1, output={"n": 1})
        if run_finishes:
            outcomes.succeed_run(changes, {"a": {"n": 1}})
        changes.step_move = repo.StepMove("a", StepStatus.SUCCEEDED, frozenset([StepStatus.RUNNING]), 1,
                                          {"output": {"n": 1}, "completed_at": repo.NOW})
        statements = []
        listener = lambda *_args: statements.append(1)  # noqa: E731 - counts the statements sent
        event.listen(session.get_bind(), "before_cursor_execute", listener)
        try:
            assert repo.apply_run_changes(session, changes) is applied
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", listener)
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
