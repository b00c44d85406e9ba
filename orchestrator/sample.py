"""The sample workflow `make run` publishes: parallel branches, a join, an LLM step and an agent."""

from __future__ import annotations

SAMPLE_WORKFLOW_ID = "triage"

SAMPLE_DEFINITION = {
    "name": "Triage ticket",
    "kind": "workflow",
    "input_schema": {
        "type": "object",
        "required": ["ticket"],
        "properties": {"ticket": {"type": "string", "minLength": 1}},
    },
    "defaults": {"retry": {"max_attempts": 3, "backoff": "exponential", "initial_delay_s": 1, "max_delay_s": 30},
                 "timeout_s": 120},
    "steps": [
        {"id": "fetch", "type": "tool", "tool": "echo", "args": {"text": "{{ input.ticket }}"}},
        {"id": "classify", "type": "llm", "needs": ["fetch"], "model": "scripted",
         "prompt": "Classify: {{ steps.fetch.output.text }}", "script": ["billing"]},
        {"id": "lookup", "type": "tool", "needs": ["fetch"], "tool": "sleep", "args": {"seconds": 0.5}},
        {"id": "flaky", "type": "tool", "needs": ["fetch"], "tool": "fail",
         "args": {"message": "transient upstream error", "until_attempt": 2},
         "retry": {"max_attempts": 3, "initial_delay_s": 0.5, "jitter": False}},
        {"id": "summarise", "type": "agent", "needs": ["classify", "lookup", "flaky"], "model": "scripted",
         "prompt": "Ticket in {{ steps.classify.output.text }}: {{ input.ticket }}", "tools": ["echo"],
         "max_turns": 4,
         "script": [{"tool_calls": [{"name": "echo", "args": {"note": "checked the account"}}]},
                    "Routed to billing with a summary."]},
    ],
}
