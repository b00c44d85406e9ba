"""`question` steps: wait, holding no worker, for a person to answer a question."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from orchestrator.core.vocabulary import WaitsOn
from orchestrator.steptypes.base import Parking, StepType, render_text
from orchestrator.steptypes.fields import StepFields


class QuestionStep(StepFields):
    type: Literal["question"]
    # The text shown to the person, as every step that shows one takes it (approval: `prompt` too).
    prompt: str | None = None
    question: str | None = Field(default=None, description="The older name of `prompt`, still read when "
                                                           "`prompt` is not given.")


class Question(StepType):
    name = "question"
    definition = QuestionStep
    label = "Question"
    waits_on = WaitsOn.QUESTION.value
    renders_on_park = True

    def park(self, step: QuestionStep, context: Mapping[str, Any] | None) -> Parking:
        """The request is the rendered prompt, "?" if it renders empty; no due time."""
        text = step.prompt if step.prompt is not None else step.question
        return Parking(self.waits_on, request=render_text(text or "?", context) or "?")


STEP_TYPE = Question()
