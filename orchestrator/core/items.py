"""For-each steps: a step that runs once per item of a list, decided.

A for-each step's items are rows of their own (named ``<step>[<index>]``), each with its attempts,
retries, lease and messages like any step. The for-each step itself holds no worker: it is `running`
while its items are, and its row keeps their counts (``ItemCounts``), so an item's outcome reads two
rows (the item and its step), never the step's other items. At most ``max_parallel`` items are in
flight; the step succeeds when every item settled and at least ``min_succeeded`` succeeded (default:
all), and fails with ``too_few_succeeded`` (cancelling the items in flight) as soon as that can no
longer happen. Its output is the items' outputs in item order, read when the transition is written.

A for-each `workflow` step is a map over child runs: an item is started rather than queued (`running`,
its child run created by the scheduler, core.children), and settled when its child ends. A step
started again by a run's retry keeps the items that succeeded (where the list still holds the same
value at their index): only the others run again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core import children
from orchestrator.core.inputs import Env
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.core.snapshot import StepState
from orchestrator.core.transition import ITEM_OUTPUTS, NOW, Draft, ItemsWrite
from orchestrator.core.vocabulary import ErrorCode, EventType
from orchestrator.definitions import Definition
from orchestrator.errors import StepError
from orchestrator.states import RunStatus, StepStatus

# The default of SWITCHYARD_MAX_FOR_EACH_ITEMS.
MAX_ITEMS = 1000

# A paused run's pending items wait for its resume.
DISPATCHING_RUN = frozenset({RunStatus.RUNNING, RunStatus.WAITING})
_ENDED_ITEM = {StepStatus.SUCCEEDED: "succeeded", StepStatus.FAILED: "failed", StepStatus.CANCELLED: "cancelled"}


def item_id(step_id: str, index: int) -> str:
    return f"{step_id}[{index}]"


def parent_of(step_id: str) -> str | None:
    """The for-each step an item belongs to; None for a step of the definition."""
    if not step_id.endswith("]"):
        return None
    return step_id[:step_id.rindex("[")]


def index_of(step_id: str) -> int | None:
    """An item's index; None for a step of the definition."""
    return None if parent_of(step_id) is None else int(step_id[step_id.rindex("[") + 1:-1])


@dataclass(frozen=True, slots=True)
class ItemCounts:
    """A for-each step's items by where they are: ``in_flight`` holds queued, running and retrying ones."""

    total: int
    pending: int = 0
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @classmethod
    def of(cls, value: Any) -> ItemCounts:
        return cls(**value) if value else cls(0)

    def as_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def ended(self, bucket: str) -> ItemCounts:
        return dataclasses.replace(self, in_flight=self.in_flight - 1, **{bucket: getattr(self, bucket) + 1})

    def dispatched(self, count: int) -> ItemCounts:
        return dataclasses.replace(self, pending=self.pending - count, in_flight=self.in_flight + count)


def may_keep(step: StepState) -> bool:
    """Whether the pending for-each ``step`` has items of an earlier start that succeeded, which its
    start keeps (a run's retry; a step whose changes were requested forgot them: core.controls.reopen)."""
    return step.attempt > 0 and ItemCounts.of(step.item_counts).succeeded > 0


def required(definition: Definition, step_id: str, total: int) -> int:
    """How many items must succeed: ``min_succeeded``, or every item."""
    wanted = definition.step(step_id).min_succeeded
    return total if wanted is None else wanted


def room(definition: Definition, step_id: str, counts: ItemCounts) -> int:
    """How many pending items may be dispatched now, under ``max_parallel``."""
    cap = definition.step(step_id).max_parallel or counts.total
    return max(0, min(counts.pending, cap - counts.in_flight))


def expand(draft: Draft, definition: Definition, step: StepState, values: Any, env: Env, *,
           succeeded: Mapping[int, Any] | None = None) -> Outcome | None:
    """Start the for-each ``step`` (pending) over ``values``, what its ``for_each`` evaluated to: it
    moves to `running` with its items written as rows and the first ``max_parallel`` of them dispatched.
    ``values`` is a StepError if it could not be evaluated; ``succeeded``: the items of an earlier start
    that succeeded ({index: value}), kept where ``values`` holds the same value at their index. Returns
    the outcome that settles the step at once (no items, too many, not a list, every item kept), for
    the caller to settle."""
    problem = _problem(draft, definition, step.step_id, values, env)
    keep = () if problem is not None else tuple(sorted(
        i for i, value in (succeeded or {}).items() if i < len(values) and values[i] == value))
    counts = (ItemCounts(total=len(values), pending=len(values) - len(keep), succeeded=len(keep))
              if problem is None else ItemCounts(0))
    first = room(definition, step.step_id, counts)
    draft.move(step, StepStatus.RUNNING, only_from=[StepStatus.PENDING], attempt=step.attempt + 1, queued_at=NOW,
               started_at=NOW, completed_at=None, error=None, output=None, item_counts=counts.dispatched(first).as_json())
    draft.event(EventType.STEP_STARTED, step.step_id, step.attempt + 1, items=counts.total,
                **({"kept": len(keep)} if keep else {}))
    if problem is not None:
        return problem
    if not values:
        return Outcome(output=[])
    draft.items.append(ItemsWrite("expand", step.step_id, values=tuple(values), queue_first=first, keep=keep,
                                  soft_time_limit=_timeout(definition, step.step_id),
                                  child_workflow=_child_workflow(definition, step.step_id)))
    return Outcome(output=ITEM_OUTPUTS) if counts.pending == 0 else None


def account(draft: Draft, definition: Definition, item: StepState) -> Outcome | None:
    """After an item's move: if it ended, count it on its step and dispatch the next pending items.
    Returns the outcome that settles the step (every item settled, or too few can still succeed)."""
    bucket = _ENDED_ITEM.get(draft.step(item.step_id).status)
    parent_id = parent_of(item.step_id)
    parent = draft.steps.get(parent_id)
    if bucket is None or parent is None or parent.status is not StepStatus.RUNNING or item.status in _ENDED_ITEM:
        return None
    counts = ItemCounts.of(parent.item_counts).ended(bucket)
    if counts.succeeded + counts.pending + counts.in_flight < required(definition, parent_id, counts.total):
        draft.update(parent, item_counts=counts.as_json())
        return _too_few(definition, parent_id, counts)
    if counts.pending == 0 and counts.in_flight == 0:
        draft.update(parent, item_counts=counts.as_json())
        return Outcome(output=ITEM_OUTPUTS)
    _dispatch(draft, definition, parent, counts)
    return None


def top_up(draft: Draft, definition: Definition) -> None:
    """Dispatch pending items where there is room (items a paused run put back wait for its resume)."""
    for step in list(draft.steps.values()):
        if step.item_counts is not None and step.status is StepStatus.RUNNING:
            _dispatch(draft, definition, step, ItemCounts.of(step.item_counts), only_if_room=True)


def _dispatch(draft: Draft, definition: Definition, step: StepState, counts: ItemCounts, *,
              only_if_room: bool = False) -> None:
    """Write the step's ``counts`` with as many pending items dispatched as ``max_parallel`` leaves room
    for (none while the run is paused); ``only_if_room``: write nothing if there is none."""
    more = room(definition, step.step_id, counts) if draft.status in DISPATCHING_RUN else 0
    if only_if_room and not more:
        return
    draft.update(step, item_counts=counts.dispatched(more).as_json())
    if more:
        draft.items.append(ItemsWrite("queue", step.step_id, queue_first=more,
                                      soft_time_limit=_timeout(definition, step.step_id),
                                      child_workflow=_child_workflow(definition, step.step_id)))


def put_back(draft: Draft, item: StepState) -> None:
    """An item taken back to `pending` (its run paused before it started) leaves the in-flight count."""
    parent = draft.steps.get(parent_of(item.step_id))
    if parent is not None and parent.item_counts is not None:
        counts = ItemCounts.of(parent.item_counts)
        draft.update(parent, item_counts=dataclasses.replace(counts, pending=counts.pending + 1,
                                                       in_flight=counts.in_flight - 1).as_json())


def stop(draft: Draft, step_ids: Sequence[str], error: Mapping[str, Any]) -> None:
    """The items of the for-each steps ``step_ids`` that have not ended are cancelled with them (in a
    map over child runs, their live children too)."""
    for step_id in step_ids:
        if draft.steps[step_id].item_counts is not None and parent_of(step_id) is None:
            draft.items.append(ItemsWrite("stop", step_id, error=error))
            children.stop(draft, [step_id])


def _timeout(definition: Definition, step_id: str) -> float:
    return definition.timeout_s(definition.step(step_id))


def _child_workflow(definition: Definition, step_id: str) -> str | None:
    """The workflow whose runs a map over child runs starts; None for items that run on workers."""
    step_def = definition.step(step_id)
    return step_def.workflow_id if step_def.type == children.SUB_RUN else None


def _problem(draft: Draft, definition: Definition, step_id: str, values: Any, env: Env) -> Outcome | None:
    """Why the step cannot run over ``values``, as the outcome that fails it; None if it can."""
    if isinstance(values, StepError):
        return Outcome(error=ErrorInfo.of(values))
    if not isinstance(values, list):
        return _failure(ErrorCode.INVALID_FOR_EACH, f"for_each must evaluate to a list, not {type(values).__name__}")
    if len(values) > env.max_items:
        return _failure(ErrorCode.TOO_MANY_ITEMS, f"for_each gave {len(values)} items; at most {env.max_items} are "
                        "allowed (raise SWITCHYARD_MAX_FOR_EACH_ITEMS, or split the list)")
    if required(definition, step_id, len(values)) > len(values):
        return _too_few(definition, step_id, ItemCounts(total=len(values)))
    if values and _child_workflow(definition, step_id) is not None:
        return children.too_deep(draft.run.depth, env)
    return None


def _too_few(definition: Definition, step_id: str, counts: ItemCounts) -> Outcome:
    wanted = required(definition, step_id, counts.total)
    return _failure(ErrorCode.TOO_FEW_SUCCEEDED,
                    f"{counts.succeeded} of {counts.total} items succeeded and {wanted} must; "
                    f"{counts.failed} failed, {counts.cancelled} cancelled")


def _failure(code: ErrorCode, message: str) -> Outcome:
    return Outcome(error=ErrorInfo(code.value, message, retryable=False))
