"""Retry policy and backoff — pure; the caller injects randomness.

The decision is taken once, here, by the outcome writer; Celery only carries it out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: bool = True


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


def backoff_delay(policy: RetryPolicy, failed_attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after attempt ``failed_attempt`` (1-based) before the next one.

    Exponential: initial * 2^(n-1), capped at max_delay_s. Jitter keeps the upper half fixed and
    randomises the lower half, so delays stay growing while retries of many steps spread out.
    """
    if policy.backoff == "fixed":
        delay = policy.initial_delay_s
    else:
        delay = policy.initial_delay_s * (2 ** max(failed_attempt - 1, 0))
    delay = min(delay, policy.max_delay_s)
    if policy.jitter:
        delay = delay / 2 + rand() * delay / 2
    return delay


def decide(
    policy: RetryPolicy, failed_attempt: int, retryable: bool, rand: Callable[[], float] = random.random
) -> RetryDecision:
    """Retry if the error allows it and attempts remain; otherwise the step fails for good."""
    if not retryable or failed_attempt >= policy.max_attempts:
        return RetryDecision(retry=False)
    return RetryDecision(retry=True, delay_s=backoff_delay(policy, failed_attempt, rand))
