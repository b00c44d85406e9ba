"""Two runs side by side: GET /runs/{id}/compare/{other_id}.

Per step (in graph order): each run's status, attempts, duration, tokens and credits, whether its input
or output changed, and the output's JSON diff. A step's input is what decides what it does: its
fields in the run's definition, the outputs of the steps it needs and, when its templates read it, the
run's input (rendered arguments are not recorded, and follow from these); a step a fork reused did not
run with the fork's input, so the run's input is left out of its comparison. ``first_divergence`` is
the first step whose input or output differs, or that only one run has.

``json_diff`` and ``compare`` are pure; ``load`` reads the two runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import dag
from orchestrator.catalog import DefinitionCatalog
from orchestrator.db import repository as repo
from orchestrator.db.models import Run, Step
from orchestrator.definitions import Definition
from orchestrator.errors import NotFound


def _pointer(path: str, key: Any) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def json_diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """The changes from ``before`` to ``after`` as JSON Patch operations (RFC 6902: add, remove,
    replace; paths are JSON pointers): objects key by key, arrays index by index (an array whose length
    changed gains or loses items at its end), anything else replaced whole. Empty when equal."""
    if isinstance(before, dict) and isinstance(after, dict):
        ops: list[dict[str, Any]] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": _pointer(path, key)})
            else:
                ops += json_diff(before[key], after[key], _pointer(path, key))
        ops += [{"op": "add", "path": _pointer(path, key), "value": after[key]} for key in after if key not in before]
        return ops
    if isinstance(before, list) and isinstance(after, list):
        ops = []
        for index in range(min(len(before), len(after))):
            ops += json_diff(before[index], after[index], _pointer(path, index))
        ops += [{"op": "add", "path": _pointer(path, i), "value": after[i]} for i in range(len(before), len(after))]
        ops += [{"op": "remove", "path": _pointer(path, i)} for i in reversed(range(len(after), len(before)))]
        return ops
    if before == after and type(before) is type(after):
        return []
    return [{"op": "replace", "path": path, "value": after}]


@dataclass(frozen=True)
class StepFacts:
    """One step of one run, as the comparison reads it; ``input`` is what decides what the step does."""

    status: str
    attempts: int
    duration_s: float | None
    tokens_in: float
    tokens_out: float
    credits: float
    reused: bool
    output: Any
    input: Any

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "attempts": self.attempts, "duration_s": self.duration_s,
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "credits": self.credits,
                "reused": self.reused}


def compare(order: Sequence[str], run: Mapping[str, StepFacts], other: Mapping[str, StepFacts]) -> dict[str, Any]:
    """Per step of ``order``, the two runs' facts and what changed; ``first_divergence`` as above."""
    steps, first = [], None
    for step_id in order:
        mine, theirs = run.get(step_id), other.get(step_id)
        both = mine is not None and theirs is not None
        input_changed = not both or _decided_by(mine, theirs) != _decided_by(theirs, mine)
        diff = json_diff(mine.output, theirs.output) if both else []
        output_changed = not both or bool(diff)
        if first is None and (input_changed or output_changed):
            first = step_id
        steps.append({
            "step_id": step_id, "input_changed": input_changed, "output_changed": output_changed,
            "output_diff": diff, "run": mine.as_json() if mine else None, "other": theirs.as_json() if theirs else None,
        })
    return {"first_divergence": first, "steps": steps}


def _decided_by(facts: StepFacts, other: StepFacts) -> Any:
    """What is compared of a step's input: all of it, but the run's input when either run reused the step
    (a fork's reused step did not run with the fork's input; its output is the original's)."""
    if (facts.reused or other.reused) and isinstance(facts.input, dict):
        return {k: v for k, v in facts.input.items() if k != "input"}
    return facts.input


def graph_order(definition: Definition, other: Definition) -> list[str]:
    """The steps of ``definition`` in graph order, then those only ``other`` has, in its graph order."""
    mine = dag.topological_order([s.id for s in definition.steps], definition.needs)
    theirs = dag.topological_order([s.id for s in other.steps], other.needs)
    return mine + [s for s in theirs if s not in set(mine)]


def step_facts(definition: Definition, run: Run, steps: Sequence[Step]) -> dict[str, StepFacts]:
    """The facts of each step of ``run`` (whose definition is ``definition``)."""
    outputs = {s.step_id: s.output for s in steps}
    facts = {}
    for step in steps:
        if step.item_of is not None or step.step_id not in definition.steps_by_id:
            continue  # a for-each's item: its step holds the items' outputs
        step_def = definition.step(step.step_id)
        decides: dict[str, Any] = {"step": step_def.model_dump(mode="json", exclude_unset=True),
                                   "needs": {n: outputs.get(n) for n in step_def.needs}}
        if "input" in definition.template_names(step.step_id):
            decides["input"] = run.input
        usage = step.usage or {}
        duration = ((step.completed_at - step.started_at).total_seconds()
                    if step.started_at and step.completed_at else None)
        facts[step.step_id] = StepFacts(
            status=step.status, attempts=step.attempt, duration_s=duration, tokens_in=usage.get("tokens_in", 0),
            tokens_out=usage.get("tokens_out", 0), credits=usage.get("credits", 0), reused=bool(step.reused) and step.attempt == 0,
            output=step.output, input=decides)
    return facts


def load(session: Session, catalog: DefinitionCatalog, tenant_id: str, run_id: str, other_id: str) -> dict[str, Any]:
    """The comparison of two of the tenant's runs; NotFound if either is not one of them."""
    runs = []
    for wanted in (run_id, other_id):
        found = repo.get_run(session, tenant_id, wanted)
        if found is None:
            raise NotFound(f"run {wanted!r} not found")
        runs.append(found)
    definitions = [catalog.get(session, (r.tenant_id, r.workflow_id, r.workflow_version)) for r in runs]
    facts = [step_facts(d, r, repo.run_steps(session, r.id)) for d, r in zip(definitions, runs, strict=True)]
    body = compare(graph_order(*definitions), *facts)
    return {"run": _run_summary(runs[0]), "other": _run_summary(runs[1]), **body}


def _run_summary(run: Run) -> dict[str, Any]:
    return {"id": run.id, "workflow_id": run.workflow_id, "version": run.workflow_version, "status": run.status,
            "usage": run.usage, "forked_from": ({"run_id": run.forked_from_run_id, "step_id": run.forked_from_step_id}
                                                if run.forked_from_run_id else None)}
