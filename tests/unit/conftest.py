"""Shared fixtures of the unit tests: step definitions, hand-built step contexts, and a migrated SQLite
database for the tests that need one (no server)."""

from __future__ import annotations

import time

import pytest

from orchestrator.db import migrate
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


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    """Settings for a fresh SQLite database under ``tmp_path``, migrated to the newest schema."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'unit.db'}", data_dir=tmp_path)
    migrate.upgrade(settings)
    return settings
