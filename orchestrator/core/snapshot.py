"""A run and its steps as a decision sees them: frozen values built from rows.

A snapshot holds the steps a decision needs, not always all of them: a worker's report needs only its
own step (and the facts its run's end needs), fail-fast needs every step. ``complete`` says which.
``locked`` says whether it was read under the run's row lock; a snapshot that was not (what a claim
left) can only be written in one statement that checks the run is unchanged since (``last_seq``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from orchestrator.states import RunStatus, StepStatus

_STEP_STATUSES = {status.value: status for status in StepStatus}


class StepState(NamedTuple):
    """One step of a run, with the clock checks (``due``, ``lease_expired``) done by the database.

    A named tuple rather than a frozen dataclass: the scheduler builds one per step of every run of
    every pass (a fan-out's 1,001 on every report), and a tuple is built several times faster."""

    step_id: str
    type: str
    status: StepStatus
    attempt: int
    max_attempts: int
    queue: str
    due: bool = False
    lease_expired: bool = False
    waiting_on: str | None = None
    # A for-each step's items' counts (core.items.ItemCounts as JSON); None on any other step.
    item_counts: Mapping[str, int] | None = None
    # The policy decisions recorded on the step so far (read on a worker's report only).
    policy: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StepState:
        """From a row of the step's columns in this order (the repository's STEP_COLUMNS): step_id,
        type, status, attempt, max_attempts, queue, due, expired, waiting_on, item_counts, and policy where
        the row has it (a report's path reads it; the scheduler's, which reads every step, does not).
        Unpacked as a tuple: reading a row's columns by name costs several times more."""
        step_id, type_, status, attempt, max_attempts, queue, due, expired, waiting_on, item_counts, *policy = row
        return cls(step_id, type_, _STEP_STATUSES[status], attempt, max_attempts, queue, bool(due), bool(expired),
                   waiting_on, item_counts, tuple(policy[0]) if policy and policy[0] else ())

    def moved(self, **changes: Any) -> StepState:
        return self._replace(**changes)


# The run's columns a snapshot carries.
RUN_COLUMNS = ("id", "tenant_id", "workflow_id", "workflow_version", "status", "waiting_on", "usage", "last_seq",
               "risk_level", "attempt", "input", "limits", "parent_run_id", "depth")


@dataclass(frozen=True, slots=True)
class RunState:
    """A run as a decision sees it, with the steps it needs."""

    id: str
    tenant_id: str
    workflow_id: str
    workflow_version: int
    status: RunStatus
    last_seq: int
    steps: Mapping[str, StepState] = field(default_factory=dict)
    waiting_on: str | None = None
    usage: Mapping[str, float] = field(default_factory=dict)
    risk_level: str | None = None
    attempt: int = 1
    input: Any = None
    limits: Mapping[str, Any] | None = None
    complete: bool = True  # every step of the run is in ``steps``
    locked: bool = True  # read under the run's lock (else: as a claim left it)
    # Read for this decision, under the lock: every step but the reported one succeeded (None: not read),
    # and the outputs of the succeeded steps the decision needs (the run's output, templates).
    others_succeeded: bool | None = None
    outputs: Mapping[str, Any] | None = None  # None: not read
    # What the templates of a step to park read besides outputs: the latest approval decision.
    approval: Mapping[str, Any] | None = None
    # A child run's parent (its end wakes the parent) and how deep it is (a top-level run: 0).
    parent_run_id: str | None = None
    depth: int = 0
    # The child runs of the due sub-run steps and items (core.children.ChildFacts), by step id; None: not read.
    children: Mapping[str, Any] | None = None
    # A for-each step started again (a run's retry): its earlier items that succeeded, {index: value},
    # by step id; None: not read (core.items keeps those whose value is unchanged).
    succeeded_items: Mapping[str, Mapping[int, Any]] | None = None
    # The room under the concurrency keys its decision renders (core.concurrency.Room), by (scope, key),
    # read under the scheduler's concurrency lock; None: not read.
    concurrency: Mapping[tuple[str, str], Any] | None = None

    @classmethod
    def from_row(cls, row: Any, steps: Iterable[StepState] = (), **facts: Any) -> RunState:
        """From a run's row (any object with the run's columns; those absent take their defaults)."""
        values = {name: getattr(row, name) for name in RUN_COLUMNS if hasattr(row, name)}
        values["status"] = RunStatus(values["status"])
        return cls(steps=MappingProxyType({s.step_id: s for s in steps}), **values, **facts)

    def step(self, step_id: str) -> StepState:
        return self.steps[step_id]

    def statuses(self) -> dict[str, StepStatus]:
        return {s.step_id: s.status for s in self.steps.values()}

    def with_steps(self, steps: Iterable[StepState]) -> RunState:
        """The same run with ``steps`` replacing the steps of the same ids."""
        merged = dict(self.steps)
        merged.update({s.step_id: s for s in steps})
        return dataclasses.replace(self, steps=MappingProxyType(merged))

    def replace(self, **changes: Any) -> RunState:
        return dataclasses.replace(self, **changes)
