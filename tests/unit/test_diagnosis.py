"""The pure diagnosis: each situation names its cause and the action that would move the run."""

from __future__ import annotations

import pytest

from orchestrator.diagnosis import StepFacts, diagnose
from orchestrator.states import RunStatus, StepStatus

R, S = RunStatus, StepStatus


def step(status, type_="tool", **kw) -> StepFacts:
    return StepFacts(step_id="s", type=type_, status=status, queue=kw.pop("queue", "steps"), attempt=1, **kw)


CASES = [
    # (name, run status, steps, approvals, questions, consumers, expected kinds, text in the action)
    ("approval", R.WAITING, [step(S.WAITING, "approval")], {"s": "apr_1"}, {}, None, ["approval"], "apr_1/approve"),
    ("question step", R.WAITING, [step(S.WAITING, "question")], {}, {"s": "q_1"}, None, ["question"], "q_1/answer"),
    ("agent asked a person", R.WAITING, [step(S.WAITING, "agent")], {}, {"s": "q_2"}, None, ["question"], "q_2"),
    ("event", R.WAITING, [step(S.WAITING, "wait_event", correlation_key="k-1", due_in_s=30)], {}, {}, None,
     ["event"], '"correlation_key": "k-1"'),
    ("timer", R.WAITING, [step(S.WAITING, "timer", due_in_s=3)], {}, {}, None, ["timer"], "fires it"),
    ("retry", R.RUNNING, [step(S.RETRYING, due_in_s=2)], {}, {}, None, ["retry"], "next attempt"),
    ("queue nobody consumes", R.RUNNING, [step(S.QUEUED, queue="gpu")], {}, {}, {"steps": 2}, ["no_consumers"],
     "--queues gpu"),
    ("queue with consumers", R.RUNNING, [step(S.QUEUED)], {}, {}, {"steps": 2}, ["queued"], "add workers"),
    ("consumers unknown", R.RUNNING, [step(S.QUEUED)], {}, {}, None, ["queued"], "add workers"),
    ("worker stopped heartbeating", R.RUNNING, [step(S.RUNNING, lease_expired=True)], {}, {}, None,
     ["worker_lost"], "reclaims"),
    ("healthy running step", R.RUNNING, [step(S.RUNNING)], {}, {}, None, [], None),
    ("paused", R.PAUSED, [step(S.PENDING)], {}, {}, None, ["paused"], "/resume"),
    ("over budget", R.PAUSED, [step(S.WAITING, "agent", waiting_on="budget")], {}, {}, None,
     ["paused", "budget_exceeded"], '"limits"'),
    ("llm rate limit", R.WAITING, [step(S.WAITING, "llm", waiting_on="rate_limit", due_in_s=4)], {}, {}, None,
     ["rate_limit"], "queues it again"),
    ("tool call gated", R.WAITING, [step(S.WAITING, "agent", waiting_on="approval")], {"s": "apr_9"}, {}, None,
     ["approval"], "apr_9/approve"),
    ("not picked up", R.QUEUED, [step(S.PENDING)], {}, {}, None, ["scheduler"], "switchyard scheduler"),
    ("failed", R.FAILED, [step(S.FAILED)], {}, {}, None, ["failed"], "/retry"),
    ("succeeded", R.SUCCEEDED, [step(S.SUCCEEDED)], {}, {}, None, [], None),
]


@pytest.mark.parametrize("name, status, steps, approvals, questions, consumers, kinds, action", CASES,
                         ids=[c[0] for c in CASES])
def test_diagnose(name, status, steps, approvals, questions, consumers, kinds, action):
    causes = diagnose("run_1", status, {"message": "boom", "step_id": "s"}, steps,
                      approvals=approvals, questions=questions, consumers=consumers)
    assert [c.kind for c in causes] == kinds
    if action:
        assert action in causes[-1].action


def test_overdue_due_times_say_so():
    [cause] = diagnose("run_1", R.WAITING, None, [step(S.WAITING, "timer", due_in_s=-1.5)],
                       approvals={}, questions={}, consumers=None)
    assert "overdue by 1.5s" in cause.message
