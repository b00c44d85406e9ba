"""What an executor may see and use while it runs one attempt. No SQL, no Celery in here."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import RetryableStepError, StepCancelled
from orchestrator.settings import Settings


@dataclass
class StepContext:
    run_id: str
    step_id: str
    attempt: int
    step: Any  # the step's definition (orchestrator.definitions.*Step)
    template_context: dict[str, Any]
    settings: Settings
    deadline: float  # time.monotonic() after which the attempt has timed out
    stop: threading.Event = field(default_factory=threading.Event)
    usage: dict[str, float] = field(default_factory=dict)
    # Where a suspended agent left off, with the human's answer once there is one.
    checkpoint: dict[str, Any] | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable for one attempt across redeliveries, different for the next attempt."""
        raw = f"{self.run_id}/{self.step_id}/{self.attempt}".encode()
        return hashlib.sha256(raw).hexdigest()[:32]

    def count(self, key: str, amount: float = 1) -> None:
        self.usage[key] = self.usage.get(key, 0) + amount

    def stop_error(self) -> Exception:
        """The error to raise once ``stop`` is set: a timeout if the deadline passed, else cancellation."""
        if time.monotonic() >= self.deadline:
            return RetryableStepError("the step ran past its timeout_s", code="timeout")
        return StepCancelled("the step was cancelled")

    def check(self) -> None:
        """Raise if the attempt must stop; long-running tools call this between pieces of work."""
        if self.stop.is_set():
            raise self.stop_error()

    def sleep(self, seconds: float) -> None:
        """Sleep that ends early, with the stop error, when the attempt must stop."""
        if self.stop.wait(max(seconds, 0)):
            raise self.stop_error()

    @property
    def remaining_s(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


class Suspend(Exception):  # noqa: N818 - control flow, like dramatiq's Retry, not an error
    """The step asks a person and gives its worker back; it goes on from ``checkpoint`` later."""

    def __init__(self, question: str, checkpoint: dict[str, Any]):
        super().__init__(question)
        self.question, self.checkpoint = question, checkpoint
