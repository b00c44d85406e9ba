"""Shared fixtures of the unit tests: step definitions and hand-built step contexts, no database."""

from __future__ import annotations

import time

import pytest

from orchestrator.definitions import parse_definition
from orchestrator.settings import Settings
from workers.context import StepContext


def build_step(step: dict):
    """One step model, validated the way a published definition is."""
    return parse_definition({"name": "unit", "steps": [step]}).steps[0]


@pytest.fixture
def make_ctx():
    """Build a StepContext for one attempt of ``step`` (a step dict), with a deadline ``timeout_s`` away."""

    def make(step: dict, *, attempt: int = 1, template_context: dict | None = None, timeout_s: float = 30.0):
        return StepContext(
            run_id="run_unit",
            step_id=step["id"],
            attempt=attempt,
            step=build_step(step),
            template_context=template_context if template_context is not None else {"input": {}, "steps": {}},
            settings=Settings(),
            deadline=time.monotonic() + timeout_s,
        )

    return make
