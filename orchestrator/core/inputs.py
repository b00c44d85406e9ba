"""The inputs a decision takes besides the run's snapshot, and what is injected into it (``Env``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import ids
from orchestrator.core.reports import Outcome
from orchestrator.settings import PriceTable


@dataclass(frozen=True)
class Env:
    """What a decision may not take from the world itself: randomness (retry jitter), new ids, prices,
    and the installation's limits."""

    rand: Callable[[], float] = random.random
    new_id: Callable[[str], str] = ids.new_id
    prices: PriceTable | None = None
    max_items: int = 1000  # the most items a for-each step may have (SWITCHYARD_MAX_FOR_EACH_ITEMS)
    max_depth: int = 10  # the deepest a child run may be (SWITCHYARD_MAX_RUN_DEPTH)


@dataclass(frozen=True)
class AttemptReport:
    """A worker's report of a running attempt (or the scheduler's, for a worker whose lease expired).
    ``queue_ready``: the steps its success makes ready are queued in the same transaction."""

    run_id: str
    step_id: str
    attempt: int
    outcome: Outcome
    queue_ready: bool = False


@dataclass(frozen=True)
class Actor:
    """Who acted, for the audit trail: the caller's token and an optional ``?triggered_by=``."""

    token_id: str
    triggered_by: str | None = None

    def audit(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "triggered_by": self.triggered_by}

    @property
    def name(self) -> str:
        return self.triggered_by or self.token_id


@dataclass(frozen=True)
class Control:
    """An operator's action on a run (``pause``, ``resume``, ``cancel``, ``retry``, ``rerun``), with its
    validated options."""

    action: str
    actor: Actor
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Defer:
    """A step's message arrived while its run is paused: the step goes back to `pending`, attempt unspent."""

    step_id: str
    attempt: int
