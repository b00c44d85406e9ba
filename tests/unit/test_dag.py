"""The step graph: validation, ready steps, fail-fast, the scheduler's next move."""

from __future__ import annotations

import pytest

from orchestrator import dag
from orchestrator.states import RunStatus, StepStatus

R, S = RunStatus, StepStatus

# a -> (b || c) -> d
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
DIAMOND_TYPES = {"a": "tool", "b": "tool", "c": "llm", "d": "agent"}


# --- graph_problems ---


def test_graph_problems_empty_for_a_valid_dag():
    assert dag.graph_problems(list(DIAMOND), DIAMOND) == []
    assert dag.graph_problems(["x"], {}) == []


@pytest.mark.parametrize(
    ("ids", "needs", "expected"),
    [
        pytest.param(["a", "b", "a"], {}, ["duplicate step id 'a'"], id="duplicate"),
        pytest.param(["a", "b"], {"b": ["zz"]}, ["step 'b' needs unknown step 'zz'"], id="unknown-need"),
        pytest.param(["a", "b"], {"b": ["b"]}, ["step 'b' needs itself"], id="self-need"),
        pytest.param(
            ["a", "a", "b"],
            {"b": ["nope"]},
            ["duplicate step id 'a'", "step 'b' needs unknown step 'nope'"],
            id="all-problems-at-once",
        ),
    ],
)
def test_graph_problems_names_each_problem(ids, needs, expected):
    assert dag.graph_problems(ids, needs) == expected


def test_graph_problems_finds_a_cycle_and_names_its_steps():
    needs = {"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"], "e": ["d"]}
    problems = dag.graph_problems(list(needs), needs)
    assert len(problems) == 1
    assert problems[0].startswith("cycle in needs: ")
    path = problems[0].removeprefix("cycle in needs: ").split(" -> ")
    assert path[0] == path[-1]
    assert set(path) == {"b", "c", "d"}


def test_graph_problems_two_step_cycle():
    problems = dag.graph_problems(["a", "b"], {"a": ["b"], "b": ["a"]})
    assert len(problems) == 1 and "cycle" in problems[0]
    assert "a" in problems[0] and "b" in problems[0]


# --- topological_order ---


def test_topological_order_puts_needs_first_and_keeps_definition_order():
    ids = ["d", "c", "b", "a"]
    assert dag.topological_order(ids, DIAMOND) == ["a", "c", "b", "d"]
    assert dag.topological_order(["z", "y", "x"], {}) == ["z", "y", "x"]


def test_topological_order_of_a_chain_with_a_side_branch():
    needs = {"s3": ["s2"], "s2": ["s1"], "s1": [], "side": []}
    order = dag.topological_order(["s3", "side", "s2", "s1"], needs)
    assert order == ["side", "s1", "s2", "s3"]
    for step, step_needs in needs.items():
        assert all(order.index(n) < order.index(step) for n in step_needs)


# --- ready_steps ---


@pytest.mark.parametrize(
    ("statuses", "ready"),
    [
        pytest.param({"a": S.PENDING, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING}, ["a"], id="start"),
        pytest.param({"a": S.RUNNING, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING}, [], id="need-running"),
        pytest.param(
            {"a": S.SUCCEEDED, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING}, ["b", "c"], id="fan-out"
        ),
        pytest.param(
            {"a": S.SUCCEEDED, "b": S.SUCCEEDED, "c": S.RUNNING, "d": S.PENDING}, [], id="join-waits"
        ),
        pytest.param(
            {"a": S.SUCCEEDED, "b": S.SUCCEEDED, "c": S.SUCCEEDED, "d": S.PENDING}, ["d"], id="join"
        ),
        pytest.param(
            {"a": S.SUCCEEDED, "b": S.SKIPPED, "c": S.SUCCEEDED, "d": S.PENDING}, [], id="skipped-blocks"
        ),
        pytest.param(
            {"a": S.SUCCEEDED, "b": S.QUEUED, "c": S.PENDING, "d": S.PENDING}, ["c"], id="only-pending"
        ),
        pytest.param({"a": S.SUCCEEDED, "b": S.SUCCEEDED, "c": S.SUCCEEDED, "d": S.SUCCEEDED}, [], id="done"),
    ],
)
def test_ready_steps(statuses, ready):
    assert dag.ready_steps(DIAMOND, statuses) == ready


def test_ready_steps_follow_definition_order():
    statuses = {"z": S.PENDING, "m": S.PENDING, "a": S.PENDING}
    assert dag.ready_steps({}, statuses) == ["z", "m", "a"]


# --- fail_fast ---


def test_fail_fast_cancels_in_flight_skips_unstarted_and_keeps_succeeded():
    statuses = {"a": S.SUCCEEDED, "b": S.RUNNING, "c": S.FAILED, "d": S.PENDING}
    plan = dag.fail_fast("c", statuses)
    assert plan.cancel == ["b"]
    assert plan.skip == ["d"]
    assert "a" not in plan.cancel + plan.skip
    assert "c" not in plan.cancel + plan.skip


def test_fail_fast_cancels_every_in_flight_status():
    statuses = {
        "ok": S.SUCCEEDED,
        "q": S.QUEUED,
        "r": S.RUNNING,
        "rt": S.RETRYING,
        "w": S.WAITING,
        "boom": S.FAILED,
        "p1": S.PENDING,
        "p2": S.PENDING,
        "old_skip": S.SKIPPED,
        "old_cancel": S.CANCELLED,
    }
    plan = dag.fail_fast("boom", statuses)
    assert plan.cancel == ["q", "r", "rt", "w"]
    assert plan.skip == ["p1", "p2"]


def test_fail_fast_of_a_lone_step_touches_nothing():
    plan = dag.fail_fast("a", {"a": S.FAILED})
    assert plan == dag.FailFast(cancel=[], skip=[])


# --- advance ---


def test_advance_dispatches_the_first_worker_step():
    statuses = dict.fromkeys(DIAMOND, S.PENDING)
    decision = dag.advance(DIAMOND, statuses, DIAMOND_TYPES)
    assert decision == dag.Advance(dispatch=["a"], park=[], run_status=R.RUNNING, waiting_on=None)


def test_advance_fans_out_and_does_not_change_its_input():
    statuses = {"a": S.SUCCEEDED, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING}
    before = dict(statuses)
    decision = dag.advance(DIAMOND, statuses, DIAMOND_TYPES)
    assert decision.dispatch == ["b", "c"]
    assert decision.park == []
    assert decision.run_status is R.RUNNING
    assert statuses == before


def test_advance_all_succeeded_is_a_succeeded_run():
    statuses = dict.fromkeys(DIAMOND, S.SUCCEEDED)
    decision = dag.advance(DIAMOND, statuses, DIAMOND_TYPES)
    assert decision == dag.Advance(dispatch=[], park=[], run_status=R.SUCCEEDED, waiting_on=None)


@pytest.mark.parametrize(
    ("step_type", "waiting_on"),
    [("approval", "approval"), ("question", "question"), ("wait_event", "event"), ("timer", "timer")],
)
def test_advance_parks_outside_world_steps_and_waits(step_type, waiting_on):
    needs = {"work": [], "gate": ["work"], "after": ["gate"]}
    types = {"work": "tool", "gate": step_type, "after": "tool"}
    statuses = {"work": S.SUCCEEDED, "gate": S.PENDING, "after": S.PENDING}
    decision = dag.advance(needs, statuses, types)
    assert decision.dispatch == []
    assert decision.park == ["gate"]
    assert decision.run_status is R.WAITING
    assert decision.waiting_on == waiting_on


def test_advance_last_step_parked_still_waits():
    needs = {"work": [], "gate": ["work"]}
    decision = dag.advance(needs, {"work": S.SUCCEEDED, "gate": S.PENDING}, {"work": "tool", "gate": "timer"})
    assert (decision.park, decision.run_status, decision.waiting_on) == (["gate"], R.WAITING, "timer")


def test_advance_already_waiting_step_keeps_the_run_waiting():
    needs = {"work": [], "gate": ["work"], "after": ["gate"]}
    types = {"work": "tool", "gate": "approval", "after": "tool"}
    statuses = {"work": S.SUCCEEDED, "gate": S.WAITING, "after": S.PENDING}
    decision = dag.advance(needs, statuses, types)
    assert decision == dag.Advance(dispatch=[], park=[], run_status=R.WAITING, waiting_on="approval")


def test_advance_dispatch_and_park_together_is_running():
    needs = {"work": [], "gate": []}
    types = {"work": "tool", "gate": "approval"}
    decision = dag.advance(needs, {"work": S.PENDING, "gate": S.PENDING}, types)
    assert decision.dispatch == ["work"]
    assert decision.park == ["gate"]
    assert decision.run_status is R.RUNNING
    assert decision.waiting_on is None


def test_advance_waiting_beside_a_running_step_is_running():
    needs = {"work": [], "gate": []}
    types = {"work": "tool", "gate": "question"}
    decision = dag.advance(needs, {"work": S.RUNNING, "gate": S.WAITING}, types)
    assert decision == dag.Advance(dispatch=[], park=[], run_status=R.RUNNING, waiting_on=None)


def test_advance_with_nothing_ready_and_work_in_flight_is_running():
    statuses = {"a": S.SUCCEEDED, "b": S.RETRYING, "c": S.SUCCEEDED, "d": S.PENDING}
    decision = dag.advance(DIAMOND, statuses, DIAMOND_TYPES)
    assert decision == dag.Advance(dispatch=[], park=[], run_status=R.RUNNING, waiting_on=None)


# --- sink_steps ---


@pytest.mark.parametrize(
    ("ids", "needs", "sinks"),
    [
        pytest.param(list(DIAMOND), DIAMOND, ["d"], id="diamond"),
        pytest.param(["a", "b", "c"], {}, ["a", "b", "c"], id="independent"),
        pytest.param(["a", "b", "c"], {"b": ["a"]}, ["b", "c"], id="chain-and-lone"),
        pytest.param(["a", "b", "c"], {"b": ["a"], "c": ["a"]}, ["b", "c"], id="fan-out"),
    ],
)
def test_sink_steps(ids, needs, sinks):
    assert dag.sink_steps(ids, needs) == sinks


def test_an_agent_that_asked_a_person_keeps_the_run_waiting_on_a_question():
    decision = dag.advance({"agent": [], "after": ["agent"]}, {"agent": S.WAITING, "after": S.PENDING},
                           {"agent": "agent", "after": "tool"})
    assert decision == dag.Advance(dispatch=[], park=[], run_status=R.WAITING, waiting_on="question")
