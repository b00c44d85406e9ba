"""The pure schedule decisions: next slots, due slots, catch-up and overlap, with time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import schedules
from orchestrator.schedules import Spec, overlap_action, plan

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


@pytest.mark.parametrize(("cron", "ok"), [
    ("*/5 * * * *", True), ("* * * * * *", True), ("0 9 * * mon-fri", True), ("* * * * * */2", True),
    ("61 * * * *", False), ("* * *", False), ("bad cron expression x", False), ("* * * * * * *", False),
])
def test_cron_problem(cron, ok):
    assert (schedules.cron_problem(cron) is None) is ok


def test_zone():
    assert schedules.zone("Europe/Berlin") is not None
    assert schedules.zone("Mars/Olympus") is None
    assert schedules.zone("../etc/passwd") is None


def test_next_slots_in_a_timezone_are_utc():
    spec = Spec("0 9 * * *", "Europe/Berlin")
    slots = spec.next_slots(T0, 2)
    assert slots == [datetime(2026, 6, 2, 7, 0, tzinfo=UTC), datetime(2026, 6, 3, 7, 0, tzinfo=UTC)]


def test_dst_as_croniter_defines_it():
    """Spring forward: 02:30 does not exist and fires at 03:00; fall back: 02:30 fires twice."""
    spec = Spec("30 2 * * *", "Europe/Berlin")
    spring = spec.next_slots(datetime(2026, 3, 28, 12, 0, tzinfo=UTC), 2)
    assert spring[0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST
    autumn = spec.next_slots(datetime(2026, 10, 24, 12, 0, tzinfo=UTC), 3)
    assert autumn[:2] == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)]


def test_due_slots_include_now_and_exclude_last():
    spec = Spec("* * * * *", "UTC")
    due, truncated = spec.due_slots(at(0), at(3), 100)
    assert due == [at(1), at(2), at(3)] and not truncated
    assert spec.due_slots(at(3), at(3, 30), 100) == ([], False)


def test_due_slots_are_bounded():
    due, truncated = Spec("* * * * * *", "UTC").due_slots(at(0), at(10), 5)
    assert due == [at(10, -4 + i) for i in range(5)] and truncated


def test_an_on_time_slot_fires_whatever_the_catchup():
    for catchup in ("none", "latest", "all"):
        decided = plan(Spec("* * * * *", "UTC", catchup=catchup), at(0), at(1, 2), max_catchup=100)
        assert decided.fire == (at(1),) and decided.last_slot == at(1) and decided.next_fire_at == at(2)


@pytest.mark.parametrize(("catchup", "fired"), [("none", 0), ("latest", 1), ("all", 5)])
def test_catchup_after_a_five_minute_outage(catchup, fired):
    """Every-minute slots 12:01 … 12:05 were missed; at 12:05:40 none of them is on time."""
    decided = plan(Spec("* * * * *", "UTC", catchup=catchup), at(0), at(5, 40), max_catchup=100)
    assert len(decided.fire) == fired
    assert decided.passed_over == 5 - fired and decided.last_slot == at(5)
    if catchup == "latest":
        assert decided.fire == (at(5),)


def test_catchup_all_is_bounded_by_max_catchup():
    decided = plan(Spec("* * * * *", "UTC", catchup="all"), at(0), at(60, 40), max_catchup=3)
    assert decided.fire == (at(58), at(59), at(60)) and decided.more_passed_over
    assert decided.last_slot == at(60)


def test_nothing_due_moves_nothing():
    decided = plan(Spec("*/5 * * * *", "UTC"), at(0), at(2), max_catchup=100)
    assert decided.fire == () and decided.last_slot == at(0) and decided.next_fire_at == at(5)


def test_an_every_second_schedule_fires_each_slot_once_as_the_clock_moves():
    """Driven by an injected clock at uneven steps: the union of what each plan fires is every slot once."""
    spec, last, now, fired = Spec("* * * * * *", "UTC", catchup="all"), at(0), at(0), []
    for step in (0.3, 0.9, 1.0, 2.7, 0.1, 0.05, 3.5, 1.0):  # 9.55 s in all
        now += timedelta(seconds=step)
        decided = plan(spec, last, now, max_catchup=100)
        fired += decided.fire
        last = decided.last_slot
    assert fired == [at(0, s) for s in range(1, len(fired) + 1)]
    assert len(fired) == 9


@pytest.mark.parametrize(("overlap", "live", "action"), [
    ("skip", False, "start"), ("skip", True, "skip"), ("allow", True, "start"),
    ("cancel_previous", True, "cancel_previous"), ("cancel_previous", False, "start"),
])
def test_overlap_action(overlap, live, action):
    assert overlap_action(overlap, live) == action
