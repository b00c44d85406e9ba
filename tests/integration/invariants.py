"""The invariant checker (``orchestrator.doctor``) as the tests call it after a scenario: every run,
step and outbox row is as the engine promises, once the scheduler had a few sweeps to heal what the
scenario left (a lease that just expired, an outbox row a killed process left)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from orchestrator.db.session import make_engine, make_sessionmaker
from orchestrator.doctor import find_violations, report
from orchestrator.settings import Settings


def assert_no_violations(settings: Settings, run_ids: Sequence[str] | None = None, within_s: float | None = None
                         ) -> None:
    """Fail, listing them, if violations remain after ``within_s`` seconds (default: a lease, the
    republish delay and three sweeps, the longest a healthy engine takes to heal one); of the runs
    ``run_ids`` only, if given (a database other tests share)."""
    within_s = within_s if within_s is not None else (
        settings.lease_s + settings.outbox_republish_after_s + 3 * settings.sweep_interval_s)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    deadline = time.monotonic() + within_s
    try:
        while True:
            with sessions() as session:
                violations = find_violations(session, settings, run_ids=run_ids)
            if not violations or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # polling with a deadline: violations heal as the scheduler sweeps
    finally:
        engine.dispose()
    if violations:
        pytest.fail(f"invariants violated {within_s:.0f} s after the scenario:\n{report(violations)}", pytrace=False)
