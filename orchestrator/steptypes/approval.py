"""`approval` steps: wait, holding no worker, for a person to approve (or reject) the run going on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from orchestrator.core.vocabulary import WaitsOn
from orchestrator.steptypes.base import Parking, StepType, render_text
from orchestrator.steptypes.fields import StepFields


class ApprovalStep(StepFields):
    type: Literal["approval"]
    prompt: str | None = None
    max_rounds: int = Field(default=3, ge=1, le=20)


class Approval(StepType):
    name = "approval"
    definition = ApprovalStep
    label = "Approval"
    waits_on = WaitsOn.APPROVAL.value
    renders_on_park = True

    def park(self, step: ApprovalStep, context: Mapping[str, Any] | None) -> Parking:
        """The request is the rendered prompt (None without one); no due time."""
        return Parking(self.waits_on, request=render_text(step.prompt, context))


STEP_TYPE = Approval()
