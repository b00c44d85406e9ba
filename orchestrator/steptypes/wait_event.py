"""`wait_event` steps: wait, holding no worker, for an event posted with the step's correlation key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from orchestrator import templates
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.core.vocabulary import ErrorCode, WaitsOn
from orchestrator.errors import StepError
from orchestrator.steptypes.base import Parking, StepType
from orchestrator.steptypes.fields import StepFields

# Keys are stored in a bounded column and matched exactly, so a longer rendering is cut, not refused.
KEY_MAX_CHARS = 200
EVENT_TIMEOUT = ErrorInfo(ErrorCode.EVENT_TIMEOUT.value, "no event arrived before timeout_s", False)


class WaitEventStep(StepFields):
    # The wait's own deadline is the shared `timeout_s` (none: it waits for ever).
    type: Literal["wait_event"]
    correlation_key: str
    event_name: str | None = None


class WaitEvent(StepType):
    name = "wait_event"
    definition = WaitEventStep
    label = "Wait for event"
    waits_on = WaitsOn.EVENT.value
    renders_on_park = True

    def park(self, step: WaitEventStep, context: Mapping[str, Any] | None) -> Parking:
        """Due after the step's timeout_s (if it has one); the key rendered and cut to 200 chars, or, if
        the key's template fails, no key and the error the step fails with."""
        due = step.timeout_s if step.timeout_s else None
        try:
            key = str(templates.render(step.correlation_key, context))[:KEY_MAX_CHARS]
        except StepError as exc:
            return Parking(self.waits_on, due_in_s=due, error=ErrorInfo.of(exc))
        return Parking(self.waits_on, due_in_s=due, correlation_key=key)

    def on_due(self, step: WaitEventStep) -> Outcome:
        """No event came before the timeout: the step fails, not to be retried."""
        return Outcome(error=EVENT_TIMEOUT)


STEP_TYPE = WaitEvent()
