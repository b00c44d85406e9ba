"""`switchyard doctor`: the invariant checker. Lists what breaks the engine's promises about runs,
steps and the outbox, as an operator (or a test after a chaos scenario) would want them named:

- ``step_in_flight_in_ended_run``: a succeeded, failed or cancelled run holds a step queued,
  retrying or waiting, or one running whose lease expired more than a sweep ago (a graceful cancel
  lets an attempt finish; a lost one is reaped by the sweep);
- ``stalled_run``: a queued, running or waiting run with nothing in flight, no due time, no waiting
  reason and no work flagged for the scheduler: nothing will ever move it;
- ``lease_overdue``: a step of a live run running more than a sweep past its lease (the sweep
  reclaims expired leases every ``SWITCHYARD_SWEEP_INTERVAL_S``);
- ``outbox_stale``: an outbox row not held for its window older than the republish delay plus a
  sweep (the sweep publishes rows older than ``SWITCHYARD_OUTBOX_REPUBLISH_AFTER_S`` and deletes them);
- ``held_without_message``: a step `queued` and held for its queue's window (docs/flow-control.md)
  with no held outbox row of its attempt: the admission admits rows, so nothing will send it.

A transient violation heals by itself within a sweep or two while the scheduler runs; one that
stays is a bug or a stopped scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import click
from sqlalchemy.orm import Session

from orchestrator.settings import Settings

STEP_IN_FLIGHT_IN_ENDED_RUN = "step_in_flight_in_ended_run"
STALLED_RUN = "stalled_run"
LEASE_OVERDUE = "lease_overdue"
OUTBOX_STALE = "outbox_stale"
HELD_WITHOUT_MESSAGE = "held_without_message"


@dataclass(frozen=True)
class Violation:
    """One broken invariant: its kind, where, and a sentence saying what was found."""

    kind: str
    run_id: str
    step_id: str | None
    detail: str


def find_violations(session: Session, settings: Settings, limit: int = 100,
                    run_ids: Sequence[str] | None = None) -> list[Violation]:
    """Every violation found (at most ``limit`` of each kind; of the runs ``run_ids`` only, if given),
    ordered by kind then run."""
    # Imported here: the command line registers this module, and `switchyard --help` need not load the repository.
    from orchestrator.db.repository import doctor as checks

    sweep = settings.sweep_interval_s
    found = [
        Violation(STEP_IN_FLIGHT_IN_ENDED_RUN, r.run_id, r.step_id,
                  f"the run is {r.run_status} but step {r.step_id!r} is {r.status}")
        for r in checks.steps_in_flight_of_ended_runs(session, sweep, limit, run_ids)
    ]
    found += [
        Violation(STALLED_RUN, r.run_id, None,
                  f"the run is {r.status} with no step in flight, no due time, no waiting reason and no work flagged")
        for r in checks.stalled_live_runs(session, limit, run_ids)
    ]
    found += [
        Violation(LEASE_OVERDUE, r.run_id, r.step_id,
                  f"attempt {r.attempt} is running {r.overdue_s:.1f} s past its lease (sweep every {sweep:g} s)")
        for r in checks.overdue_leases(session, sweep, limit, run_ids)
    ]
    found += [
        Violation(OUTBOX_STALE, r.run_id, r.step_id,
                  f"outbox row {r.id} (attempt {r.attempt}) is {r.age_s:.1f} s old, unpublished "
                  f"(republished after {settings.outbox_republish_after_s:g} s)")
        for r in checks.old_outbox_rows(session, settings.outbox_republish_after_s + sweep, limit, run_ids)
    ]
    found += [
        Violation(HELD_WITHOUT_MESSAGE, r.run_id, r.step_id,
                  f"attempt {r.attempt} is queued and held for room in the window of {r.queue!r}, "
                  "but no held outbox row of that attempt is left to admit")
        for r in checks.held_without_message(session, limit, run_ids)
    ]
    return found


def report(violations: list[Violation]) -> str:
    """The violations as lines for a person, or a line saying there are none."""
    if not violations:
        return "no violations: every run, step and outbox row is as the engine promises"
    lines = [f"{len(violations)} violation{'s' if len(violations) != 1 else ''}:"]
    lines += [f"  {v.kind}  run {v.run_id}{f' step {v.step_id}' if v.step_id else ''}: {v.detail}" for v in violations]
    lines.append("a violation that stays across two sweeps is a bug or a stopped scheduler: "
                 "check that `switchyard scheduler` runs, then look at the run's events (GET /runs/{id}/events)")
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the violations as a JSON document.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1),
              help="At most this many violations of each kind.")
def doctor(as_json: bool, limit: int) -> None:
    """Check the engine's invariants on the database; exit 1 if any is violated."""
    from orchestrator.db.session import make_engine, make_sessionmaker
    from orchestrator.settings import load

    settings = load()
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            violations = find_violations(session, settings, limit)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"violations": [asdict(v) for v in violations], "count": len(violations)}, indent=2))
    else:
        click.echo(report(violations))
    if violations:
        raise SystemExit(1)
