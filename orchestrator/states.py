"""Run and step statuses and the one table of allowed transitions — pure, no I/O.

Every status change in the system is checked here first, and then guarded in SQL with
``allowed_from()`` of the same table (docs/architecture.md, "Statuses and guarded transitions"), so a late or duplicate
report finds zero rows to update and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


R, S = RunStatus, StepStatus

RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    # A run can wait, fail or even finish within the scheduler's first pass, before any worker ran a
    # step (an approval first; a template error in a wait; an event that was already kept).
    R.QUEUED: frozenset({R.RUNNING, R.WAITING, R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.RUNNING: frozenset({R.WAITING, R.PAUSED, R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.WAITING: frozenset({R.RUNNING, R.PAUSED, R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    # A step in flight may still fail for good while its run is paused: fail-fast applies.
    R.PAUSED: frozenset({R.RUNNING, R.WAITING, R.FAILED, R.CANCELLED}),
    R.SUCCEEDED: frozenset(),
    # `retry` puts a failed or cancelled run back in the queue; it is the only way out of these.
    R.FAILED: frozenset({R.QUEUED}),
    R.CANCELLED: frozenset({R.QUEUED}),
}

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    # pending -> running: a for-each step starts its items (it holds no worker itself).
    S.PENDING: frozenset({S.QUEUED, S.RUNNING, S.WAITING, S.SKIPPED, S.CANCELLED}),
    # queued -> pending: the run was paused before a worker claimed the attempt.
    S.QUEUED: frozenset({S.RUNNING, S.PENDING, S.CANCELLED}),
    # running -> waiting: an agent asked a human (`human.ask`) and gave its worker back.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.RETRYING, S.CANCELLED, S.WAITING}),
    # retrying -> running: a sub-run step's next attempt starts its new child run (it holds no worker).
    # retrying -> pending: its next attempt waits for room under its concurrency key.
    S.RETRYING: frozenset({S.QUEUED, S.RUNNING, S.PENDING, S.CANCELLED}),
    # waiting -> pending: a human answered an agent's question (it is dispatched again to go on), or
    # an approval asked for changes and goes round again.
    S.WAITING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PENDING}),
    # succeeded -> pending: an approval asked for changes and its upstream step runs again.
    S.SUCCEEDED: frozenset({S.PENDING}),
    # failed/cancelled/skipped -> pending: the operator retried the run.
    S.FAILED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
    S.SKIPPED: frozenset({S.PENDING}),
}

TERMINAL_RUN = frozenset({R.SUCCEEDED, R.FAILED, R.CANCELLED})
TERMINAL_STEP = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.SKIPPED})
# Steps that hold a worker or a due time: they are cancelled, not skipped, by fail-fast.
IN_FLIGHT_STEP = frozenset({S.QUEUED, S.RUNNING, S.RETRYING, S.WAITING})


class InvalidTransition(Exception):
    """A status change that the transition table does not allow."""

    def __init__(self, current: str, target: str, allowed_from: frozenset[str], action: str | None = None):
        self.current, self.target, self.action = current, target, action
        # Plain strings: the repr of a StrEnum member would leak "<RunStatus.X: 'x'>" into the message.
        self.allowed_from = sorted(str(s) for s in allowed_from)
        what = action or f"-> {target}"
        super().__init__(f"{what} is not allowed from {str(current)!r}; allowed from {self.allowed_from}")


def _allowed_from(table: dict, target) -> frozenset:
    return frozenset(src for src, targets in table.items() if target in targets)


def run_allowed_from(target: RunStatus) -> frozenset[RunStatus]:
    """The run statuses from which ``target`` may be reached (the SQL guard's IN list)."""
    return _allowed_from(RUN_TRANSITIONS, target)


def step_allowed_from(target: StepStatus, only_from: Iterable[StepStatus] | None = None) -> frozenset[StepStatus]:
    """The step statuses from which ``target`` may be reached (the SQL guard's IN list), narrowed to
    ``only_from`` if given."""
    allowed = _allowed_from(STEP_TRANSITIONS, target)
    return allowed if only_from is None else allowed & frozenset(only_from)


def run_transition(current: RunStatus, target: RunStatus) -> RunStatus:
    """Return ``target`` if the run may move there from ``current``; raise InvalidTransition otherwise."""
    if target not in RUN_TRANSITIONS[current]:
        raise InvalidTransition(current, target, run_allowed_from(target))
    return target


def step_transition(current: StepStatus, target: StepStatus) -> StepStatus:
    """Return ``target`` if the step may move there from ``current``; raise InvalidTransition otherwise."""
    if target not in STEP_TRANSITIONS[current]:
        raise InvalidTransition(current, target, step_allowed_from(target))
    return target


@dataclass(frozen=True)
class Control:
    """An operator's action on a run: where it may be taken from and where it leads (None: a new run)."""

    allowed_from: frozenset[RunStatus]
    target: RunStatus | None


CONTROLS: dict[str, Control] = {
    "pause": Control(frozenset({R.RUNNING, R.WAITING}), R.PAUSED),
    "resume": Control(frozenset({R.PAUSED}), R.RUNNING),
    "cancel": Control(frozenset({R.QUEUED, R.RUNNING, R.WAITING, R.PAUSED}), R.CANCELLED),
    "retry": Control(frozenset({R.FAILED, R.CANCELLED}), R.QUEUED),
    "rerun": Control(frozenset({R.FAILED, R.CANCELLED, R.SUCCEEDED}), None),
}


def apply_control(action: str, current: RunStatus) -> RunStatus | None:
    """Return the run's status after ``action``; raise InvalidTransition (with allowed_from) if refused."""
    control = CONTROLS[action]
    if current not in control.allowed_from:
        raise InvalidTransition(current, control.target or "new run", control.allowed_from, action=action)
    if control.target is not None:
        run_transition(current, control.target)
    return control.target
