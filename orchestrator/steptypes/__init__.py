"""The step types a definition may use, one module each, in one registry.

A type is a ``StepType`` (base.py): its pydantic definition model, its UI label, and either the
worker executor that runs it or what it waits on once the scheduler parks it. Adding a type is one
module and a ``register`` call; the definition schema (orchestrator.definitions), the scheduler's
waiting types (orchestrator.dag), the workers' dispatch and the UI read it from here.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from types import MappingProxyType

from orchestrator.steptypes import agent, approval, llm, question, timer, tool, wait_event, workflow
from orchestrator.steptypes.base import Parking, StepType

__all__ = ["Parking", "StepType", "find", "get", "names", "on_change", "register", "types",
           "unregister", "waiting_types"]

_types: dict[str, StepType] = {}
# Type name -> what it waits on, for the waiting types; changed in place so views of it stay live.
_waiting: dict[str, str] = {}
_waiting_view = MappingProxyType(_waiting)
_listeners: list[Callable[[], None]] = []


def register(step_type: StepType) -> StepType:
    """Add ``step_type`` after those registered so far and tell the listeners (the definition schema
    is rebuilt). Raises ValueError if its name is taken or it is not well formed."""
    _check(step_type)
    if step_type.name in _types:
        raise ValueError(f"step type {step_type.name!r} is already registered")
    _types[step_type.name] = step_type
    if step_type.waits_on is not None:
        _waiting[step_type.name] = step_type.waits_on
    _changed()
    return step_type


def unregister(name: str) -> None:
    """Remove a registered type (for tests: a definition using it no longer parses). Raises ValueError
    if ``name`` is not registered."""
    get(name)
    del _types[name]
    _waiting.pop(name, None)
    _changed()


def get(name: str) -> StepType:
    """The registered type called ``name``; ValueError naming the known types if there is none."""
    step_type = _types.get(name)
    if step_type is None:
        raise ValueError(f"unknown step type {name!r}; use one of {list(_types)}")
    return step_type


def find(name: str) -> StepType | None:
    """The registered type called ``name``, or None."""
    return _types.get(name)


def names() -> tuple[str, ...]:
    """The registered type names, in registration order."""
    return tuple(_types)


def types() -> tuple[StepType, ...]:
    """The registered types, in registration order."""
    return tuple(_types.values())


def waiting_types() -> Mapping[str, str]:
    """Type name -> what it waits on, for the types the scheduler parks: a read-only view that
    follows later registrations."""
    return _waiting_view


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` after every register and unregister (it is not called now)."""
    _listeners.append(listener)


def _changed() -> None:
    for listener in _listeners:
        listener()


def _check(step_type: StepType) -> None:
    name = getattr(step_type, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{step_type!r} has no name")
    model = getattr(step_type, "definition", None)
    field = model.model_fields.get("type") if model is not None else None
    if field is None or typing.get_args(field.annotation) != (name,):
        raise ValueError(f"step type {name!r}: its definition needs the field type: Literal[{name!r}]")
    if (step_type.waits_on is None) == (step_type.executor is None):
        raise ValueError(f"step type {name!r} needs either an executor (runs on a worker) or waits_on, not both")
    if not getattr(step_type, "label", None):
        raise ValueError(f"step type {name!r} has no label")


for _module in (tool, llm, agent, approval, question, wait_event, timer, workflow):
    register(_module.STEP_TYPE)
