"""Comparing two runs: the JSON diff, and the first divergent step in graph order (pure)."""

from __future__ import annotations

import pytest

from orchestrator import compare
from orchestrator.definitions import parse_definition


@pytest.mark.parametrize(("before", "after", "ops"), [
    ({"a": 1}, {"a": 1}, []),
    ({"a": 1, "b": 2}, {"a": 3, "c": 4}, [{"op": "replace", "path": "/a", "value": 3}, {"op": "remove", "path": "/b"},
                                         {"op": "add", "path": "/c", "value": 4}]),
    ({"x": {"y/z": [1, 2, 3]}}, {"x": {"y/z": [1, 5]}}, [{"op": "replace", "path": "/x/y~1z/1", "value": 5},
                                                         {"op": "remove", "path": "/x/y~1z/2"}]),
    ([1], [1, {"k": None}], [{"op": "add", "path": "/1", "value": {"k": None}}]),
    (1, 1.0, [{"op": "replace", "path": "", "value": 1.0}]),  # a different JSON type is a change
    (None, "text", [{"op": "replace", "path": "", "value": "text"}]),
])
def test_json_diff_gives_json_patch_operations(before, after, ops):
    assert compare.json_diff(before, after) == ops


def _facts(output, step_input="same", status="succeeded") -> compare.StepFacts:
    return compare.StepFacts(status=status, attempts=1, duration_s=0.5, tokens_in=0, tokens_out=0, credits=0,
                             reused=False, output=output, input=step_input)


def test_the_first_divergence_is_the_first_step_in_graph_order_whose_input_or_output_differs():
    order = ["a", "b", "c", "d"]
    run = {"a": _facts(1), "b": _facts(2), "c": _facts(3), "d": _facts(4)}
    other = {"a": _facts(1), "b": _facts(2, step_input="new prompt"), "c": _facts(30), "d": _facts(4)}
    body = compare.compare(order, run, other)
    assert body["first_divergence"] == "b"
    steps = {s["step_id"]: s for s in body["steps"]}
    assert (steps["b"]["input_changed"], steps["b"]["output_changed"]) == (True, False)
    assert steps["c"]["output_diff"] == [{"op": "replace", "path": "", "value": 30}]
    assert not steps["a"]["input_changed"] and not steps["d"]["output_changed"]
    assert compare.compare(order, run, dict(run))["first_divergence"] is None
    # A step only one run has diverges.
    assert compare.compare(order, run, {k: v for k, v in run.items() if k != "c"})["first_divergence"] == "c"


def test_graph_order_puts_every_step_after_its_needs_then_the_other_runs_own_steps():
    first = parse_definition({"name": "x", "steps": [
        {"id": "late", "type": "tool", "tool": "echo", "needs": ["early"]},
        {"id": "early", "type": "tool", "tool": "echo"}]})
    second = parse_definition({"name": "x", "steps": [
        {"id": "early", "type": "tool", "tool": "echo"}, {"id": "extra", "type": "tool", "tool": "echo"}]})
    assert compare.graph_order(first, second) == ["early", "late", "extra"]


def test_a_reused_step_is_compared_without_the_run_input_it_did_not_run_with():
    original = {"step": {"id": "a"}, "needs": {}, "input": {"who": "ada"}}
    forked = {**original, "input": {"who": "ada", "priority": "high"}}
    run = {"a": _facts(1, step_input=original)}
    reused = {"a": compare.StepFacts(**{**_facts(1, step_input=forked).__dict__, "reused": True})}
    ran_again = {"a": _facts(1, step_input=forked)}
    assert compare.compare(["a"], run, reused)["first_divergence"] is None
    assert compare.compare(["a"], run, ran_again)["first_divergence"] == "a"
