"""What an attempt came to, as the worker (or the scheduler, for a lost worker) reports it: frozen values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.vocabulary import ErrorCode
from orchestrator.errors import StepError

USAGE_KEYS = ("steps", "tool_calls", "llm_calls", "tokens_in", "tokens_out", "credits")


def empty_usage() -> dict[str, float]:
    return {key: 0 for key in USAGE_KEYS}


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str
    retryable: bool
    details: Mapping[str, Any] | None = None  # e.g. a failed child run's id, the field of invalid_arguments

    @classmethod
    def of(cls, exc: StepError) -> ErrorInfo:
        return cls(exc.code, exc.message, exc.retryable, exc.details or None)

    def as_json(self) -> dict[str, Any]:
        found = {"code": self.code, "message": self.message, "retryable": self.retryable}
        return found | ({"details": dict(self.details)} if self.details else {})


@dataclass(frozen=True)
class Suspension:
    """A step gave its worker back to wait — on a person's answer (``question``), on the approval of
    a tool call (``approval``, the ``call``) or on a raised budget (``budget``) — and goes on from
    ``checkpoint`` when it is dispatched again."""

    kind: str
    text: str
    checkpoint: dict[str, Any]
    call: dict[str, Any] | None = None
    # ``rate_limit``: queued again, at the same attempt, this many seconds from now.
    due_in_s: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: an output, an error, or a suspension; usage in every case."""

    output: Any = None
    error: ErrorInfo | None = None
    usage: dict[str, float] = field(default_factory=dict)
    suspend: Suspension | None = None
    # The policy decisions taken about the attempt's tool calls, in order.
    policy: list[dict[str, Any]] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.suspend is None

    @property
    def cancelled(self) -> bool:
        return self.error is not None and self.error.code == ErrorCode.RUN_STOPPED


WORKER_LOST = Outcome(error=ErrorInfo(ErrorCode.WORKER_LOST.value,
                                      "the worker stopped heartbeating; its lease expired", True))
