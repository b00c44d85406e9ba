"""LLM providers: ``scripted`` (deterministic, offline) and ``openai`` (any OpenAI-compatible endpoint).

A step's ``model`` picks the provider: ``scripted``, ``openai`` (the configured default model) or
``openai/<model name>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.errors import PermanentStepError


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0


class ProviderBusy(Exception):  # noqa: N818 - control flow
    """The provider answered 429 with Retry-After: the call may be made again that many seconds on."""

    def __init__(self, retry_after_s: float, status: int = 429):
        super().__init__(f"the provider answered {status}; retry after {retry_after_s:g}s")
        self.retry_after_s, self.status = retry_after_s, status


class Provider(Protocol):
    def chat(self, model: str, messages: list[dict], tools: list[dict], ctx, turn: int) -> Reply:
        """One model call. ``tools`` are JSON-schema function specs; ``turn`` counts from 0."""


def provider_for(model: str, settings) -> tuple[Provider, str]:
    """The provider and model name for a step's ``model`` field."""
    from workers.providers import openai, scripted

    name, _, model_name = model.partition("/")
    if name == "scripted":
        return scripted.ScriptedProvider(), "scripted"
    if name == "openai":
        return openai.OpenAIProvider(settings), model_name or settings.openai_model
    raise PermanentStepError(f"unknown model provider {name!r}; use 'scripted' or 'openai[/model]'", code="invalid_model")
