"""Usage and credits: every step's usage, priced by the session's price table, rolled up on the run."""

from __future__ import annotations

import pytest

from tests.integration.conftest import PRICES, publish, start, wait_run
from tests.integration.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS

pytestmark = pytest.mark.usefixtures("engine_processes")


def test_run_usage_and_credits_are_the_providers_token_counts_times_the_price_table(api):
    workflow = publish(api, {
        "name": "metered",
        "defaults": {"retry": {"max_attempts": 3, "backoff": "fixed", "initial_delay_s": 0.1, "jitter": False}},
        "steps": [
            {"id": "summary", "type": "llm", "prompt": "Summarise",
             "script": [{"content": "short", "tokens_in": 100, "tokens_out": 40}]},
            {"id": "agent", "type": "agent", "prompt": "Act", "tools": ["echo"], "script": [
                {"tool_calls": [{"name": "echo", "args": {"x": 1}}], "tokens_in": 50, "tokens_out": 10},
                {"content": "done", "tokens_in": 70, "tokens_out": 20},
            ]},
            {"id": "remote", "type": "llm", "model": "openai/test-model", "prompt": "Hello"},
            {"id": "flaky", "type": "tool", "tool": "fail", "args": {"until_attempt": 2}},
        ],
    })
    run = wait_run(api, start(api, workflow), timeout=30)
    assert run["status"] == "succeeded", run

    p = PRICES
    scripted_out = p.models["scripted"].tokens_out  # the scripted model's own output price
    expected = {
        "summary": p.llm_calls + 100 * p.tokens_in + 40 * scripted_out + p.steps,
        "agent": 2 * p.llm_calls + 120 * p.tokens_in + 30 * scripted_out + p.tool_calls + p.steps,
        "remote": p.llm_calls + PROMPT_TOKENS * p.tokens_in + COMPLETION_TOKENS * p.tokens_out + p.steps,
        # Two attempts each called the tool once; only the one that finished the step pays the step price.
        "flaky": 2 * p.tool_calls + p.steps,
    }
    steps = {s["id"]: s for s in run["steps"]}
    for step_id in ("summary", "agent", "remote"):
        assert steps[step_id]["usage"]["credits"] == pytest.approx(expected[step_id]), step_id
    assert steps["flaky"]["attempt"] == 2
    assert run["usage"] == {
        "steps": 4,
        "tool_calls": 1 + 2,
        "llm_calls": 1 + 2 + 1,
        "tokens_in": 100 + 120 + PROMPT_TOKENS,
        "tokens_out": 40 + 30 + COMPLETION_TOKENS,
        "credits": pytest.approx(sum(expected.values())),
    }
