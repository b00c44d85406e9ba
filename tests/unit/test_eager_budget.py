"""The budget of eager steps (workers.tasks.EagerBudget): a Celery task goes on with the next step of
its run only while it has run for less than the budget, and only with a step whose own soft time limit
still fits in the task's (each message's carries the budget as slack)."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator.messages import StepMessage
from workers.tasks import EagerBudget


def _message(soft_time_limit: float) -> StepMessage:
    return StepMessage("run_x", "s1", 1, "steps", soft_time_limit, outbox_id=7)


def _budget(elapsed: float, slack: float, timelimit) -> EagerBudget:
    budget = EagerBudget.of(SimpleNamespace(timelimit=timelimit), slack)
    return EagerBudget(budget.started - elapsed, budget.slack, budget.soft_limit)


def test_no_budget_without_slack():
    assert EagerBudget.of(SimpleNamespace(timelimit=(70, 62)), 0.0) is None


def test_a_step_of_the_same_limit_follows_within_the_slack_only():
    # The first step's limit is 60 s; its message's soft limit carries 2 s of slack.
    assert _budget(0.5, 2.0, (67.0, 62.0)).fits(_message(60))
    assert not _budget(2.5, 2.0, (67.0, 62.0)).fits(_message(60)), "past the budget: through the broker"


def test_a_step_whose_limit_does_not_fit_in_the_tasks_goes_through_the_broker():
    # A short first step (10 s + 2 s slack) must not host a step allowed 600 s: Celery would cut it at 12 s.
    assert not _budget(0.1, 2.0, (17.0, 12.0)).fits(_message(600))
    assert _budget(0.1, 2.0, (17.0, 12.0)).fits(_message(5))


def test_a_task_without_time_limits_is_bounded_by_the_slack():
    assert _budget(1.0, 2.0, None).fits(_message(600))
    assert not _budget(2.1, 2.0, (None, None)).fits(_message(1))

