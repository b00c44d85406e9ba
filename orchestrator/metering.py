"""Metering: what one step attempt's usage costs in credits, by the configured price table. Pure.

A price table (``Settings.prices``, JSON in ``SWITCHYARD_PRICES``) gives credits per step finished,
per tool call, per LLM call and per token in and out; ``models`` overrides the LLM prices for one
model (``openai/gpt-4o``) or one provider (``openai``), the exact model name winning.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.settings import ModelPrices, PriceTable

LLM_KEYS = ("llm_calls", "tokens_in", "tokens_out")
# Credits are rounded so that sums of many steps stay readable and comparable.
PRECISION = 6


def model_prices(table: PriceTable, model: str | None) -> dict[str, float]:
    """The LLM unit prices that apply to ``model`` (None for steps that call no model)."""
    prices = {key: getattr(table, key) for key in LLM_KEYS}
    if model:
        provider = model.split("/", 1)[0]
        for name in (provider, model):  # the exact model overrides its provider
            override: ModelPrices | None = table.models.get(name)
            if override is not None:
                prices.update({k: v for k, v in override.model_dump().items() if v is not None})
    return prices


def credits(table: PriceTable, usage: Mapping[str, float], model: str | None, step_done: bool) -> float:
    """Credits for one attempt's ``usage``; ``step_done`` adds the per-step price (the step finished)."""
    prices = model_prices(table, model)
    total = sum(prices[key] * usage.get(key, 0) for key in LLM_KEYS)
    total += table.tool_calls * usage.get("tool_calls", 0)
    total += table.steps * int(step_done)
    return round(total, PRECISION)
