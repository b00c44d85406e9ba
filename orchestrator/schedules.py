"""Cron schedules, the pure part: which slots come next, which are due, and what to do about each.

A schedule is a cron expression read in a timezone (croniter does the reading; zoneinfo the zones).
A *slot* is one instant the expression names, kept in UTC: the unique key of a fire is (schedule,
slot), so a slot is fired once however many schedulers look at it. Nothing here reads a clock or the
database: ``now`` is always passed in, so the tests drive time by hand.

Daylight saving time follows croniter: a wall-clock time that does not exist (02:30 on the spring-
forward night in Europe/Berlin) fires at the first valid time after it (03:00); one that exists twice
(02:30 on the fall-back night) fires twice, once per UTC instant. Schedules in UTC have neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field

Overlap = Literal["skip", "allow", "cancel_previous"]
Catchup = Literal["none", "latest", "all"]
# How many next fire times a schedule shows.
NEXT_SHOWN = 5
# A slot at most this old is on time: the scheduler was merely busy. An older one was missed (the
# schedulers were down) and the schedule's catch-up policy says whether it still fires.
ON_TIME_S = 30.0
_TICK = timedelta(microseconds=1)


class ScheduleBody(BaseModel):
    """PUT /workflows/{workflow_id}/schedules/{schedule_id}."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    cron: str = Field(min_length=1, max_length=200, description=(
        "Five fields (minute hour day month weekday), or six with seconds last, as croniter reads them."))
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="An IANA zone: Europe/Berlin.")
    input: Any = Field(default_factory=dict, description="Each run's input; checked against the input_schema.")
    overlap: Overlap = Field(default="skip", description=(
        "When a slot comes while the schedule's previous run is live: skip the slot, allow a second run, or "
        "cancel_previous and start."))
    catchup: Catchup = Field(default="none", description=(
        "Slots missed while no scheduler ran: none fires none, latest the most recent, all every one "
        "(at most SWITCHYARD_MAX_CATCHUP)."))
    enabled: bool = True


def cron_problem(cron: str) -> str | None:
    """Why ``cron`` is not a schedule croniter can follow, or None."""
    if len(cron.split()) not in (5, 6):
        return "a cron expression has 5 fields (minute hour day month weekday), or 6 with seconds last"
    try:
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        return f"not a valid cron expression: {exc}"
    return None


def zone(name: str) -> ZoneInfo | None:
    """The IANA zone ``name``, or None if there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class Spec:
    """What the decisions need of a schedule."""

    cron: str
    timezone: str
    overlap: str = "skip"
    catchup: str = "none"

    def _iter(self, start: datetime) -> croniter:
        return croniter(self.cron, start.astimezone(zone(self.timezone) or UTC))

    def next_slots(self, after: datetime, count: int = NEXT_SHOWN) -> list[datetime]:
        """The ``count`` slots strictly after ``after``, in UTC."""
        it = self._iter(after)
        return [it.get_next(datetime).astimezone(UTC) for _ in range(count)]

    def due_slots(self, last: datetime, now: datetime, limit: int) -> tuple[list[datetime], bool]:
        """The slots in (last, now], oldest first: the ``limit`` most recent of them, and whether older
        ones were left out."""
        it = self._iter(now + _TICK)  # get_prev is strictly before its start: now itself is due
        found: list[datetime] = []
        while True:
            slot = it.get_prev(datetime).astimezone(UTC)
            if slot <= last:
                return found[::-1], False
            if len(found) == limit:
                return found[::-1], True
            found.append(slot)


@dataclass(frozen=True)
class Plan:
    """What a scheduler does with a schedule now: the slots to fire (oldest first), how many due slots
    it passes over (``more_passed_over``: and older ones beyond SWITCHYARD_MAX_CATCHUP, not counted),
    the last slot considered from now on, and the next slot after ``now``."""

    fire: tuple[datetime, ...]
    passed_over: int
    more_passed_over: bool
    last_slot: datetime
    next_fire_at: datetime


def plan(spec: Spec, last: datetime, now: datetime, *, max_catchup: int, on_time_s: float = ON_TIME_S) -> Plan:
    """Decide which of the slots due since ``last`` fire now, by the schedule's catch-up policy.

    On-time slots (at most ``on_time_s`` old) always fire. Missed ones: ``none`` fires none,
    ``latest`` the most recent one when no slot is on time, ``all`` every one, at most ``max_catchup``
    (the most recent). Every due slot is consumed either way: ``last_slot`` moves past them all.
    """
    due, truncated = spec.due_slots(last, now, max(max_catchup, 1))
    on_time = [s for s in due if (now - s).total_seconds() <= on_time_s]
    missed = [s for s in due if s not in on_time]
    if spec.catchup == "all":
        fire = due[-max_catchup:] if max_catchup > 0 else on_time
    elif spec.catchup == "latest" and missed and not on_time:
        fire = [missed[-1]]
    else:
        fire = on_time
    return Plan(tuple(fire), len(due) - len(fire), truncated, due[-1] if due else last, spec.next_slots(now, 1)[0])


Action = Literal["start", "skip", "cancel_previous"]


def overlap_action(overlap: str, previous_live: bool) -> Action:
    """What a slot does while the schedule's previous run is (or is not) live."""
    if not previous_live or overlap == "allow":
        return "start"
    return "cancel_previous" if overlap == "cancel_previous" else "skip"
