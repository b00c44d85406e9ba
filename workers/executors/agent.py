"""`agent` steps: a tool-calling loop of at most ``max_turns`` model calls.

Each turn the model either answers (the loop ends with that answer) or asks for tool calls, whose
results go back to it. A call to a tool the step does not list is answered with an error message
to the model, not run. ``human.ask`` suspends the step: the conversation so far is checkpointed,
the worker is given back, and the next dispatch goes on with the person's answer as the tool's
result. The loop checks the stop flag every turn and before every tool call.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import PermanentStepError, StepError
from workers.context import StepContext, Suspend
from workers.executors.llm import call_model, initial_messages
from workers.executors.tool import call_tool

HUMAN_ASK = "human.ask"


def run(ctx: StepContext) -> Any:
    step = ctx.step
    specs = [{"name": name, "description": f"the {name} tool", "parameters": {"type": "object"}} for name in step.tools]
    if ctx.checkpoint:
        messages, transcript, first_turn = _resume(ctx, ctx.checkpoint)
    else:
        messages, transcript, first_turn = initial_messages(ctx), [], 0
    for turn in range(first_turn, step.max_turns):
        reply = call_model(ctx, messages, specs, turn)
        if not reply.tool_calls:
            return {"text": reply.content, "turns": turn + 1, "tool_calls": transcript}
        calls = [{"id": c.id, "name": c.name, "args": c.args} for c in reply.tool_calls]
        messages.append({"role": "assistant", "content": reply.content, "tool_calls": calls})
        _run_calls(ctx, calls, messages, transcript, turn)
    raise PermanentStepError(f"the agent did not finish within max_turns={step.max_turns}", code="max_turns_exceeded")


def _run_calls(ctx: StepContext, calls: list[dict], messages: list, transcript: list, turn: int) -> None:
    for i, call in enumerate(calls):
        if call["name"] == HUMAN_ASK and HUMAN_ASK in ctx.step.tools:
            question = str(call["args"].get("question") or call["args"])
            raise Suspend(question, {
                "messages": messages, "transcript": transcript, "turn": turn,
                "asking": call, "remaining_calls": calls[i + 1:],
            })
        result = _tool_result(ctx, call["name"], call["args"])
        transcript.append({"turn": turn + 1, "name": call["name"], "args": call["args"], "result": result})
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result, default=str)})


def _resume(ctx: StepContext, checkpoint: dict) -> tuple[list, list, int]:
    """Continue a suspended loop: the answer is the result of the pending human.ask call."""
    messages, transcript, turn = checkpoint["messages"], checkpoint["transcript"], checkpoint["turn"]
    asking, answer = checkpoint["asking"], checkpoint.get("answer")
    transcript.append({"turn": turn + 1, "name": HUMAN_ASK, "args": asking["args"], "result": {"answer": answer}})
    messages.append({"role": "tool", "tool_call_id": asking["id"], "content": json.dumps({"answer": answer})})
    _run_calls(ctx, checkpoint.get("remaining_calls", []), messages, transcript, turn)
    return messages, transcript, turn + 1


def _tool_result(ctx: StepContext, name: str, args: dict) -> Any:
    if name not in ctx.step.tools:
        return {"error": f"tool {name!r} is not available to this agent; available: {ctx.step.tools}"}
    try:
        return call_tool(ctx, name, args)
    except StepError as exc:
        if exc.code in ("run_stopped", "timeout"):
            raise
        # The model sees the tool's failure and may recover; the step does not fail for it.
        return {"error": exc.message, "code": exc.code}
