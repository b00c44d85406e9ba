"""`timer` steps: wait, holding no worker, for duration_s, then succeed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from orchestrator.core.reports import Outcome
from orchestrator.core.vocabulary import WaitsOn
from orchestrator.steptypes.base import Parking, StepType
from orchestrator.steptypes.fields import StepFields


class TimerStep(StepFields):
    type: Literal["timer"]
    duration_s: float = Field(ge=0, le=365 * 86400)


class Timer(StepType):
    name = "timer"
    definition = TimerStep
    label = "Timer"
    waits_on = WaitsOn.TIMER.value

    def park(self, step: TimerStep, context: Mapping[str, Any] | None) -> Parking:
        """Due duration_s from now; nothing is rendered (context may be None)."""
        return Parking(self.waits_on, due_in_s=step.duration_s)

    def on_due(self, step: TimerStep) -> Outcome:
        """The timer fired: the step succeeds."""
        return Outcome(output={"fired": True})


STEP_TYPE = Timer()
