"""A fork of a run, decided: which steps of the original keep their recorded output and which run anew.

``plan`` is pure: the fork's definition, the step it is forked from, the original run's steps and the
steps whose fields the fork overrides in, a ForkPlan (or ForkRefused naming the request's field) out.
A step is reused when it succeeded in the original and does not depend, directly or through other
steps, on ``from_step``; ``from_step`` and every step after it run anew, and so do the steps that did
not succeed. ``merge_patch`` (RFC 7396) and ``apply_overrides`` build the fork's input and definition.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import dag
from orchestrator.definitions import Definition
from orchestrator.states import StepStatus


class ForkRefused(ValueError):
    """The fork cannot be made as asked; ``field`` names the request's field at fault."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field, self.message = field_name, message


@dataclass(frozen=True)
class Recorded:
    """A step of the original run, as the fork reads it."""

    status: StepStatus
    output: Any = None


@dataclass(frozen=True)
class ForkPlan:
    """The fork of ``run_id`` from ``from_step``: the outputs it keeps (by step id) and the steps that
    run anew, in definition order."""

    run_id: str
    from_step: str
    reused: Mapping[str, Any] = field(default_factory=dict)
    rerun: tuple[str, ...] = ()


def plan(definition: Definition, *, run_id: str, from_step: str, original: Mapping[str, Recorded],
         overridden: Iterable[str] = ()) -> ForkPlan:
    """Which steps the fork of ``run_id`` from ``from_step`` reuses and which it runs.

    Raises ForkRefused if ``from_step`` is not a step of ``definition``, or if an overridden step is
    unknown or would be reused (its override would change nothing: fork from it instead).
    """
    if from_step not in definition.steps_by_id:
        raise ForkRefused("from_step", f"from_step {from_step!r} is not a step of the workflow; its steps are "
                                       f"{list(definition.steps_by_id)}")
    # from_step and every step after it: what it reaches following the graph's edges the other way.
    anew = dag.upstream(from_step, definition.dependents) | {from_step}
    for step_id in overridden:
        if step_id not in definition.steps_by_id:
            raise ForkRefused(f"steps.{step_id}", f"steps.{step_id}: no such step in the workflow; its steps are "
                                                  f"{list(definition.steps_by_id)}")
        if step_id not in anew:
            raise ForkRefused(f"steps.{step_id}", f"steps.{step_id}: this step does not depend on {from_step!r}, so "
                                                  f"the fork reuses its recorded output and an override would "
                                                  f"change nothing; fork from {step_id!r} (or a step it needs)")
    reused = {
        step.id: original[step.id].output
        for step in definition.steps
        if step.id not in anew and step.id in original and original[step.id].status is StepStatus.SUCCEEDED
    }
    return ForkPlan(run_id=run_id, from_step=from_step, reused=reused,
                    rerun=tuple(s.id for s in definition.steps if s.id not in reused))


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with the JSON merge patch ``patch`` applied (RFC 7396): an object merges key by key,
    null removes a key, anything else replaces. ``target`` is not changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A copy of the definition ``raw`` (as stored) with each overridden step's fields replaced by the
    given values. Raises ForkRefused for an unknown step or an override of a step's ``id``; whether
    the result is a valid definition is for the definition's own validation."""
    result = copy.deepcopy(dict(raw))
    steps = {step.get("id"): step for step in result.get("steps", []) if isinstance(step, dict)}
    for step_id, fields in overrides.items():
        if step_id not in steps:
            raise ForkRefused(f"steps.{step_id}", f"steps.{step_id}: no such step in the workflow; its steps are "
                                                  f"{list(steps)}")
        if "id" in fields:
            raise ForkRefused(f"steps.{step_id}.id", f"steps.{step_id}.id: a fork cannot rename a step")
        steps[step_id].update(copy.deepcopy(dict(fields)))
    return result
