"""The step graph of a workflow: validation, ready steps, fail-fast and the run's next status — pure.

Functions here take plain mappings (step id -> needs, step id -> status) so the scheduler, the
outcome writer and the tests share one implementation of "what happens next".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

from orchestrator import steptypes
from orchestrator.states import IN_FLIGHT_STEP, TERMINAL_STEP, RunStatus, StepStatus

Needs = Mapping[str, Sequence[str]]
Statuses = Mapping[str, StepStatus]

# Step types that do not run on a worker (the scheduler parks them in `waiting`) -> what they wait on:
# a read-only view of the step type registry, so a type registered later is in it too.
WAITING_TYPES: Mapping[str, str] = steptypes.waiting_types()
# A worker step waits too when its agent asked a person (`human.ask`) and gave the worker back.
SUSPENDED_WAITS_ON = "question"


def waiting_on(step_type: str) -> str:
    """What a step of this type waits on while it is `waiting`."""
    return WAITING_TYPES.get(step_type, SUSPENDED_WAITS_ON)


def graph_problems(step_ids: Sequence[str], needs: Needs) -> list[str]:
    """Every reason the graph is not a valid DAG (duplicate ids, unknown needs, a cycle); empty if valid."""
    problems: list[str] = []
    seen: set[str] = set()
    for step_id in step_ids:
        if step_id in seen:
            problems.append(f"duplicate step id {step_id!r}")
        seen.add(step_id)
    for step_id in step_ids:
        for need in needs.get(step_id, ()):
            if need not in seen:
                problems.append(f"step {step_id!r} needs unknown step {need!r}")
            elif need == step_id:
                problems.append(f"step {step_id!r} needs itself")
    if problems:
        return problems
    try:
        tuple(TopologicalSorter({s: tuple(needs.get(s, ())) for s in step_ids}).static_order())
    except CycleError as exc:
        cycle = exc.args[1]
        problems.append("cycle in needs: " + " -> ".join(cycle))
    return problems


def topological_order(step_ids: Sequence[str], needs: Needs) -> list[str]:
    """Step ids in an order where every step comes after what it needs (stable for equal rank)."""
    order = {s: i for i, s in enumerate(step_ids)}
    sorter = TopologicalSorter({s: tuple(needs.get(s, ())) for s in step_ids})
    sorter.prepare()
    result: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order.__getitem__)
        result.extend(ready)
        sorter.done(*ready)
    return result


# When a step with needs may run (a step's `join`): every need succeeded (the default), every need
# settled and one succeeded, or every need settled whatever the outcome.
JOINS = ("all_succeeded", "any_succeeded", "all_done")
READY = "ready"


def join_verdict(join: str, need_statuses: Sequence[StepStatus]) -> str | None:
    """Whether a pending step may run by its ``join`` rule: READY, the reason it is skipped
    ("blocked": a need failed; "upstream_skipped": a need was skipped, or none succeeded), or None
    while it must wait for its needs."""
    settled = all(s in TERMINAL_STEP for s in need_statuses)
    if join == "all_done":
        return READY if settled else None
    if join == "any_succeeded":
        if not settled:
            return None
        return READY if any(s is StepStatus.SUCCEEDED for s in need_statuses) else "upstream_skipped"
    if all(s is StepStatus.SUCCEEDED for s in need_statuses):
        return READY
    if any(s in (StepStatus.FAILED, StepStatus.CANCELLED) for s in need_statuses):
        return "blocked"
    return "upstream_skipped" if any(s is StepStatus.SKIPPED for s in need_statuses) else None


def ready_steps(needs: Needs, statuses: Statuses, joins: Mapping[str, str] | None = None) -> list[str]:
    """Pending steps their join rule (default: every need succeeded) lets run, in definition order."""
    joins = joins or {}
    return [
        step_id
        for step_id, status in statuses.items()
        if status is StepStatus.PENDING
        and join_verdict(joins.get(step_id, "all_succeeded"), [statuses[n] for n in needs.get(step_id, ())]) == READY
    ]


def upstream(step_id: str, needs: Needs) -> set[str]:
    """Every step ``step_id`` needs, directly or through others."""
    seen: set[str] = set()
    todo = list(needs.get(step_id, ()))
    while todo:
        need = todo.pop()
        if need not in seen:
            seen.add(need)
            todo.extend(needs.get(need, ()))
    return seen


@dataclass(frozen=True)
class FailFast:
    """What fail-fast does to the other steps of a run when one step fails for good."""

    cancel: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)


def fail_fast(failed_step: str, statuses: Statuses) -> FailFast:
    """Steps in flight elsewhere are cancelled; steps never started are skipped (blocked).

    The run is failed, so no step that has not started can run any more; succeeded steps keep
    their outputs and are left alone.
    """
    cancel = [s for s, st in statuses.items() if s != failed_step and st in IN_FLIGHT_STEP]
    skip = [s for s, st in statuses.items() if s != failed_step and st is StepStatus.PENDING]
    return FailFast(cancel=cancel, skip=skip)


@dataclass(frozen=True)
class Advance:
    """The scheduler's decision for one run: which steps to start and the run's resulting status."""

    dispatch: list[str]
    park: list[str]
    run_status: RunStatus
    waiting_on: str | None = None


def advance(
    needs: Needs, statuses: Statuses, types: Mapping[str, str], waits: Mapping[str, str] | None = None
) -> Advance:
    """Decide the next move of a live run from its steps' statuses.

    Ready worker steps are dispatched, ready approval/question/event/timer steps are parked in
    `waiting`; the run is `succeeded` when every step settled, `waiting` when the only work
    left waits on the outside world, and `running` otherwise. ``waits`` says what a waiting worker
    step waits on (an agent's question, a gated tool call's approval), where its type does not tell.
    """
    ready = ready_steps(needs, statuses)
    dispatch = [s for s in ready if types[s] not in WAITING_TYPES]
    park = [s for s in ready if types[s] in WAITING_TYPES]
    after = dict(statuses)
    after.update({s: StepStatus.QUEUED for s in dispatch})
    after.update({s: StepStatus.WAITING for s in park})
    # Every step settled: the run succeeded (a step that failed for good failed the run at once,
    # unless it may fail and let the run go on: `on_failure: continue`).
    if all(st in TERMINAL_STEP for st in after.values()):
        return Advance(dispatch, park, RunStatus.SUCCEEDED)
    active = [s for s, st in after.items() if st in IN_FLIGHT_STEP]
    waiting = [s for s in active if after[s] is StepStatus.WAITING]
    if active and len(waiting) == len(active):
        first = waiting[0]
        return Advance(dispatch, park, RunStatus.WAITING, (waits or {}).get(first) or waiting_on(types[first]))
    return Advance(dispatch, park, RunStatus.RUNNING)


def dependents(step_ids: Sequence[str], needs: Needs) -> dict[str, list[str]]:
    """For each step, the steps that need it, in definition order."""
    result: dict[str, list[str]] = {s: [] for s in step_ids}
    for step_id in step_ids:
        for need in needs.get(step_id, ()):
            result[need].append(step_id)
    return result


def sink_steps(step_ids: Sequence[str], needs: Needs) -> list[str]:
    """Steps nothing else needs: their outputs make the run's output."""
    needed = {n for s in step_ids for n in needs.get(s, ())}
    return [s for s in step_ids if s not in needed]
