"""`question` steps: wait, holding no worker, for a person to answer a question."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from orchestrator.core.vocabulary import WaitsOn
from orchestrator.steptypes.base import Parking, StepType, render_text
from orchestrator.steptypes.fields import StepFields


class QuestionStep(StepFields):
    type: Literal["question"]
    question: str = "?"


class Question(StepType):
    name = "question"
    definition = QuestionStep
    label = "Question"
    waits_on = WaitsOn.QUESTION.value
    renders_on_park = True

    def park(self, step: QuestionStep, context: Mapping[str, Any] | None) -> Parking:
        """The request is the rendered question, "?" if it renders empty; no due time."""
        return Parking(self.waits_on, request=render_text(step.question, context) or "?")


STEP_TYPE = Question()
