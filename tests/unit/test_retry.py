"""Backoff and the retry decision, with randomness injected."""

from __future__ import annotations

import pytest

from orchestrator.retry import RetryDecision, RetryPolicy, backoff_delay, decide


def never_called() -> float:
    raise AssertionError("rand must not be called without jitter")


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (8, 60.0), (50, 60.0)],
)
def test_exponential_without_jitter_doubles_and_caps(attempt, delay):
    policy = RetryPolicy(backoff="exponential", initial_delay_s=1, max_delay_s=60, jitter=False)
    assert backoff_delay(policy, attempt, rand=never_called) == delay


def test_exponential_uses_initial_delay_as_base():
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=100, jitter=False)
    assert [backoff_delay(policy, n, never_called) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    # Attempt numbers below 1 never shrink the delay under the initial one.
    assert backoff_delay(policy, 0, never_called) == 0.5


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0)])
def test_exponential_jitter_randomises_the_lower_half(rand, factor):
    policy = RetryPolicy(initial_delay_s=2, max_delay_s=1000, jitter=True)
    # Attempt 3: 2 * 2^2 = 8 s before jitter.
    assert backoff_delay(policy, 3, rand=lambda: rand) == pytest.approx(8 * factor)


def test_jitter_applies_after_the_cap():
    policy = RetryPolicy(initial_delay_s=1, max_delay_s=10, jitter=True)
    assert backoff_delay(policy, 20, rand=lambda: 0.0) == pytest.approx(5.0)
    assert backoff_delay(policy, 20, rand=lambda: 1.0) == pytest.approx(10.0)


def test_jitter_with_the_default_random_stays_in_bounds():
    policy = RetryPolicy(initial_delay_s=4, max_delay_s=60, jitter=True)
    delays = [backoff_delay(policy, 2) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize("attempt", [1, 2, 5, 30])
def test_fixed_backoff_is_constant(attempt):
    policy = RetryPolicy(backoff="fixed", initial_delay_s=3, max_delay_s=60, jitter=False)
    assert backoff_delay(policy, attempt, never_called) == 3.0


def test_fixed_backoff_is_capped_and_jittered():
    capped = RetryPolicy(backoff="fixed", initial_delay_s=100, max_delay_s=60, jitter=False)
    assert backoff_delay(capped, 1, never_called) == 60.0
    jittered = RetryPolicy(backoff="fixed", initial_delay_s=10, max_delay_s=60, jitter=True)
    assert backoff_delay(jittered, 4, rand=lambda: 0.0) == pytest.approx(5.0)


def test_decide_retries_a_retryable_error_with_its_backoff():
    policy = RetryPolicy(max_attempts=3, initial_delay_s=1, max_delay_s=60, jitter=True)
    assert decide(policy, 1, retryable=True, rand=lambda: 1.0) == RetryDecision(retry=True, delay_s=1.0)
    assert decide(policy, 2, retryable=True, rand=lambda: 0.0) == RetryDecision(retry=True, delay_s=1.0)
    assert decide(policy, 2, retryable=True, rand=lambda: 1.0) == RetryDecision(retry=True, delay_s=2.0)


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_decide_never_retries_a_permanent_error(attempt):
    policy = RetryPolicy(max_attempts=5)
    assert decide(policy, attempt, retryable=False, rand=never_called) == RetryDecision(
        retry=False, delay_s=0.0
    )


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "retry"), [(3, 2, True), (3, 3, False), (3, 4, False), (1, 1, False)]
)
def test_decide_stops_when_attempts_are_spent(max_attempts, attempt, retry):
    policy = RetryPolicy(max_attempts=max_attempts, jitter=False)
    decision = decide(policy, attempt, retryable=True)
    assert decision.retry is retry
    if not retry:
        assert decision.delay_s == 0.0
