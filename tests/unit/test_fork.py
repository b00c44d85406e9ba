"""Forks: the pure decision of which steps are reused (core.fork.plan), the merge patch and overrides,
and a fork created on SQLite through the one start path (reused steps succeeded, with the original's
outputs; the others pending or queued)."""

from __future__ import annotations

import pytest

from orchestrator import forks, service
from orchestrator.core import fork
from orchestrator.core.inputs import Actor
from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.definitions import parse_definition
from orchestrator.errors import InvalidRequest, InvalidTransitionError
from orchestrator.states import StepStatus

S = StepStatus.SUCCEEDED


def _tool(step_id: str, *needs: str, **fields) -> dict:
    return {"id": step_id, "type": "tool", "tool": "echo", "args": {"text": step_id}, "needs": list(needs), **fields}


# a -> b -> c -> d -> e, and a side branch a -> side.
CHAIN = parse_definition({"name": "chain", "steps": [
    _tool("a"), _tool("b", "a"), _tool("c", "b"), _tool("d", "c"), _tool("e", "d"), _tool("side", "a")]})


def _recorded(**statuses: StepStatus) -> dict[str, fork.Recorded]:
    return {step_id: fork.Recorded(status, {"out": step_id}) for step_id, status in statuses.items()}


@pytest.mark.parametrize(("from_step", "reused"), [
    ("d", ["a", "b", "c", "side"]),   # the steps before it, and the branch that does not depend on it
    ("a", []),                        # everything depends on the first step
    ("side", ["a", "b", "c", "d", "e"]),
    ("e", ["a", "b", "c", "d", "side"]),
])
def test_the_steps_that_do_not_depend_on_from_step_and_succeeded_are_reused(from_step, reused):
    original = _recorded(a=S, b=S, c=S, d=StepStatus.FAILED, e=StepStatus.SKIPPED, side=S)
    original["d"] = fork.Recorded(S if "d" in reused else StepStatus.FAILED, {"out": "d"})
    original["e"] = fork.Recorded(S if "e" in reused else StepStatus.SKIPPED, {"out": "e"})
    plan = fork.plan(CHAIN, run_id="run_1", from_step=from_step, original=original)
    assert sorted(plan.reused) == sorted(reused)
    assert all(plan.reused[s] == {"out": s} for s in reused)
    assert set(plan.rerun) == {"a", "b", "c", "d", "e", "side"} - set(reused)


def test_a_step_that_did_not_succeed_runs_again_even_if_it_does_not_depend_on_from_step():
    original = _recorded(a=S, b=S, c=StepStatus.CANCELLED, d=StepStatus.SKIPPED, e=StepStatus.SKIPPED,
                         side=StepStatus.FAILED)
    plan = fork.plan(CHAIN, run_id="run_1", from_step="d", original=original)
    assert sorted(plan.reused) == ["a", "b"]
    assert plan.rerun == ("c", "d", "e", "side")


@pytest.mark.parametrize(("from_step", "overridden", "field", "words"), [
    ("nope", (), "from_step", "not a step of the workflow"),
    ("d", ("zz",), "steps.zz", "no such step"),
    ("d", ("b",), "steps.b", "does not depend on 'd'"),
])
def test_a_fork_it_cannot_make_is_refused_naming_the_field(from_step, overridden, field, words):
    with pytest.raises(fork.ForkRefused, match=words) as refused:
        fork.plan(CHAIN, run_id="run_1", from_step=from_step, original=_recorded(a=S), overridden=overridden)
    assert refused.value.field == field


@pytest.mark.parametrize(("target", "patch", "result"), [
    ({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}}, {"a": 1, "b": {"d": 3, "e": 4}}),
    ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
    ({"a": 1}, {"a": None, "z": None}, {}),
    ("text", {"a": 1}, {"a": 1}),
    ({"a": 1}, [1], [1]),
])
def test_merge_patch_follows_rfc_7396(target, patch, result):
    before = repr(target)
    assert fork.merge_patch(target, patch) == result
    assert repr(target) == before  # the original is not changed


def test_overrides_replace_fields_of_the_named_steps_only():
    raw = {"name": "w", "steps": [_tool("a"), _tool("b", "a")]}
    changed = fork.apply_overrides(raw, {"b": {"args": {"text": "new"}}})
    assert changed["steps"][1]["args"] == {"text": "new"} and raw["steps"][1]["args"] == {"text": "b"}
    assert changed["steps"][0] == raw["steps"][0]
    with pytest.raises(fork.ForkRefused, match="cannot rename"):
        fork.apply_overrides(raw, {"b": {"id": "c"}})


FIVE = {"name": "five", "input_schema": {"type": "object", "required": ["topic"]},
        "steps": [_tool("s1"), _tool("s2", "s1"), _tool("s3", "s2"), _tool("s4", "s3"), _tool("s5", "s4")]}


@pytest.fixture
def db(sqlite_settings):
    engine = make_engine(sqlite_settings)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        service.publish_workflow(session, sqlite_settings, "t", "five", FIVE)
    yield sqlite_settings, sessions
    engine.dispose()


def _ended_run(sessions, settings, status: str) -> str:
    """A run of 'five' written as if s1-s3 succeeded and s4 failed (the run ``status``)."""
    with transaction(sessions) as session:
        run = service.start_run(session, settings, "t", "five", {"topic": "x"}).run
        run.status = status
        for step in repo.run_steps(session, run.id):
            step.status = {"s4": "failed", "s5": "skipped"}.get(step.step_id, "succeeded")
            step.output = {"from": step.step_id} if step.status == "succeeded" else None
        return run.id


def test_a_fork_writes_its_reused_steps_succeeded_and_leaves_the_rest_to_run(db):
    settings, sessions = db
    original = _ended_run(sessions, settings, "failed")
    request = forks.ForkRequest("t", original, "s4", Actor("tok_1"), {
        "input_patch": {"extra": 1}, "steps": {"s4": {"args": {"text": "again"}}}})
    with transaction(sessions) as session:
        started = forks.fork_run(session, settings, request)
        run, steps = started.run, {s.step_id: s for s in repo.run_steps(session, started.run.id)}
        assert (run.forked_from_run_id, run.forked_from_step_id, run.trigger_type) == (original, "s4", "fork")
        assert run.input == {"topic": "x", "extra": 1}
        assert run.workflow_version < 0  # the overridden definition, stored apart from the published versions
        assert [s.version for s in repo.list_versions(session, "t", "five")] == [1]
        assert {k: (s.status, s.reused, s.output) for k, s in steps.items() if s.reused} == {
            f"s{i}": ("succeeded", True, {"from": f"s{i}"}) for i in (1, 2, 3)}
        assert steps["s4"].status == "queued" and steps["s5"].status == "pending"
        assert run.usage["steps"] == 0


@pytest.mark.parametrize(("changes", "field"), [
    ({"input": {"no_topic": 1}}, None),                             # the input schema
    ({"input": {"topic": "x"}, "input_patch": {"a": 1}}, "input_patch"),
    ({"steps": {"s4": {"tool": "no.such.tool"}}}, "steps.s4"),      # the definition's own validation
    ({"steps": {"s4": {"needs": ["s9"]}}}, "steps.s4"),
    ({"steps": {"s2": {"args": {}}}}, "steps.s2"),                  # a reused step
])
def test_a_bad_fork_is_a_400_naming_what_is_wrong(db, changes, field):
    settings, sessions = db
    original = _ended_run(sessions, settings, "failed")
    with pytest.raises(InvalidRequest) as refused, transaction(sessions) as session:
        forks.fork_run(session, settings, forks.ForkRequest("t", original, "s4", Actor("tok_1"), changes))
    if field:
        assert refused.value.details["field"] == field, refused.value.message


def test_a_run_that_has_not_ended_cannot_be_forked(db):
    settings, sessions = db
    original = _ended_run(sessions, settings, "running")
    with pytest.raises(InvalidTransitionError, match="cannot fork a run that is running"), \
            transaction(sessions) as session:
        forks.fork_run(session, settings, forks.ForkRequest("t", original, "s4", Actor("tok_1")))
