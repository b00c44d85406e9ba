"""Which held step messages enter a queue's window, decided: fair across tenants, then by priority
and age within a tenant (docs/flow-control.md).

The database is the queue: a step that is ready but finds its queue's window full waits there, held.
When the window has room, the scheduler reads the window's holders per tenant and each tenant's best
held messages, and ``choose`` picks which enter: each place goes to the tenant whose share of the
window, divided by its weight, is the smallest (a tenant with nothing in the window comes first), and
that tenant's best message by priority (1 first), then age. The result is a weighted round robin that
starts from what each tenant already holds, so one tenant's backlog never stands in front of another's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_PRIORITY = 5
PRIORITIES = range(1, 10)


@dataclass(frozen=True, slots=True)
class Held:
    """A held message: its outbox row (``id``: the order of age), its tenant and its run's priority."""

    id: int
    tenant_id: str
    priority: int
    run_id: str
    step_id: str
    attempt: int
    queue: str
    soft_time_limit: float

    @property
    def order(self) -> tuple[int, int]:
        """Within a tenant: priority first (1 is the highest), then the oldest."""
        return self.priority, self.id


def choose(room: int, holding: Mapping[str, int], held: Sequence[Held],
           weights: Mapping[str, float] | None = None) -> list[Held]:
    """The held messages to admit into ``room`` places, in the order they are admitted.

    ``holding``: how many places each tenant holds in the window now; ``held``: the candidates (each
    tenant's best, in any order); ``weights``: a tenant's weight (default 1; a weight of 2 gets twice
    the places of a tenant of weight 1 when both wait). Ties between tenants go to the better message
    (priority, then age), so a lone tenant is served in its own order."""
    if room <= 0 or not held:
        return []
    weights = weights or {}
    queues: dict[str, list[Held]] = {}
    for message in sorted(held, key=lambda m: m.order):
        queues.setdefault(message.tenant_id, []).append(message)
    taken = {tenant: holding.get(tenant, 0) for tenant in queues}
    heads = dict.fromkeys(queues, 0)
    chosen: list[Held] = []
    while len(chosen) < room:
        waiting = [t for t in queues if heads[t] < len(queues[t])]
        if not waiting:
            break
        tenant = min(waiting, key=lambda t: (taken[t] / max(weights.get(t, 1.0), 1e-9),
                                             queues[t][heads[t]].order, t))
        chosen.append(queues[tenant][heads[tenant]])
        heads[tenant] += 1
        taken[tenant] += 1
    return chosen


# A look for room is worth its round trips once about this share of a window has freed: the pace aims
# at it. The rest of the window (half, less the steps running) stays in the broker meanwhile, so the
# workers never run dry while the scheduler waits for the next look. Half rather than a quarter: a
# look costs three round trips and a publish whatever it admits, and one tenant's flood ran 4% faster
# with half the looks (make bench --only throughput).
BATCH_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Looked:
    """One queue at a look for room: its window's size and the messages admitted into it."""

    window: int
    admitted: int
    queue: str = ""


# How far one look moves a queue's drain rate (an exponential average): one look's burst does not
# stretch a window on its own, and a flood's rate is followed within a second of looks.
DRAIN_SMOOTHING = 0.3


def drained_per_s(previous: float | None, admitted: int, elapsed_s: float) -> float | None:
    """A queue's drain rate (places freed a second), from a look under its backlog: what it admitted
    is what freed since the look before, which filled the window, ``elapsed_s`` earlier."""
    if elapsed_s <= 0:
        return previous
    rate = admitted / elapsed_s
    return rate if previous is None else previous + DRAIN_SMOOTHING * (rate - previous)


def stretched(window: int, drain_per_s: float | None, *, seconds: float, most: int) -> int:
    """The window of a queue with a backlog: what its workers drain in ``seconds`` at its drain rate,
    never less than its own size (``window``), nor more than ``most`` unless its own size is. A newcomer
    waits behind a window's worth of messages: sized by time, that wait stays about ``seconds`` for a
    queue of slow steps and a queue of fast ones alike, and a fast queue is looked at as seldom."""
    if drain_per_s is None or seconds <= 0:
        return window
    return max(window, min(most, round(drain_per_s * seconds)))


def has_room(in_use: int, window: int) -> bool:
    """Whether a window with ``in_use`` places taken is worth a transaction to admit into."""
    return in_use < window


def batch_of(window: int) -> int:
    """The places whose freeing makes a look for room worth it: half the window, at least 1."""
    return max(1, int(window * BATCH_SHARE))


def next_look_in(looked: Sequence[Looked], *, elapsed_s: float, previous_s: float, fastest_s: float,
                 slowest_s: float) -> float:
    """Seconds until the scheduler looks for room again while held messages wait (``looked``: the
    queues with held messages at the last look, ``elapsed_s`` since the look before it, which came
    ``previous_s`` after its own predecessor).

    Places free as steps end: those admitted at a look freed in ``elapsed_s``, so the next look
    comes when about a batch (``batch_of``) is free again: a busy window is filled a batch at a time,
    not a place per look. A look that admitted nothing (every window full) backs off, doubling the
    wait. Always between ``fastest_s`` and ``slowest_s`` (the longest a freed place stays empty)."""
    waits = [elapsed_s * batch_of(q.window) / q.admitted for q in looked if q.admitted > 0]
    wait = min(waits) if waits else previous_s * 2
    return min(max(wait, fastest_s), slowest_s)


def valid_priority(value: object) -> bool:
    """Whether ``value`` is a priority: an integer from 1 (highest) to 9 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value in PRIORITIES
