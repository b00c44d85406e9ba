"""`agent` steps: a model calling tools in a loop, on a worker."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchestrator import registry
from orchestrator.steptypes.base import StepType
from orchestrator.steptypes.fields import ScriptEntry, StepFields


class AgentStep(StepFields):
    type: Literal["agent"]
    model: str = "scripted"
    prompt: str = "{{ input }}"
    system: str | None = None
    tools: list[str] = []
    max_turns: int = Field(default=8, ge=1, le=100)
    script: list[ScriptEntry] | None = None


class Agent(StepType):
    name = "agent"
    definition = AgentStep
    label = "Agent"
    executor = "workers.executors.agent:run"

    def problems(self, step: AgentStep, index: int, known_tools: frozenset[str]) -> list[str]:
        """Every tool the agent may call must be known; the agent-only tools (human.ask) are too."""
        allowed = known_tools | registry.AGENT_ONLY_TOOLS
        return [
            f"steps.{index}.tools: unknown tool {name!r}; known tools: {sorted(known_tools)}"
            for name in step.tools
            if name not in allowed
        ]


STEP_TYPE = Agent()
