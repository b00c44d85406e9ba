"""LLM rate limits on real processes against the fake OpenAI-compatible server: with tokens_per_min
set, concurrent LLM steps never exceed it in any window (checked from the server's own log), wait
with their worker given back and spend no attempt; a 429 with Retry-After suspends and resumes.

The window is shortened to WINDOW_S with SWITCHYARD_RATE_LIMIT_WINDOW_S (a setting for tests) so
that 20 calls span several windows in seconds; the limit then holds per WINDOW_S."""

from __future__ import annotations

import json
import secrets

import pytest
from sqlalchemy import text

from orchestrator.db.session import transaction
from tests.integration.conftest import publish, wait_for
from tests.integration.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS
from tests.integration.flow_stack import flow_stack

pytestmark = pytest.mark.integration

QUEUE = "flow.rl"
WINDOW_S = 4.0
TOKENS_PER_WINDOW = 100  # five calls of 18 tokens (estimated 20 each: the prompt's 8 words, twice)
PROMPT = "Summarise item {{ input.i }} in one short plain sentence."


def _steps(run_ids: list[str], sessions) -> list[tuple[str, str, int, str | None]]:
    with transaction(sessions) as session:
        return [tuple(r) for r in session.execute(
            text("SELECT run_id, status, attempt, waiting_on FROM steps WHERE run_id = ANY(:ids)"),
            {"ids": run_ids})]


def test_tokens_per_min_holds_in_every_window_and_waiting_steps_hold_no_worker(settings, artifacts, fake_llm):
    model = f"rl-{secrets.token_hex(3)}"  # limits and log of this test's own (Redis is shared)
    limits = {f"openai/{model}": {"tokens_per_min": TOKENS_PER_WINDOW}}
    env = {"SWITCHYARD_RATE_LIMITS": json.dumps(limits), "SWITCHYARD_RATE_LIMIT_WINDOW_S": str(WINDOW_S)}
    # Two worker processes of two threads: four workers for twenty steps.
    with flow_stack(settings, artifacts, tenants=("acme",), workers={"a": (QUEUE, 2), "b": (QUEUE, 2)},
                    windows={QUEUE: 8}, env=env) as stack:
        api = stack.api("acme")
        step = {"id": "ask", "type": "llm", "model": f"openai/{model}", "prompt": PROMPT, "queue": QUEUE}
        publish(api, {"name": "limited", "steps": [step]}, "limited")
        runs = [api.post("/runs", json={"workflow_id": "limited", "input": {"i": i}}).get_json()["id"]
                for i in range(20)]
        most_waiting = 0

        def all_done() -> bool:
            nonlocal most_waiting
            steps = _steps(runs, stack.sessions)
            most_waiting = max(most_waiting, sum(1 for s in steps if s[1] == "waiting" and s[3] == "rate_limit"))
            return all(s[1] in ("succeeded", "failed") for s in steps) and len(steps) == 20

        wait_for(all_done, 120, "the 20 rate-limited LLM steps to finish", interval=0.1)
        steps = _steps(runs, stack.sessions)
        assert {s[1] for s in steps} == {"succeeded"}, steps
        assert {s[2] for s in steps} == {1}, "a rate limit's wait spent an attempt"
        # More steps waited at once than there are workers: a waiting step holds none.
        assert most_waiting > 4, most_waiting
        waits = [e for e in api.get(f"/runs/{runs[-1]}/events").get_json()["events"]
                 if e["type"] == "step_waiting"]
        assert all(e["data"]["waiting_on"] == "rate_limit" for e in waits)

    calls = sorted((e["at"], e["tokens"]) for e in fake_llm.log if e["model"] == model)
    assert len(calls) == 20 and all(t == PROMPT_TOKENS + COMPLETION_TOKENS for _, t in calls)
    for start, _ in calls:
        held = sum(t for at, t in calls if start <= at < start + WINDOW_S)
        assert held <= TOKENS_PER_WINDOW, (start, held, calls)
    # 360 tokens at 100 a window: the calls spread over at least three windows (without the limit, 20
    # calls on four workers take well under one).
    assert calls[-1][0] - calls[0][0] >= 3 * WINDOW_S, calls
    print(f"20 calls over {calls[-1][0] - calls[0][0]:.1f}s, at most {most_waiting} steps waiting at once, "
          f"the fullest window {max(sum(t for at, t in calls if s <= at < s + WINDOW_S) for s, _ in calls)} tokens")


def test_a_429_with_retry_after_suspends_the_step_and_resumes_it(settings, artifacts, fake_llm):
    model = f"busy-{secrets.token_hex(3)}"
    fake_llm.busy(model, 1, "2")
    with flow_stack(settings, artifacts, tenants=("acme",), workers={"a": (QUEUE, 1)}, windows={QUEUE: 4}) as stack:
        api = stack.api("acme")
        refused = [api.put("/policy", json={"rate_limits": bad}) for bad in (
            {"/x": {"tokens_per_min": 10}}, {"openai": {"tokens_per_min": 0}}, {"openai": {"per_hour": 1}})]
        assert [r.status_code for r in refused] == [400] * 3
        assert all("rate_limits" in json.dumps(r.get_json()["error"]) for r in refused), [r.get_json() for r in refused]
        # The tenant's own limit on the model, roomy: the call is charged to it as well.
        policy = {"rate_limits": {f"openai/{model}": {"requests_per_min": 100}}}
        assert api.put("/policy", json=policy).get_json()["policy"]["rate_limits"] == {
            f"openai/{model}": {"requests_per_min": 100, "tokens_per_min": None}}
        step = {"id": "ask", "type": "llm", "model": f"openai/{model}", "prompt": PROMPT, "queue": QUEUE}
        publish(api, {"name": "busy", "steps": [step]}, "busy")
        run_id = api.post("/runs", json={"workflow_id": "busy", "input": {"i": 1}}).get_json()["id"]
        wait_for(lambda: _steps([run_id], stack.sessions)[0][1:] == ("waiting", 1, "rate_limit"), 30,
                 "the step to wait on the provider's Retry-After")
        wait_for(lambda: _steps([run_id], stack.sessions)[0][1] == "succeeded", 30, "the step to resume and succeed")
        [(_, status, attempt, _)] = _steps([run_id], stack.sessions)
        assert (status, attempt) == ("succeeded", 1)
        run = api.get(f"/runs/{run_id}").get_json()
        assert run["status"] == "succeeded", run
        waits = [e for e in api.get(f"/runs/{run_id}/events").get_json()["events"] if e["type"] == "step_waiting"]
        assert [(e["data"]["waiting_on"], e["data"]["retry_in_s"]) for e in waits] == [("rate_limit", 2.0)], waits
    refused, answered = [e for e in fake_llm.log if e["model"] == model]
    assert (refused["status"], answered["status"]) == (429, 200)
    assert answered["at"] - refused["at"] >= 2.0, (refused, answered)
