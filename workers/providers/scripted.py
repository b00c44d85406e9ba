"""A deterministic, offline model: the step's ``script`` lists its replies in order.

An entry is a string (a final answer) or ``{"content", "tool_calls": [{"name", "args"}], "tokens_in",
"tokens_out"}``. With no script, or past its end, it echoes the last user or tool message. Token
counts are words, unless the entry says otherwise, so usage is predictable in tests.
"""

from __future__ import annotations

import json

from workers.providers import Reply, ToolCall


def _words(text: str) -> int:
    return len(text.split())


class ScriptedProvider:
    def chat(self, model: str, messages: list[dict], tools: list[dict], ctx, turn: int) -> Reply:
        prompt_text = " ".join(str(m.get("content") or "") for m in messages)
        script = getattr(ctx.step, "script", None) or []
        if turn >= len(script):
            last = next((m for m in reversed(messages) if m["role"] in ("user", "tool")), messages[-1])
            content = str(last.get("content") or "")
            return Reply(content, [], _words(prompt_text), _words(content))
        entry = script[turn]
        if isinstance(entry, str):
            return Reply(entry, [], _words(prompt_text), _words(entry))
        calls = [
            ToolCall(id=f"call_{turn}_{i}", name=c["name"], args=dict(c.get("args") or {}))
            for i, c in enumerate(entry.tool_calls)
        ]
        content = entry.content
        out_text = (content or "") + json.dumps([c["name"] for c in entry.tool_calls]) * bool(calls)
        return Reply(
            content,
            calls,
            entry.tokens_in if entry.tokens_in is not None else _words(prompt_text),
            entry.tokens_out if entry.tokens_out is not None else _words(out_text),
        )
