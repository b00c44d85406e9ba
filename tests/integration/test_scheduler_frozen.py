"""One of two schedulers frozen (SIGSTOP) in the middle of a transaction, holding its runs' row locks,
for 30 s while runs keep coming: PostgreSQL ends its session after the idle-in-transaction timeout,
the other scheduler takes its runs, and no run waits more than 10 s. Thawed, the frozen one finds its
session gone, reconnects and goes on; every run succeeds once, and the invariant checker finds nothing.

Every run here needs the scheduler (a step with a condition is left to its pass), on a database and
a Redis db of the test's own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from orchestrator.db import repository as repo
from orchestrator.db.models import Event, Run
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.scheduler import IDLE_IN_TRANSACTION_TIMEOUT_MS
from orchestrator.settings import Settings
from tests.integration import conftest
from tests.integration.conftest import Api, Processes, publish, stack_of_its_own, wait_for
from tests.integration.invariants import assert_no_violations

# A fault-injection scenario: `make chaos` runs it (and .ci/run), `make test` leaves it out.
pytestmark = pytest.mark.chaos

FREEZE_S = 30
FROZEN = "switchyard-test-frozen-scheduler"  # its connections' application_name (libpq's PGAPPNAME)


@pytest.fixture
def two_schedulers(tmp_path) -> Iterator[tuple[Settings, Processes]]:
    with stack_of_its_own("switchyard_sched_frozen", tmp_path, lease_s=6.0, outbox_republish_after_s=2.0) as (
            settings, procs):
        try:
            procs.start("worker", "worker", "--concurrency", "3", "--pool", "prefork", "--loglevel", "INFO")
            procs.start("frozen", "scheduler", env={"PGAPPNAME": FROZEN})
            procs.start("other", "scheduler")
            yield settings, procs
        finally:
            if "frozen" in procs.procs:
                os.kill(procs.procs["frozen"].pid, signal.SIGCONT)  # never leave it stopped
            procs.stop_all()


def freeze_holding_runs(settings: Settings, pid: int, deadline_s: float = 60) -> int:
    """SIGSTOP the scheduler ``pid`` inside a pass, after it locked runs, then let the pass's statement
    end: its session then sits idle in the transaction holding the runs' locks, as a scheduler frozen
    between two statements.

    The moment is made, not waited for: the test holds the ``approvals`` table, which only a pass reads
    (for a condition's template context, after the pass locked its runs and read their steps; the
    sweep, the workers and the run's start never read it), so a pass over these conditional runs waits
    there with its runs locked, and the scheduler is caught in that wait. The hold lasts at most a
    second at a time, so the other scheduler is slowed, never stopped. Returns how many holds it took."""
    waiting_with_runs_locked = (
        "SELECT count(*) FROM pg_stat_activity a WHERE a.application_name = %s "
        "AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.relation = 'approvals'::regclass "
        "AND NOT l.granted) "
        "AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.relation = 'runs'::regclass "
        "AND l.mode = 'RowShareLock' AND l.granted)")
    url = conftest._libpq(settings.database_url)
    with psycopg.connect(url, autocommit=True) as admin, psycopg.connect(url) as blocker:
        deadline, holds = time.monotonic() + deadline_s, 0
        while time.monotonic() < deadline:
            blocker.execute("LOCK TABLE approvals IN ACCESS EXCLUSIVE MODE")
            holds += 1
            try:
                until = time.monotonic() + 1.0
                while time.monotonic() < until:
                    if admin.execute(waiting_with_runs_locked, (FROZEN,)).fetchone()[0]:
                        os.kill(pid, signal.SIGSTOP)
                        return holds
                    time.sleep(0.01)  # polling for the moment, with a deadline
            finally:
                blocker.rollback()
            time.sleep(0.2)  # let the engine go on between tries
    pytest.fail(f"the scheduler never locked runs for a pass in {deadline_s} s")


def session_in_transaction(settings: Settings) -> bool:
    with psycopg.connect(conftest._libpq(settings.database_url), autocommit=True) as admin:
        return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                             "AND xact_start IS NOT NULL", (FROZEN,)).fetchone()[0] > 0


class Starts(threading.Thread):
    """Starts a run every 200 ms until stopped, keeping the ids started and any other answer."""

    def __init__(self, api: Api, workflow: str):
        super().__init__(daemon=True)
        self.api, self.workflow, self.run_ids, self.refused = api, workflow, [], []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            response = self.api.post("/runs", json={"workflow_id": self.workflow, "input": {}})
            if response.status_code == 201:
                self.run_ids.append(response.get_json()["id"])
            else:
                self.refused.append((response.status_code, response.get_json()))


def freeze_for(settings: Settings, procs: Processes, starts: Starts) -> tuple[float, int]:
    """Freeze the scheduler inside a pass for FREEZE_S while runs keep coming, then thaw it; seconds
    until PostgreSQL ended its transaction, and how many holds of the approvals table caught it."""
    holds = freeze_holding_runs(settings, procs.procs["frozen"].pid)
    frozen_at = time.monotonic()
    assert session_in_transaction(settings), "the scheduler was not frozen in a transaction"
    bound = IDLE_IN_TRANSACTION_TIMEOUT_MS / 1000
    wait_for(lambda: not session_in_transaction(settings), bound + 5,
             f"PostgreSQL to end the frozen scheduler's transaction (idle timeout {bound:g} s)")
    ended_after = time.monotonic() - frozen_at
    # The freeze lasts FREEZE_S while runs keep coming: the pace of the fault, not synchronisation.
    time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))
    os.kill(procs.procs["frozen"].pid, signal.SIGCONT)
    started_before_thaw = len(starts.run_ids)
    wait_for(lambda: len(starts.run_ids) >= started_before_thaw + 20, 30, "20 runs started after the thaw")
    return ended_after, holds


def what_runs_went_through(sessions) -> dict:
    """Run statuses, the longest run, the longest wait for a scheduler (from `a` completed, has_work
    raised and the doorbell rung, to the pass that queued `b`) with its run, and attempts queued twice."""
    done, queued = aliased(Event), aliased(Event)
    waited = func.extract("epoch", queued.created_at - done.created_at)
    with sessions() as session:
        slowest_id, longest = session.execute(
            select(done.run_id, waited)
            .join(queued, (queued.run_id == done.run_id) & (queued.type == "step_queued") & (queued.step_id == "b"))
            .where(done.type == "step_completed", done.step_id == "a").order_by(waited.desc()).limit(1)).one()
        return dict(
            statuses=dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all()),
            longest_run=float(session.execute(
                select(func.max(func.extract("epoch", Run.completed_at - Run.created_at)))).scalar_one()),
            slowest_id=slowest_id, longest_wait=float(longest),
            twice=session.execute(
                select(Event.run_id, Event.step_id, Event.attempt).where(Event.type == "step_queued")
                .group_by(Event.run_id, Event.step_id, Event.attempt).having(func.count() > 1)).all(),
        )


def test_a_frozen_schedulers_runs_are_taken_by_another_within_seconds(two_schedulers, app_for):

    settings, procs = two_schedulers
    sessions = make_sessionmaker(make_engine(settings))
    with transaction(sessions) as session:
        token = repo.create_token(session, "frozen", "admin", "frozen scheduler test")[1]
    api = Api(app_for(settings).test_client(), token)
    workflow = publish(api, {"name": "conditional", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "args": {"ok": True}},
        {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"], "when": "steps.a.output.ok", "args": {}},
    ]})
    starts = Starts(api, workflow)
    starts.start()
    try:
        wait_for(lambda: len(starts.run_ids) >= 10, 30, "10 runs started before the freeze")
        ended_after, holds = freeze_for(settings, procs, starts)
    finally:
        starts.stopping.set()
        starts.join(10)

    def all_ended() -> bool:
        with sessions() as session:
            return session.execute(select(func.count()).select_from(Run).where(
                Run.status.in_(["succeeded", "failed", "cancelled"]))).scalar_one() == len(starts.run_ids)

    wait_for(all_ended, 60, f"all {len(starts.run_ids)} runs to end", interval=0.5)
    seen = what_runs_went_through(sessions)
    assert starts.refused == [], starts.refused[:3]
    assert seen["statuses"] == {"succeeded": len(starts.run_ids)}, seen["statuses"]
    assert seen["longest_wait"] < 10, (f"run {seen['slowest_id']} waited {seen['longest_wait']:.1f} s for a "
                                       f"scheduler (the frozen one's transaction ended after {ended_after:.1f} s)")
    assert seen["twice"] == [], f"attempts queued twice: {seen['twice'][:5]}"
    assert procs.procs["frozen"].poll() is None, "the thawed scheduler exited instead of reconnecting"
    wait_for(lambda: "scheduler pass failed; reconnecting" in procs.log_tail("frozen", 400), 20,
             "the thawed scheduler to find its session ended and reconnect")
    assert_no_violations(settings)
    print(f"\nscheduler frozen {FREEZE_S} s holding runs' locks (caught in a pass by hold {holds} of the approvals "
          f"table): its transaction ended after {ended_after:.1f} s; "
          f"{len(starts.run_ids)} runs, all succeeded; the longest wait for a scheduler {seen['longest_wait']:.1f} s, "
          f"the longest run {seen['longest_run']:.1f} s")
