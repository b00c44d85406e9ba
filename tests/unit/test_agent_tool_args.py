"""Which tool-call arguments of an agent are templates: those the definition wrote (the scripted model's
calls, like a `tool` step's args) are rendered; those a model produced at run time are passed on as data."""

from __future__ import annotations

from orchestrator import artifacts
from orchestrator.settings import Settings
from workers.executors import agent, llm
from workers.providers import Reply, ToolCall

CONTEXT = {"input": {"ticket_id": "T-42"}, "steps": {}}
TEMPLATE = "Ticket {{ input.ticket_id }}"


def _agent(model: str, script: list | None = None) -> dict:
    step = {"id": "ag", "type": "agent", "model": model, "prompt": "Handle {{ input.ticket_id }}",
            "tools": ["file.write", "echo"]}
    return {**step, "script": script} if script is not None else step


def _on_disk(make_ctx, step: dict, tmp_path):
    """A context whose output files go under ``tmp_path``, for a run id the file store accepts."""
    ctx = make_ctx(step, template_context=CONTEXT)
    ctx.run_id, ctx.settings = "run_0a1b", Settings(data_dir=tmp_path)
    return ctx


def _written(ctx, name: str) -> str:
    return artifacts.store(ctx.settings).path(ctx.run_id, name).read_text()


def test_a_scripted_tool_call_is_rendered_like_a_tool_steps_args(make_ctx, tmp_path):
    script = [{"tool_calls": [{"name": "file.write", "args": {"name": "note.txt", "text": TEMPLATE}}]}, "done"]
    ctx = _on_disk(make_ctx, _agent("scripted", script), tmp_path)
    result = agent.run(ctx)
    assert _written(ctx, "note.txt") == "Ticket T-42"
    # The transcript (and the conversation the model sees) holds the arguments the tool was called with.
    assert result["tool_calls"][0]["args"] == {"name": "note.txt", "text": "Ticket T-42"}


class _Model:
    """A real model's stand-in: its first reply asks for a call whose text looks like a template."""

    def __init__(self):
        self.seen: list[list[dict]] = []

    def chat(self, model, messages, tools, ctx, turn):
        self.seen.append(list(messages))
        if turn == 0:
            return Reply(None, [ToolCall("call_1", "file.write", {"name": "note.txt", "text": TEMPLATE}),
                                ToolCall("call_2", "echo", {"text": "{{ input }}"})], 5, 5)
        return Reply("done", [], 5, 1)


def test_a_model_produced_tool_call_is_passed_through_literally(make_ctx, tmp_path, monkeypatch):
    model = _Model()
    monkeypatch.setattr(llm, "provider_for", lambda name, settings: (model, "fake"))
    ctx = _on_disk(make_ctx, _agent("openai/fake"), tmp_path)
    result = agent.run(ctx)
    assert result["text"] == "done"
    assert _written(ctx, "note.txt") == TEMPLATE
    assert result["tool_calls"][1]["result"] == {"text": "{{ input }}"}
    # The model's own prompt is the definition's text, rendered.
    assert model.seen[0][-1]["content"] == "Handle T-42"
