"""Any OpenAI-compatible chat completions endpoint, over httpx.

Tool names are mapped to the function-name alphabet the API accepts (``http.request`` becomes
``http__request``) and back.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime

import httpx

from orchestrator.errors import PermanentStepError, RetryableStepError
from workers.providers import ProviderBusy, Reply, ToolCall


def wire_name(tool: str) -> str:
    return tool.replace(".", "__")


def tool_name(wire: str) -> str:
    return wire.replace("__", ".")


class OpenAIProvider:
    def __init__(self, settings):
        self.settings = settings

    def chat(self, model: str, messages: list[dict], tools: list[dict], ctx, turn: int) -> Reply:
        body: dict = {"model": model, "messages": [_wire_message(m) for m in messages]}
        if tools:
            body["tools"] = [
                {"type": "function", "function": {**t, "name": wire_name(t["name"])}} for t in tools
            ]
        headers = {"Content-Type": "application/json"}
        if self.settings.openai_api_key:
            headers["Authorization"] = f"Bearer {self.settings.openai_api_key}"
        url = self.settings.openai_base_url.rstrip("/") + "/chat/completions"
        try:
            response = httpx.post(
                url, json=body, headers=headers, timeout=min(self.settings.openai_timeout_s, max(ctx.remaining_s, 1))
            )
        except httpx.HTTPError as exc:
            raise RetryableStepError(f"LLM endpoint {url} unreachable: {exc}", code="llm_unavailable") from exc
        retry_after = retry_after_s(response.headers.get("Retry-After"))
        if response.status_code == 429 and retry_after is not None:
            raise ProviderBusy(retry_after, response.status_code)
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableStepError(f"LLM endpoint answered {response.status_code}", code="llm_unavailable")
        if response.status_code >= 400:
            raise PermanentStepError(
                f"LLM endpoint refused the request ({response.status_code}): {response.text[:300]}", code="llm_error"
            )
        try:
            data = response.json()
            message = data["choices"][0]["message"]
            usage = data.get("usage") or {}
            calls = [
                ToolCall(c["id"], tool_name(c["function"]["name"]), json.loads(c["function"].get("arguments") or "{}"))
                for c in message.get("tool_calls") or []
            ]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RetryableStepError(f"LLM endpoint sent a reply that is not a chat completion: {exc}", code="llm_error") from exc
        return Reply(message.get("content"), calls, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


def retry_after_s(header: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's wait in seconds (delay-seconds or an HTTP date); None if absent or unreadable."""
    if not header:
        return None
    try:
        return max(float(header), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


def _wire_message(message: dict) -> dict:
    wire = dict(message)
    if "tool_calls" in wire:
        wire["tool_calls"] = [
            {"id": c["id"], "type": "function",
             "function": {"name": wire_name(c["name"]), "arguments": json.dumps(c["args"])}}
            for c in wire["tool_calls"]
        ]
    return wire
