"""`llm` steps: one model call with a rendered prompt, on a worker."""

from __future__ import annotations

from typing import Literal

from orchestrator.steptypes.base import StepType
from orchestrator.steptypes.fields import ScriptEntry, StepFields


class LlmStep(StepFields):
    type: Literal["llm"]
    model: str = "scripted"
    prompt: str
    system: str | None = None
    script: list[ScriptEntry] | None = None


class Llm(StepType):
    name = "llm"
    definition = LlmStep
    label = "LLM"
    executor = "workers.executors.llm:run"


STEP_TYPE = Llm()
