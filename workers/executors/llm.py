"""`llm` steps: one model call with the rendered prompt."""

from __future__ import annotations

from typing import Any

from orchestrator import ratelimits, templates
from workers import ratelimit
from workers.context import BudgetExceeded, StepContext, Suspend
from workers.providers import ProviderBusy, Reply, provider_for


def run(ctx: StepContext) -> Any:
    messages = initial_messages(ctx)
    try:
        reply = call_model(ctx, messages, [], turn=0)
    except BudgetExceeded as exc:
        raise Suspend("budget", str(exc), {"kind": "budget"}) from None
    except ratelimit.RateLimited as limited:
        raise limited.suspend({"kind": "rate_limit"}) from None
    return {"text": reply.content, "model": ctx.step.model}


def initial_messages(ctx: StepContext) -> list[dict]:
    messages = []
    if ctx.step.system:
        messages.append({"role": "system", "content": templates.render(ctx.step.system, ctx.template_context)})
    messages.append({"role": "user", "content": templates.render(ctx.step.prompt, ctx.template_context)})
    return messages


def estimate_tokens(messages: list[dict]) -> int:
    """The prompt's size in words: what the scripted model counts, and a rough stand-in for a real
    model's tokens, so a budget can stop a call before it is made."""
    return sum(len(str(m.get("content") or "").split()) for m in messages)


def call_model(ctx: StepContext, messages: list[dict], tool_specs: list[dict], turn: int) -> Reply:
    """One model call, counted in the step's usage (calls, tokens in and out from the provider's reply).
    Raises RateLimited if a rate limit has no room for it or the provider answered 429 with Retry-After."""
    ctx.check()
    words = estimate_tokens(messages)
    ctx.check_budget("tokens", words)
    provider, model_name = provider_for(ctx.step.model, ctx.settings)
    provider_name = ctx.step.model.partition("/")[0]
    grant = ratelimit.admit(ctx, f"{provider_name}/{model_name}", ratelimits.estimate_tokens(words))
    try:
        reply = provider.chat(model_name, messages, tool_specs, ctx, turn)
    except ProviderBusy as busy:
        ratelimit.settle(ctx, grant, 0)
        raise ratelimit.provider_busy(ctx, busy.retry_after_s, busy.status) from None
    except BaseException:
        ratelimit.settle(ctx, grant, 0)  # no reply, no usage reported: the request alone is charged
        raise
    ratelimit.settle(ctx, grant, reply.tokens_in + reply.tokens_out)
    ctx.count("llm_calls")
    ctx.count("tokens_in", reply.tokens_in)
    ctx.count("tokens_out", reply.tokens_out)
    return reply
