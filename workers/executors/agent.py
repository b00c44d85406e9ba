"""`agent` steps: a tool-calling loop of at most ``max_turns`` model calls.

Each turn the model either answers (the loop ends with that answer) or asks for tool calls, whose
results go back to it. A call to a tool the step does not list is answered with an error message
to the model, not run; so is a call the policy denies. Three things suspend the step — the
conversation so far is checkpointed, the worker is given back, and the next dispatch goes on from
there: ``human.ask`` (the person's answer becomes the tool's result), a call the policy sends for
approval (approved, it runs; rejected, the model is told), and a call or model turn that would go
over the run's budget (it is made once an operator raised the budget). A model turn that an LLM rate
limit holds back suspends the same way until the limit has room. The loop checks the stop
flag every turn and before every tool call.

Which arguments are templates: the definition's own text is, model output is not. The ``scripted``
model's tool calls are written in the definition (its ``script``), so their arguments are rendered
against the run's context, as a ``tool`` step's ``args`` are; the calls a real model makes are data and
go to the tool as the model wrote them (rendering them would let the model's text, and whatever text
reached the model, run template expressions).
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator import templates
from orchestrator.core.vocabulary import ErrorCode
from orchestrator.errors import PermanentStepError, StepError
from workers import ratelimit, tools
from workers.context import ApprovalNeeded, BudgetExceeded, StepContext, Suspend
from workers.executors.llm import call_model, initial_messages
from workers.executors.tool import call_tool

HUMAN_ASK = "human.ask"
SCRIPTED = "scripted"  # the provider whose replies, tool calls included, are the definition's text


class _Loop:
    """The conversation of one agent step: what a checkpoint saves and a resume restores."""

    def __init__(self, messages: list, transcript: list, next_turn: int):
        self.messages, self.transcript, self.next_turn = messages, transcript, next_turn

    def suspend(self, kind: str, text: str, pending: list[dict], call: dict | None = None) -> Suspend:
        checkpoint = {"kind": kind, "messages": self.messages, "transcript": self.transcript,
                      "next_turn": self.next_turn, "pending": pending}
        return Suspend(kind, text, checkpoint, call)

    def answer(self, call: dict, result: Any) -> None:
        self.transcript.append({"turn": self.next_turn, "name": call["name"], "args": call["args"], "result": result})
        self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result, default=str)})


def run(ctx: StepContext) -> Any:
    step = ctx.step
    specs = [tools.describe(name) for name in step.tools]  # the tools' descriptions and argument schemas
    loop = _resume(ctx, ctx.checkpoint) if ctx.checkpoint else _Loop(initial_messages(ctx), [], 0)
    while loop.next_turn < step.max_turns:
        turn = loop.next_turn
        try:
            reply = call_model(ctx, loop.messages, specs, turn)
        except BudgetExceeded as exc:
            raise loop.suspend("budget", str(exc), []) from None
        except ratelimit.RateLimited as limited:  # the turn is made again after the wait
            raise limited.suspend(loop.suspend("rate_limit", limited.text, []).checkpoint) from None
        if not reply.tool_calls:
            return {"text": reply.content, "turns": turn + 1, "tool_calls": loop.transcript}
        calls = [{"id": c.id, "name": c.name, "args": _args(ctx, c.args)} for c in reply.tool_calls]
        loop.messages.append({"role": "assistant", "content": reply.content, "tool_calls": calls})
        loop.next_turn = turn + 1
        _run_calls(ctx, loop, calls)
    raise PermanentStepError(f"the agent did not finish within max_turns={step.max_turns}", code="max_turns_exceeded")


def _args(ctx: StepContext, args: dict) -> dict:
    """A call's arguments as the tool gets them: rendered if the definition wrote them (the scripted
    model's calls), as they are if a model produced them (see the module's docstring)."""
    if ctx.step.model.partition("/")[0] == SCRIPTED:
        return templates.render(args, ctx.template_context)
    return args


def _run_calls(ctx: StepContext, loop: _Loop, calls: list[dict]) -> None:
    for i, call in enumerate(calls):
        if call["name"] == HUMAN_ASK and HUMAN_ASK in ctx.step.tools:
            question = str(call["args"].get("question") or call["args"])
            raise loop.suspend("question", question, calls[i:])
        try:
            result = _tool_result(ctx, call["name"], call["args"])
        except ApprovalNeeded as gate:
            raise loop.suspend("approval", gate.text(), calls[i:], gate.call()) from None
        except BudgetExceeded as exc:
            raise loop.suspend("budget", str(exc), calls[i:]) from None
        loop.answer(call, result)


def _resume(ctx: StepContext, checkpoint: dict) -> _Loop:
    """Go on from a suspension: answer the call it stopped at, then make the calls after it."""
    loop = _Loop(checkpoint["messages"], checkpoint["transcript"], checkpoint["next_turn"])
    pending = list(checkpoint.get("pending", []))
    kind = checkpoint.get("kind")
    if kind == "question":
        loop.answer(pending.pop(0), {"answer": checkpoint.get("answer")})
    elif kind == "approval":
        call, verdict = pending.pop(0), checkpoint.get("approval") or {}
        if verdict.get("approved"):
            loop.answer(call, _tool_result(ctx, call["name"], call["args"], approved_by=verdict))
        else:
            loop.answer(call, {"error": f"the approver refused this call: {verdict.get('comment') or 'no reason given'}",
                               "code": ErrorCode.APPROVAL_REJECTED.value})
    _run_calls(ctx, loop, pending)
    return loop


def _tool_result(ctx: StepContext, name: str, args: dict, approved_by: dict | None = None) -> Any:
    if name not in ctx.step.tools:
        return {"error": f"tool {name!r} is not available to this agent; available: {ctx.step.tools}"}
    try:
        return call_tool(ctx, name, args, approved_by=approved_by)
    except StepError as exc:
        if exc.code in (ErrorCode.RUN_STOPPED, ErrorCode.TIMEOUT):
            raise
        # The model sees the tool's failure (or the policy's refusal) and may recover; the step goes on.
        return {"error": exc.message, "code": exc.code}
