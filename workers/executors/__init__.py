"""Executors run one attempt of a step and return its output or raise a StepError. No SQL, no Celery.

Which executor runs a step is its type's ``executor`` in the step type registry (orchestrator.steptypes):
a module imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

from orchestrator import steptypes
from orchestrator.errors import PermanentStepError
from workers.context import StepContext

# The function an executor module runs attempts with, unless its path names another ("module:function").
ENTRY_POINT = "execute"


def execute(ctx: StepContext) -> Any:
    """Run one attempt of ``ctx.step`` with its type's executor; PermanentStepError (invalid_step) if
    its type does not run on a worker."""
    step_type = steptypes.find(ctx.step.type)
    if step_type is None or step_type.executor is None:
        raise PermanentStepError(f"step type {ctx.step.type!r} does not run on a worker", code="invalid_step")
    return executor_for(step_type.executor)(ctx)


@cache
def executor_for(path: str) -> Callable[[StepContext], Any]:
    """The function that ``path`` ("package.module" or "package.module:function") names, imported once."""
    module_name, _, function = path.partition(":")
    return getattr(importlib.import_module(module_name), function or ENTRY_POINT)
