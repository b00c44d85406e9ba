"""`llm` steps: one model call with the rendered prompt."""

from __future__ import annotations

from typing import Any

from orchestrator import templates
from workers.context import StepContext
from workers.providers import Reply, provider_for


def run(ctx: StepContext) -> Any:
    messages = initial_messages(ctx)
    reply = call_model(ctx, messages, [], turn=0)
    return {"text": reply.content, "model": ctx.step.model}


def initial_messages(ctx: StepContext) -> list[dict]:
    messages = []
    if ctx.step.system:
        messages.append({"role": "system", "content": templates.render(ctx.step.system, ctx.template_context)})
    messages.append({"role": "user", "content": templates.render(ctx.step.prompt, ctx.template_context)})
    return messages


def call_model(ctx: StepContext, messages: list[dict], tool_specs: list[dict], turn: int) -> Reply:
    """One model call, counted in the step's usage (calls, tokens in and out from the provider's reply)."""
    ctx.check()
    provider, model_name = provider_for(ctx.step.model, ctx.settings)
    reply = provider.chat(model_name, messages, tool_specs, ctx, turn)
    ctx.count("llm_calls")
    ctx.count("tokens_in", reply.tokens_in)
    ctx.count("tokens_out", reply.tokens_out)
    return reply
