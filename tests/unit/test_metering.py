"""The price table: credits for one attempt's usage, with per-model and per-provider overrides."""

from __future__ import annotations

import pytest

from orchestrator import metering
from orchestrator.settings import PriceTable, Settings

TABLE = PriceTable(
    steps=1.0, tool_calls=0.5, llm_calls=0.25, tokens_in=0.01, tokens_out=0.02,
    models={"openai": {"tokens_in": 0.1}, "openai/gpt-big": {"tokens_in": 1.0, "tokens_out": 2.0}},
)
USAGE = {"llm_calls": 2, "tokens_in": 100, "tokens_out": 10, "tool_calls": 3}


@pytest.mark.parametrize("model, done, expected", [
    (None, True, 2 * 0.25 + 100 * 0.01 + 10 * 0.02 + 3 * 0.5 + 1.0),
    (None, False, 2 * 0.25 + 100 * 0.01 + 10 * 0.02 + 3 * 0.5),
    ("scripted", False, 2 * 0.25 + 100 * 0.01 + 10 * 0.02 + 3 * 0.5),
    ("openai", False, 2 * 0.25 + 100 * 0.1 + 10 * 0.02 + 3 * 0.5),  # the provider's override
    ("openai/gpt-4o", False, 2 * 0.25 + 100 * 0.1 + 10 * 0.02 + 3 * 0.5),  # a model of that provider
    ("openai/gpt-big", False, 2 * 0.25 + 100 * 1.0 + 10 * 2.0 + 3 * 0.5),  # the exact model wins
])
def test_credits_follow_the_price_table(model, done, expected):
    assert metering.credits(TABLE, USAGE, model, done) == pytest.approx(expected)


def test_no_prices_cost_nothing():
    assert metering.credits(PriceTable(), USAGE, "openai", True) == 0


def test_the_price_table_is_read_from_json_and_refuses_nonsense(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_PRICES", '{"tokens_in": 0.5, "models": {"scripted": {"tokens_out": 2}}}')
    table = Settings().prices
    assert table.tokens_in == 0.5 and table.models["scripted"].tokens_out == 2
    for bad in ('{"tokens_in": -1}', '{"tokenz": 1}', '{"models": {"x": {"bogus": 1}}}', "not json"):
        monkeypatch.setenv("SWITCHYARD_PRICES", bad)
        with pytest.raises(ValueError):
            Settings()
