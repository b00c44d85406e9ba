"""Built-in tools, the scripted provider and the executors, on hand-built step contexts."""

from __future__ import annotations

import json
import threading
import time

import pytest

from orchestrator.errors import PermanentStepError, RetryableStepError, StepCancelled
from workers import executors, tools
from workers.executors import agent
from workers.providers import Reply, ToolCall, provider_for
from workers.providers.scripted import ScriptedProvider
from workers.tools import builtin

WAIT_S = 5.0  # an upper bound for cross-thread hand-offs; a passing test never waits this long


class _EnteredEvent(threading.Event):
    """A stop flag that tells the test when the tool has started waiting on it."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()

    def wait(self, timeout=None):
        self.entered.set()
        return super().wait(timeout)


def _stop_once_waiting(ctx) -> threading.Thread:
    """Swap in a stop flag and set it, from another thread, as soon as the tool waits on it."""
    ctx.stop = _EnteredEvent()

    def stopper():
        if ctx.stop.entered.wait(WAIT_S):
            ctx.stop.set()

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    return thread


# --- built-in tools ---


def test_echo_returns_its_args(make_ctx):
    ctx = make_ctx({"id": "e", "type": "tool", "tool": "echo"})
    args = {"text": "hi", "nested": {"n": [1, 2]}}
    assert builtin.echo(args, ctx) == args
    assert tools.get_tool("echo") is builtin.echo


def test_tool_step_renders_args_and_counts_the_call(make_ctx):
    step = {"id": "e", "type": "tool", "tool": "echo", "args": {"text": "{{ input.ticket }}", "n": 2}}
    ctx = make_ctx(step, template_context={"input": {"ticket": "T-1"}, "steps": {}})
    assert executors.execute(ctx) == {"text": "T-1", "n": 2}
    assert ctx.usage == {"tool_calls": 1}


@pytest.mark.parametrize(("until", "attempt"), [(3, 1), (3, 2), (None, 1), (None, 7)])
def test_fail_fails_attempts_before_until_attempt(make_ctx, until, attempt):
    args = {"message": "boom"} | ({"until_attempt": until} if until else {})
    ctx = make_ctx({"id": "f", "type": "tool", "tool": "fail", "args": args}, attempt=attempt)
    with pytest.raises(RetryableStepError) as caught:
        builtin.fail(args, ctx)
    assert caught.value.code == "tool_failed"
    assert caught.value.message == "boom"
    assert caught.value.retryable is True


@pytest.mark.parametrize("attempt", [3, 4])
def test_fail_succeeds_from_until_attempt_on(make_ctx, attempt):
    args = {"until_attempt": 3}
    ctx = make_ctx({"id": "f", "type": "tool", "tool": "fail", "args": args}, attempt=attempt)
    assert executors.execute(ctx) == {"attempt": attempt, "succeeded_after_failures": attempt - 1}


def test_sleep_of_zero_returns(make_ctx):
    ctx = make_ctx({"id": "s", "type": "tool", "tool": "sleep"})
    assert builtin.sleep({"seconds": 0}, ctx) == {"slept_s": 0.0}


def test_sleep_refuses_a_non_number(make_ctx):
    ctx = make_ctx({"id": "s", "type": "tool", "tool": "sleep"})
    with pytest.raises(PermanentStepError) as caught:
        builtin.sleep({"seconds": "soon"}, ctx)
    assert caught.value.code == "invalid_arguments"


def test_sleep_stops_early_when_cancelled_from_another_thread(make_ctx):
    ctx = make_ctx({"id": "s", "type": "tool", "tool": "sleep"}, timeout_s=600)
    stopper = _stop_once_waiting(ctx)
    started = time.monotonic()
    with pytest.raises(StepCancelled) as caught:
        builtin.sleep({"seconds": 20}, ctx)
    assert time.monotonic() - started < WAIT_S
    assert caught.value.code == "run_stopped"
    assert caught.value.retryable is False
    stopper.join(WAIT_S)


def test_sleep_past_the_deadline_raises_a_timeout(make_ctx):
    # The deadline has passed; the worker's heartbeat sets the stop flag from its own thread.
    ctx = make_ctx({"id": "s", "type": "tool", "tool": "sleep"}, timeout_s=-1)
    stopper = _stop_once_waiting(ctx)
    started = time.monotonic()
    with pytest.raises(RetryableStepError) as caught:
        builtin.sleep({"seconds": 20}, ctx)
    assert time.monotonic() - started < WAIT_S
    assert not isinstance(caught.value, StepCancelled)
    assert caught.value.code == "timeout"
    assert caught.value.retryable is True
    stopper.join(WAIT_S)


def test_a_stopped_context_runs_no_tool(make_ctx):
    ctx = make_ctx({"id": "e", "type": "tool", "tool": "echo", "args": {"x": 1}})
    ctx.stop.set()
    with pytest.raises(StepCancelled):
        executors.execute(ctx)
    assert ctx.usage == {}


def test_http_request_refuses_a_non_http_url_without_calling_out(make_ctx):
    ctx = make_ctx({"id": "h", "type": "tool", "tool": "http.request", "args": {"url": "{{ input.url }}"}})
    with pytest.raises(PermanentStepError) as caught:
        builtin.http_request({"url": "file:///etc/passwd"}, ctx)
    assert caught.value.code == "invalid_arguments"


@pytest.fixture
def answering_server():
    """A real HTTP server on loopback answering every request with ``(status, headers, body)`` as set."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = {"status": 200, "headers": {}, "body": b"", "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            answer["requests"] += 1
            self.send_response(answer["status"])
            for name, value in answer["headers"].items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    answer["url"] = f"http://127.0.0.1:{server.server_address[1]}/"
    yield answer
    server.shutdown()
    server.server_close()


def test_http_request_keeps_only_the_start_of_a_long_error_body(make_ctx, answering_server):
    ctx = make_ctx({"id": "h", "type": "tool", "tool": "http.request", "args": {"url": "{{ input.url }}"}})
    answering_server.update(status=500, body=b"x" * 100_000)
    with pytest.raises(RetryableStepError) as caught:
        builtin.http_request({"url": answering_server["url"]}, ctx)
    details = caught.value.details
    assert caught.value.code == "http_status" and details["status"] == 500
    assert details["text"] == "x" * builtin.MAX_ERROR_BODY and details["truncated"] and details["length"] == 100_000
    answering_server.update(status=404, body=b'{"error": "no such thing"}', headers={"Content-Type": "application/json"})
    with pytest.raises(PermanentStepError) as caught:
        builtin.http_request({"url": answering_server["url"]}, ctx)
    assert caught.value.details["json"] == {"error": "no such thing"} and "truncated" not in caught.value.details


def test_http_request_fails_for_good_on_a_redirect_to_a_url_that_is_not_http(make_ctx, answering_server):
    ctx = make_ctx({"id": "h", "type": "tool", "tool": "http.request", "args": {"url": "{{ input.url }}"}})
    answering_server.update(status=302, headers={"Location": "ftp://127.0.0.1/secret"})
    with pytest.raises(PermanentStepError) as caught:
        builtin.http_request({"url": answering_server["url"]}, ctx)
    assert caught.value.code == "http_redirects" and caught.value.details == {"location": "ftp://127.0.0.1/secret"}
    assert answering_server["requests"] == 1


def test_unknown_tool_fails_for_good():
    with pytest.raises(PermanentStepError) as caught:
        tools.get_tool("no.such.tool")
    assert caught.value.code == "unknown_tool"


def test_idempotency_key_is_stable_per_attempt(make_ctx):
    step = {"id": "e", "type": "tool", "tool": "echo"}
    first, again, second = make_ctx(step, attempt=1), make_ctx(step, attempt=1), make_ctx(step, attempt=2)
    assert first.idempotency_key == again.idempotency_key
    assert first.idempotency_key != second.idempotency_key


# --- the scripted provider ---


def test_scripted_without_script_echoes_the_prompt(make_ctx):
    step = {"id": "l", "type": "llm", "system": "Be brief.", "prompt": "Summarise {{ input.text }}"}
    ctx = make_ctx(step, template_context={"input": {"text": "the long ticket"}, "steps": {}})
    assert executors.execute(ctx) == {"text": "Summarise the long ticket", "model": "scripted"}
    # Tokens are words: in = system + prompt, out = the echoed prompt.
    assert ctx.usage == {"llm_calls": 1, "tokens_in": 6, "tokens_out": 4}


def test_scripted_replies_in_order_then_echoes(make_ctx):
    step = {
        "id": "ag",
        "type": "agent",
        "script": [
            "first answer",
            {
                "content": "thinking",
                "tool_calls": [{"name": "echo", "args": {"x": 1}}],
                "tokens_in": 11,
                "tokens_out": 7,
            },
        ],
    }
    ctx = make_ctx(step)
    provider = ScriptedProvider()
    messages = [{"role": "user", "content": "one two three"}]
    assert provider.chat("scripted", messages, [], ctx, 0) == Reply("first answer", [], 3, 2)
    assert provider.chat("scripted", messages, [], ctx, 1) == Reply(
        "thinking", [ToolCall("call_1_0", "echo", {"x": 1})], 11, 7
    )
    past_end = messages + [{"role": "assistant", "content": "x"}, {"role": "tool", "content": "tool says hi"}]
    reply = provider.chat("scripted", past_end, [], ctx, 2)
    assert reply.content == "tool says hi"
    assert reply.tool_calls == []


def test_provider_for_refuses_an_unknown_provider(make_ctx):
    ctx = make_ctx({"id": "l", "type": "llm", "prompt": "p"})
    assert isinstance(provider_for("scripted", ctx.settings)[0], ScriptedProvider)
    with pytest.raises(PermanentStepError) as caught:
        provider_for("mystery/model-1", ctx.settings)
    assert caught.value.code == "invalid_model"


# --- the agent loop ---


def _agent(script: list, tools_: list[str] | None = None, max_turns: int = 8) -> dict:
    return {
        "id": "ag",
        "type": "agent",
        "prompt": "Do {{ input.task }}",
        "tools": tools_ or ["echo"],
        "max_turns": max_turns,
        "script": script,
    }


def test_agent_calls_tools_then_answers(make_ctx):
    script = [
        {"tool_calls": [{"name": "echo", "args": {"text": "a"}}, {"name": "echo", "args": {"text": "b"}}]},
        {"tool_calls": [{"name": "echo", "args": {"text": "c"}}]},
        "all done",
    ]
    ctx = make_ctx(_agent(script), template_context={"input": {"task": "it"}, "steps": {}})
    result = agent.run(ctx)
    assert result["text"] == "all done"
    assert result["turns"] == 3
    assert result["tool_calls"] == [
        {"turn": 1, "name": "echo", "args": {"text": "a"}, "result": {"text": "a"}},
        {"turn": 1, "name": "echo", "args": {"text": "b"}, "result": {"text": "b"}},
        {"turn": 2, "name": "echo", "args": {"text": "c"}, "result": {"text": "c"}},
    ]
    assert ctx.usage["llm_calls"] == 3
    assert ctx.usage["tool_calls"] == 3


def test_agent_tool_results_go_back_to_the_model(make_ctx):
    # Past its script the scripted model echoes the last tool message: the answer is what it was sent.
    script = [{"tool_calls": [{"name": "echo", "args": {"text": "ping"}}]}]
    ctx = make_ctx(_agent(script), template_context={"input": {"task": "it"}, "steps": {}})
    result = agent.run(ctx)
    assert json.loads(result["text"]) == {"text": "ping"}
    assert result["turns"] == 2


def test_agent_call_to_an_unlisted_tool_is_answered_with_an_error(make_ctx):
    # `fail` is installed but not listed for this agent: it must not run.
    script = [{"tool_calls": [{"name": "fail", "args": {"message": "ran anyway"}}]}]
    ctx = make_ctx(_agent(script, tools_=["echo"]), template_context={"input": {"task": "it"}, "steps": {}})
    result = agent.run(ctx)
    assert "tool_calls" not in ctx.usage
    [call] = result["tool_calls"]
    assert call["name"] == "fail"
    assert call["result"] == {"error": "tool 'fail' is not available to this agent; available: ['echo']"}
    # The model was told (it echoes the last tool message once past its script).
    assert json.loads(result["text"]) == call["result"]
    assert result["turns"] == 2


def test_agent_sees_a_failing_tool_and_carries_on(make_ctx):
    script = [{"tool_calls": [{"name": "fail", "args": {"message": "flaky"}}]}, "recovered"]
    ctx = make_ctx(_agent(script, tools_=["fail"]), template_context={"input": {"task": "it"}, "steps": {}})
    result = agent.run(ctx)
    assert result["text"] == "recovered"
    assert result["tool_calls"][0]["result"] == {"error": "flaky", "code": "tool_failed"}


def test_agent_past_max_turns_fails_for_good(make_ctx):
    script = [{"tool_calls": [{"name": "echo", "args": {"n": i}}]} for i in range(5)]
    ctx = make_ctx(_agent(script, max_turns=3), template_context={"input": {"task": "it"}, "steps": {}})
    with pytest.raises(PermanentStepError) as caught:
        agent.run(ctx)
    assert caught.value.code == "max_turns_exceeded"
    assert caught.value.retryable is False
    assert ctx.usage["llm_calls"] == 3
    assert ctx.usage["tool_calls"] == 3


def test_agent_stops_when_the_run_is_cancelled(make_ctx):
    script = [{"tool_calls": [{"name": "echo", "args": {}}]}, "never"]
    ctx = make_ctx(_agent(script), template_context={"input": {"task": "it"}, "steps": {}})
    ctx.stop.set()
    with pytest.raises(StepCancelled):
        agent.run(ctx)
    assert ctx.usage == {}


def test_agent_tool_cancelled_mid_call_stops_the_step(make_ctx):
    script = [{"tool_calls": [{"name": "sleep", "args": {"seconds": 20}}]}, "never"]
    ctx = make_ctx(_agent(script, tools_=["sleep"]), template_context={"input": {"task": "it"}, "steps": {}})
    stopper = _stop_once_waiting(ctx)
    with pytest.raises(StepCancelled):
        agent.run(ctx)
    assert ctx.usage["llm_calls"] == 1
    stopper.join(WAIT_S)


def test_waiting_step_types_do_not_run_on_a_worker(make_ctx):
    ctx = make_ctx({"id": "r", "type": "approval"})
    with pytest.raises(PermanentStepError) as caught:
        executors.execute(ctx)
    assert caught.value.code == "invalid_step"
