"""The value a decision returns and the writer applies: ``Transition``; and ``Draft``, which builds one.

A transition names every write as data: the step moves with their guards (the statuses they may come
from, the attempt they must be at), the run's move and new values, the events, the approvals and
questions to open, the messages to publish and the tasks to revoke. Values the database fills in are
markers (``NOW``, ``NEXT_ATTEMPT``, ``DueIn``): a decision reads no clock.

A transition is written whole or not at all: every move's guard must match, except for moves marked
``optional`` (the steps a success makes ready, whose statuses were read before the run's lock), which
are written where their guards match; events marked ``if_moved`` are written only with their step's
move. A report about a step (an attempt's outcome, a person's decision) guards that step's move on its
attempt too, so a late or duplicate report matches nothing and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.vocabulary import EventType
from orchestrator.messages import StepMessage, task_id
from orchestrator.states import (
    TERMINAL_RUN,
    InvalidTransition,
    RunStatus,
    StepStatus,
    run_allowed_from,
    step_allowed_from,
)


class Marker(StrEnum):
    """A value the database fills in when the move is written."""

    NOW = "now"
    NEXT_ATTEMPT = "next_attempt"  # the step's attempt + 1
    ITEM_OUTPUTS = "item_outputs"  # a for-each step's output: its items' outputs in item order


NOW, NEXT_ATTEMPT, ITEM_OUTPUTS = Marker.NOW, Marker.NEXT_ATTEMPT, Marker.ITEM_OUTPUTS


@dataclass(frozen=True, slots=True)
class DueIn:
    """A due time this many seconds after the database's now."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    step_id: str | None = None
    attempt: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    if_moved: bool = False  # written only if the move of ``step_id`` in the same transition matched

    def row(self) -> dict[str, Any]:
        return {"type": self.type.value, "step_id": self.step_id, "attempt": self.attempt, "data": dict(self.data)}


@dataclass(frozen=True, slots=True)
class StepMove:
    """One step's guarded move: ``target`` if its status is in ``from_`` (and it is at ``attempt``)."""

    step_id: str
    target: StepStatus
    from_: frozenset[StepStatus]
    values: Mapping[str, Any]
    attempt: int | None = None  # the step must be at this attempt (a report about it)
    optional: bool = False
    message: StepMessage | None = None  # a move to `queued`: the message to publish once it is written
    revoke: str | None = None  # the Celery task the move stops, to revoke after the commit


@dataclass(frozen=True, slots=True)
class ItemsWrite:
    """A write to a for-each step's item rows, set-based (core.items): ``expand`` writes one row per
    value (pending; the succeeded items of an earlier start at ``keep`` stay as they are) and queues
    the first ``queue_first``; ``queue`` queues the next ``queue_first`` pending items in index order;
    ``stop`` cancels every item that has not ended. In a map over child runs (``child_workflow``) an
    item is not queued but started: `running`, its child run created by the scheduler (core.children)."""

    kind: str  # "expand" | "queue" | "stop"
    step_id: str
    values: tuple[Any, ...] = ()
    queue_first: int = 0
    soft_time_limit: float = 0.0  # of the items' messages
    error: Mapping[str, Any] | None = None  # "stop": the error the cancelled items carry
    keep: tuple[int, ...] = ()  # "expand": the indexes of the earlier start's succeeded items it keeps
    child_workflow: str | None = None  # a map over child runs of this workflow


@dataclass(frozen=True, slots=True)
class Request:
    """An approval or a question to open for a step (``call``: the tool call a policy gated)."""

    kind: str  # "approval" | "question"
    id: str
    step_id: str
    text: str | None
    call: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Transition:
    """Everything one input does to one run, as data."""

    run: RunState  # the snapshot it was decided from
    run_to: RunStatus | None = None
    run_values: Mapping[str, Any] = field(default_factory=dict)
    moves: tuple[StepMove, ...] = ()
    events: tuple[Event, ...] = ()
    requests: tuple[Request, ...] = ()
    close_requests: bool = False  # the run ended: its pending approvals and open questions close
    output_from: tuple[str, ...] = ()  # the run succeeded: its output is these steps' outputs, read on writing
    items: tuple[ItemsWrite, ...] = ()  # writes to for-each items, after the moves
    children: tuple[Any, ...] = ()  # child runs to create (core.children.ChildStart), by the scheduler
    stop_children: tuple[str, ...] = ()  # sub-run steps whose live children the scheduler cancels
    wake_run: str | None = None  # the run ended: its parent run is flagged with work (core.children)
    after: RunState | None = None  # the run as the decision leaves it, if every guard matches

    @property
    def messages(self) -> list[StepMessage]:
        return [m.message for m in self.moves if m.message is not None]

    @property
    def revoke(self) -> list[str]:
        return [m.revoke for m in self.moves if m.revoke is not None]

    @property
    def wakes_scheduler(self) -> bool:
        """Whether the run (or the parent run it woke) is left flagged with work for the scheduler."""
        return bool(self.run_values.get("has_work")) or self.wake_run is not None


def _after_move(step: StepState, target: StepStatus, values: dict[str, Any], queued: StepMessage | None
                ) -> StepState:
    """The step as a move leaves it: its status and the fields of its snapshot the move writes (a
    marker's value, NEXT_ATTEMPT, is the queued message's attempt)."""
    changes: dict[str, Any] = {"status": target, "due": False, "lease_expired": False}
    for name in ("attempt", "max_attempts", "waiting_on", "item_counts"):
        if name in values and not isinstance(values[name], Marker):
            changes[name] = values[name]
    if queued is not None:
        changes["attempt"] = queued.attempt
    if "policy" in values:
        changes["policy"] = tuple(values["policy"] or ())
    return step.moved(**changes)


_RUN_STATE_FIELDS = frozenset({"waiting_on", "usage", "risk_level", "attempt", "limits", "output"}
                              & set(RunState.__dataclass_fields__))


class Draft:
    """A transition being decided: each move is checked against the transition table and seen by what
    is decided after it (``steps``)."""

    def __init__(self, run: RunState):
        self.run = run
        # The steps as decided so far (a plain dict: a move must not copy the run's every step).
        self.steps: dict[str, StepState] = dict(run.steps)
        self.run_to: RunStatus | None = None
        self.run_values: dict[str, Any] = {}
        self.moves: list[StepMove] = []
        self.events: list[Event] = []
        self.requests: list[Request] = []
        self.close_requests = False
        self.output_from: tuple[str, ...] = ()
        self.items: list[ItemsWrite] = []
        self.children: list[Any] = []
        self.stop_children: list[str] = []

    @property
    def status(self) -> RunStatus:
        """The run's status as decided so far."""
        return self.run_to or self.run.status

    def event(self, type_: EventType, step_id: str | None = None, attempt: int | None = None, /,
              **data: Any) -> None:
        self.events.append(Event(type_, step_id, attempt, data))

    def move_event(self, type_: EventType, step_id: str, attempt: int | None, /, **data: Any) -> None:
        """An event written only with the move of ``step_id`` decided in this draft."""
        self.events.append(Event(type_, step_id, attempt, data, if_moved=True))

    def move(self, step: StepState, target: StepStatus, *, only_from: Iterable[StepStatus] | None = None,
             reported: bool = False, optional: bool = False, queued: StepMessage | None = None,
             **values: Any) -> bool:
        """Move ``step`` to ``target`` if the table (narrowed to ``only_from``) allows it from its status;
        False (and no move) otherwise. ``reported``: the step an input reports on, guarded on its
        attempt too (InvalidTransition if the table refuses it); ``optional``: see Transition;
        ``queued``: the message of a move to `queued`."""
        allowed = step_allowed_from(target, only_from)
        if step.status not in allowed:
            if reported:
                raise InvalidTransition(step.status, target, allowed)
            return False
        # A step stopped in flight has its task revoked, unless it is the step reporting (it stopped).
        revoke = (task_id(self.run.id, step.step_id, step.attempt)
                  if target is StepStatus.CANCELLED and not reported
                  and step.status in (StepStatus.QUEUED, StepStatus.RUNNING) else None)
        self.moves.append(StepMove(step.step_id, target, allowed, MappingProxyType(values),
                                   attempt=step.attempt if reported else None, optional=optional, message=queued,
                                   revoke=revoke))
        self.steps[step.step_id] = _after_move(step, target, values, queued)
        return True

    def update(self, step: StepState, **values: Any) -> None:
        """Write ``values`` to ``step`` where it is still in its status, without moving it (a for-each
        step's item counts)."""
        self.moves.append(StepMove(step.step_id, step.status, frozenset({step.status}), MappingProxyType(values)))
        self.steps[step.step_id] = _after_move(step, step.status, values, None)

    def move_run(self, target: RunStatus) -> None:
        """The run moves to ``target``; InvalidTransition if the table does not allow it from its status."""
        if target is self.run.status:
            self.run_to = None
            return
        if self.run.status not in run_allowed_from(target):
            raise InvalidTransition(self.run.status, target, run_allowed_from(target))
        self.run_to = target

    def step(self, step_id: str) -> StepState:
        """The step as decided so far."""
        return self.steps[step_id]

    def outputs(self) -> dict[str, Any]:
        """The outputs of the steps this draft moved to `succeeded`."""
        return {m.step_id: m.values.get("output") for m in self.moves if m.target is StepStatus.SUCCEEDED}

    def statuses(self) -> dict[str, StepStatus]:
        """The steps' statuses as decided so far."""
        return {step_id: step.status for step_id, step in self.steps.items()}

    def finish(self) -> Transition:
        # The run's own fields the transition writes, as its snapshot holds them (markers: not known here).
        written = {k: v for k, v in self.run_values.items() if k in _RUN_STATE_FIELDS and not isinstance(v, Marker)}
        after = self.run.replace(**written, status=self.status, steps=MappingProxyType(dict(self.steps)))
        return Transition(
            run=self.run, run_to=self.run_to, run_values=MappingProxyType(dict(self.run_values)),
            moves=tuple(self.moves), events=tuple(self.events), requests=tuple(self.requests),
            close_requests=self.close_requests, output_from=self.output_from, items=tuple(self.items),
            children=tuple(self.children), stop_children=tuple(self.stop_children), after=after,
            wake_run=self.run.parent_run_id if self.run_to in TERMINAL_RUN else None,
        )
