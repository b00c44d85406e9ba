"""`agent` steps: a tool-calling loop of at most ``max_turns`` model calls.

Each turn the model either answers (the loop ends with that answer) or asks for tool calls, whose
results go back to it. A call to a tool the step does not list is answered with an error message
to the model, not run. The loop checks the stop flag every turn and before every tool call.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import PermanentStepError, StepError
from workers.context import StepContext
from workers.executors.llm import call_model, initial_messages
from workers.executors.tool import call_tool


def run(ctx: StepContext) -> Any:
    step = ctx.step
    messages = initial_messages(ctx)
    specs = [{"name": name, "description": f"the {name} tool", "parameters": {"type": "object"}} for name in step.tools]
    transcript: list[dict] = []
    for turn in range(step.max_turns):
        reply = call_model(ctx, messages, specs, turn)
        if not reply.tool_calls:
            return {"text": reply.content, "turns": turn + 1, "tool_calls": transcript}
        messages.append(
            {"role": "assistant", "content": reply.content,
             "tool_calls": [{"id": c.id, "name": c.name, "args": c.args} for c in reply.tool_calls]}
        )
        for call in reply.tool_calls:
            result = _tool_result(ctx, call.name, call.args)
            transcript.append({"turn": turn + 1, "name": call.name, "args": call.args, "result": result})
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result, default=str)})
    raise PermanentStepError(f"the agent did not finish within max_turns={step.max_turns}", code="max_turns_exceeded")


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
