"""The executors under LLM rate limits (the embedded default's in-memory windows): an agent turn
with no room suspends with its conversation and goes on from that turn; a provider's 429 waits add
up to SWITCHYARD_MAX_RATE_LIMIT_WAIT_S, then it is a retryable llm_unavailable."""

from __future__ import annotations

import pytest

from orchestrator.errors import RetryableStepError
from orchestrator.settings import Settings
from workers import ratelimit
from workers.context import Suspend
from workers.executors import agent, llm


@pytest.fixture(autouse=True)
def fresh_windows():
    ratelimit._windows.cache_clear()  # each test starts with empty windows
    yield
    ratelimit._windows.cache_clear()


def _limited(ctx, **limits):
    ctx.settings = Settings(rate_limits={"scripted": limits})
    return ctx


def test_an_agent_turn_with_no_room_suspends_and_goes_on_from_that_turn(make_ctx):
    script = [{"tool_calls": [{"name": "echo", "args": {"text": "a"}}]},
              {"tool_calls": [{"name": "echo", "args": {"text": "b"}}]}, "all done"]
    step = {"id": "ag", "type": "agent", "prompt": "Do it", "tools": ["echo"], "script": script}
    ctx = _limited(make_ctx(step), requests_per_min=2)
    with pytest.raises(Suspend) as suspended:
        agent.run(ctx)
    held = suspended.value
    assert (held.kind, held.checkpoint["kind"], held.checkpoint["next_turn"]) == ("rate_limit", "rate_limit", 2)
    assert 59 < held.due_in_s <= 60  # the first call leaves the 60 s window then
    assert "scripted requests_per_min=2" in held.text
    assert ctx.usage["llm_calls"] == 2
    ratelimit._windows.cache_clear()  # the window has passed
    resumed = _limited(make_ctx(step), requests_per_min=2)
    resumed.checkpoint = held.checkpoint
    result = agent.run(resumed)
    assert (result["text"], result["turns"]) == ("all done", 3)
    assert [c["args"]["text"] for c in result["tool_calls"]] == ["a", "b"]
    assert resumed.usage["llm_calls"] == 1


def test_tokens_are_charged_from_the_reported_usage(make_ctx):
    step = {"id": "s", "type": "llm", "prompt": "one two three"}
    ctx = _limited(make_ctx(step), tokens_per_min=10)
    llm.run(ctx)
    used = ctx.usage["tokens_in"] + ctx.usage["tokens_out"]
    [(_, charged)] = ratelimit.windows(ctx.settings).logs["|scripted|tokens_per_min"].values()
    assert charged == used


def test_429_waits_add_up_to_the_most_an_attempt_may_wait(make_ctx):
    ctx = make_ctx({"id": "s", "type": "llm", "prompt": "hi"})
    ctx.settings = Settings(max_rate_limit_wait_s=600)
    ctx.checkpoint = {ratelimit.WAITED_KEY: 599.0}
    waiting = ratelimit.provider_busy(ctx, 0.5, 429)
    assert (waiting.wait_s, waiting.suspend({}).checkpoint[ratelimit.WAITED_KEY]) == (0.5, 599.5)
    with pytest.raises(RetryableStepError) as failed:
        ratelimit.provider_busy(ctx, 2, 429)
    assert failed.value.code == "llm_unavailable" and "SWITCHYARD_MAX_RATE_LIMIT_WAIT_S" in failed.value.message
