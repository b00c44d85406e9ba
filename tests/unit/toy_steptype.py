"""Two toy step types, to show that adding one is a module like this and a ``steptypes.register`` call.

``shout`` runs on a worker (its executor is ``execute`` below); ``pause_for`` waits, holding no
worker, for ``seconds`` and then succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from orchestrator import templates
from orchestrator.core.reports import Outcome
from orchestrator.core.vocabulary import WaitsOn
from orchestrator.steptypes.base import Parking, StepType
from orchestrator.steptypes.fields import StepFields


class ShoutStep(StepFields):
    type: Literal["shout"]
    text: str


class Shout(StepType):
    name = "shout"
    definition = ShoutStep
    label = "Shout"
    executor = __name__  # this module's execute()


def execute(ctx) -> dict[str, str]:
    """The step's text, rendered and upper-cased."""
    return {"text": str(templates.render(ctx.step.text, ctx.template_context)).upper()}


class PauseForStep(StepFields):
    type: Literal["pause_for"]
    seconds: float = Field(ge=0)


class PauseFor(StepType):
    name = "pause_for"
    definition = PauseForStep
    label = "Pause"
    waits_on = WaitsOn.TIMER.value

    def park(self, step: PauseForStep, context: Mapping[str, Any] | None) -> Parking:
        return Parking(self.waits_on, due_in_s=step.seconds)

    def on_due(self, step: PauseForStep) -> Outcome:
        return Outcome(output={"paused_for": step.seconds})


TOYS = (Shout(), PauseFor())
