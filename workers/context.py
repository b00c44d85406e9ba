"""What an executor may see and use while it runs one attempt. No SQL, no Celery in here."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from orchestrator import policy as policies
from orchestrator.errors import RetryableStepError, StepCancelled
from orchestrator.settings import Settings

Resolver = Callable[[str], list[str]]


def resolve_host(host: str) -> list[str]:
    """The addresses ``host`` resolves to (empty if it does not resolve: the call will fail anyway)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError):
        return []


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
    # Where a suspended step left off, with the person's answer or decision once there is one.
    checkpoint: dict[str, Any] | None = None
    # The workflow's policy, the run's effective limits and the run's usage before this attempt.
    policy: policies.Policy = field(default_factory=policies.Policy)
    tenant_policy: policies.Policy | None = None
    limits: policies.Limits = field(default_factory=policies.Limits)
    run_usage: dict[str, float] = field(default_factory=dict)
    # Every policy decision taken in this attempt, recorded on the step with the outcome.
    decisions: list[dict[str, Any]] = field(default_factory=list)
    resolve: Resolver = resolve_host
    tenant_id: str = ""  # whose calls a tenant policy's LLM rate limits count

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

    def authorize(self, spec: policies.ToolSpec, args: Any) -> policies.Decision:
        """Decide a call under the workflow's policy (resolving a `url` argument's host) and record it."""
        url = args.get("url") if isinstance(args, dict) else None
        host = urlsplit(url).hostname if isinstance(url, str) else None
        decision = policies.decide(self.policy, spec, args, self.resolve(host) if host else (), self.tenant_policy)
        self.record_decision(decision.as_json())
        return decision

    def record_decision(self, decision: dict[str, Any]) -> None:
        self.decisions.append(decision)

    def check_budget(self, kind: str, estimate: float = 0) -> None:
        """Raise BudgetExceeded if one more call of ``kind`` would go over the run's limits."""
        used = dict(self.run_usage)
        for key, amount in self.usage.items():
            used[key] = used.get(key, 0) + amount
        problem = policies.budget_problem(self.limits, used, kind, estimate)
        if problem is not None:
            raise BudgetExceeded(problem)


class Suspend(Exception):  # noqa: N818 - control flow, like dramatiq's Retry, not an error
    """The step gives its worker back and waits: on a person's answer (``question``), on an approval of
    a tool call (``approval``, with the ``call``) or on an operator raising a budget (``budget``). It
    goes on from ``checkpoint`` when it is dispatched again."""

    def __init__(self, kind: str, text: str, checkpoint: dict[str, Any], call: dict[str, Any] | None = None,
                 due_in_s: float | None = None):
        super().__init__(text)
        self.kind, self.text, self.checkpoint, self.call = kind, text, checkpoint, call
        self.due_in_s = due_in_s  # an LLM rate limit's wait (``rate_limit``): queued again after it


class ApprovalNeeded(Exception):  # noqa: N818 - control flow
    """A policy sent a tool call for approval; the executor suspends with its own checkpoint."""

    def __init__(self, decision: policies.Decision, args: Any):
        super().__init__(decision.rationale)
        self.decision, self.args = decision, args

    def call(self) -> dict[str, Any]:
        return {"tool": self.decision.tool, "args": self.args, "rule": self.decision.rule,
                "rationale": self.decision.rationale, "risk": self.decision.risk}

    def text(self) -> str:
        return (f"allow a call of {self.decision.tool} ({self.decision.risk} risk) with {self.args}? "
                f"{self.decision.rule}: {self.decision.rationale}")


class BudgetExceeded(Exception):  # noqa: N818 - control flow
    """The next call would go over the run's limits; the run is paused before it is made."""
