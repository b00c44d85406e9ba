"""Event triggers, the pure part: a definition's ``triggers``, their checks at publish, and matching.

``{"event": "ticket.created", "when": "event.payload.priority == 'high'", "input": {"ticket":
"{{ event.payload.id }}"}}``: POST /events with that name starts a run of the workflow when ``when``
(a sandboxed Jinja2 expression, as a step's ``when``) is truthy; the run's input is ``input`` rendered
over the event, or the event's payload when the trigger has no ``input``. Both see one name, ``event``:
``{"id", "name", "payload", "correlation_key"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from orchestrator import templates
from orchestrator.errors import PermanentStepError
from orchestrator.steptypes.fields import StrictModel

NAMES = frozenset({"event"})


class Trigger(StrictModel):
    """One entry of a definition's ``triggers``."""

    event: str = Field(min_length=1, max_length=200, description="The event name that starts a run.")
    when: str | None = Field(default=None, min_length=1, max_length=2000,
                             description="An expression over `event`; the run starts only when it is truthy.")
    input: Any = Field(default=None, description="The run's input, templated over `event` (default: its payload).")


def problems(triggers: Sequence[Trigger]) -> list[str]:
    """Why triggers are refused at publish: a ``when`` that does not parse or reads something other than
    ``event``, an ``input`` template with bad syntax or reading something other than ``event``."""
    found: list[str] = []
    for i, trigger in enumerate(triggers):
        where = f"triggers.{i}"
        if trigger.when is not None:
            syntax = templates.expression_problems(trigger.when, f"{where}.when", set())
            found += syntax or _names_problem(f"{where}.when", templates.referenced_names("{{ (" + trigger.when + ") }}"))
        if trigger.input is not None:
            syntax = templates.syntax_problems(trigger.input, f"{where}.input")
            found += syntax or _names_problem(f"{where}.input", templates.referenced_names(trigger.input))
    return found


def _names_problem(where: str, names: frozenset[str]) -> list[str]:
    other = sorted(names - NAMES)
    return [f"{where}: reads {other}; a trigger sees only `event`"] if other else []


@dataclass(frozen=True)
class Event:
    """An event as triggers see it."""

    id: str
    name: str
    payload: Any
    correlation_key: str | None

    def context(self) -> dict[str, Any]:
        return {"event": {"id": self.id, "name": self.name, "payload": self.payload,
                          "correlation_key": self.correlation_key}}


@dataclass(frozen=True)
class Match:
    """What a workflow's triggers make of an event: the run's input if one matched, or the error of
    the first trigger that failed to evaluate (and none matched)."""

    matched: bool
    input: Any = None
    error: str | None = None


def match(triggers: Sequence[Trigger], event: Event) -> Match:
    """The first of ``triggers`` on the event's name whose ``when`` holds, and the input it renders.

    A trigger whose expression or input template fails is passed over; its error is reported if no
    other trigger matched."""
    error = None
    for trigger in triggers:
        if trigger.event != event.name:
            continue
        try:
            if trigger.when is not None and not templates.evaluate(trigger.when, event.context()):
                continue
            run_input = event.payload if trigger.input is None else templates.render(trigger.input, event.context())
        except PermanentStepError as exc:
            error = error or str(exc)
            continue
        return Match(True, run_input)
    return Match(False, error=error)
