"""Executors run one attempt of a step and return its output or raise a StepError. No SQL, no Celery."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import PermanentStepError
from workers.context import StepContext
from workers.executors import agent, llm, tool

EXECUTORS = {"tool": tool.run, "llm": llm.run, "agent": agent.run}


def execute(ctx: StepContext) -> Any:
    executor = EXECUTORS.get(ctx.step.type)
    if executor is None:
        raise PermanentStepError(f"step type {ctx.step.type!r} does not run on a worker", code="invalid_step")
    return executor(ctx)
