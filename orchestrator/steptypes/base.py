"""What a step type is: its definition model, how it runs (on a worker, or parked waiting) — pure.

A waiting type's ``park`` says how the step waits once the scheduler parks it and ``on_due`` what its
due time passing does; the scheduler does the writing. Nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from orchestrator import templates
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.errors import StepError


@dataclass(frozen=True)
class Parking:
    """How a waiting step waits once the scheduler parks it."""

    waits_on: str                       # "approval" | "question" | "event" | "timer" (WaitsOn values)
    due_in_s: float | None = None       # a due time this many seconds from now (timer: duration_s; wait_event: timeout_s)
    correlation_key: str | None = None  # wait_event: the rendered key, cut to 200 chars
    request: str | None = None          # approval: the rendered prompt (may be None); question: the rendered text
    error: ErrorInfo | None = None      # its templates failed: the step fails at once with this (wait_event's key)


class StepType:
    """A base class with defaults; each type module subclasses it and makes one instance."""

    name: str                           # "tool"
    definition: type[BaseModel]         # the pydantic model, with `type: Literal[name]`
    label: str                          # short human label for the UI graph, e.g. "Tool", "Approval"
    waits_on: str | None = None         # None: runs on a worker; else what it waits on when parked
    # Worker types: "package.module" whose ``execute(ctx)`` runs an attempt, or "package.module:function".
    executor: str | None = None
    renders_on_park: bool = False       # park() needs the run's template context (timer: False)

    @property
    def waiting(self) -> bool:
        """Whether the scheduler parks steps of this type instead of dispatching them to a worker."""
        return self.waits_on is not None

    def park(self, step: Any, context: Mapping[str, Any] | None) -> Parking:
        """How ``step`` waits; ``context`` is the run's template context when renders_on_park, else None.
        Pure. Raises TypeError for a type that runs on a worker."""
        if self.waits_on is None:
            raise TypeError(f"step type {self.name!r} runs on a worker; it is never parked")
        return Parking(self.waits_on)

    def on_due(self, step: Any) -> Outcome | None:
        """What the step's due time passing does while it waits: an outcome to apply, or None (nothing)."""
        return None

    def problems(self, step: Any, index: int, known_tools: frozenset[str]) -> list[str]:
        """What publishing a definition with ``step`` (at ``steps.{index}``) must refuse beyond its
        schema and template syntax, e.g. an unknown tool; empty if nothing."""
        return []

    def __repr__(self) -> str:
        return f"<StepType {self.name}>"


def render_text(template: str | None, context: Mapping[str, Any] | None) -> str | None:
    """``template`` rendered as text for a person to read; a template error does not fail the step
    but shows in the text, so the person sees what went wrong. None stays None."""
    if template is None:
        return None
    try:
        return str(templates.render(template, context))
    except StepError as exc:
        return f"{template} (template error: {exc.message})"
