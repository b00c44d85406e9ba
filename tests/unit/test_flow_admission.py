"""The dispatch window's pure decision (orchestrator/core/admission.py): fair across tenants, then
priority and age within a tenant."""

from __future__ import annotations

import pytest

from orchestrator import diagnosis
from orchestrator.core.admission import Held, choose, valid_priority
from orchestrator.states import RunStatus, StepStatus


def held(id_: int, tenant: str, priority: int = 5) -> Held:
    return Held(id_, tenant, priority, f"run_{id_}", "a", 1, "steps", 30.0)


def tenants(chosen: list[Held]) -> list[str]:
    return [h.tenant_id for h in chosen]


def test_a_tenant_with_nothing_in_the_window_goes_first_and_then_they_alternate():
    flood = [held(i, "a") for i in range(1, 6)]
    late = [held(100 + i, "b") for i in range(3)]
    chosen = choose(6, {"a": 4}, flood + late)
    # b holds nothing while a holds 4: b takes places until it catches up, then they alternate.
    assert tenants(chosen) == ["b", "b", "b", "a", "a", "a"]
    assert [h.id for h in chosen if h.tenant_id == "a"] == [1, 2, 3]  # a's oldest first


def test_equal_holders_alternate_round_robin():
    chosen = choose(4, {}, [held(i, "a") for i in range(1, 5)] + [held(10 + i, "b") for i in range(1, 5)])
    assert tenants(chosen) == ["a", "b", "a", "b"]


def test_within_a_tenant_priority_comes_before_age():
    chosen = choose(3, {}, [held(1, "a", 5), held(2, "a", 5), held(3, "a", 1), held(4, "a", 9)])
    assert [h.id for h in chosen] == [3, 1, 2]


def test_weights_give_a_tenant_a_larger_share():
    chosen = choose(6, {}, [held(i, "a") for i in range(10)] + [held(100 + i, "b") for i in range(10)],
                    weights={"a": 2.0})
    assert tenants(chosen).count("a") == 4 and tenants(chosen).count("b") == 2


@pytest.mark.parametrize("room", [0, -3])
def test_no_room_admits_nothing(room):
    assert choose(room, {}, [held(1, "a")]) == []


def test_fewer_candidates_than_room():
    assert len(choose(10, {"a": 1}, [held(1, "a"), held(2, "b")])) == 2


@pytest.mark.parametrize(("value", "ok"), [(1, True), (9, True), (5, True), (0, False), (10, False),
                                           (True, False), ("1", False), (None, False), (2.0, False)])
def test_valid_priority(value, ok):
    assert valid_priority(value) is ok


def test_a_held_step_is_diagnosed_as_waiting_for_its_window():
    step = diagnosis.StepFacts("a", "tool", StepStatus.QUEUED, "steps", 1,
                               window=diagnosis.WindowFacts(in_use=32, size=32, held_ahead=140))
    [cause] = diagnosis.diagnose("run_1", RunStatus.RUNNING, None, [step], approvals={}, questions={}, consumers={"steps": 2})
    assert cause.kind == "window" and cause.step_id == "a"
    assert "32 of 32 places" in cause.message and "140 held messages are ahead" in cause.message


def test_a_busy_window_is_looked_at_again_when_about_half_of_it_has_freed():
    from orchestrator.core.admission import Looked, batch_of, next_look_in

    assert batch_of(32) == 16 and batch_of(3) == 1 and batch_of(1) == 1
    pace = {"fastest_s": 0.02, "slowest_s": 0.25}
    # 4 places freed in 20 ms: 16 more free in 80 ms.
    assert next_look_in([Looked(32, 4)], elapsed_s=0.02, previous_s=0.02, **pace) == pytest.approx(0.08)
    # Freeing fast: never sooner than the fastest pace; slowly: never later than the slowest.
    assert next_look_in([Looked(32, 32)], elapsed_s=0.02, previous_s=0.02, **pace) == 0.02
    assert next_look_in([Looked(32, 1)], elapsed_s=0.2, previous_s=0.2, **pace) == 0.25
    # The queue that frees a batch soonest sets the pace; a full one does not.
    assert next_look_in([Looked(32, 0), Looked(8, 4)], elapsed_s=0.1, previous_s=0.1, **pace) == pytest.approx(0.1)


def test_full_windows_back_off_doubling_up_to_the_slowest_pace():
    from orchestrator.core.admission import Looked, next_look_in

    waits, wait = [], 0.02
    for _ in range(5):
        wait = next_look_in([Looked(32, 0)], elapsed_s=wait, previous_s=wait, fastest_s=0.02, slowest_s=0.25)
        waits.append(wait)
    assert waits == pytest.approx([0.04, 0.08, 0.16, 0.25, 0.25])


def test_a_queues_drain_rate_follows_its_looks_smoothly():
    from orchestrator.core.admission import DRAIN_SMOOTHING, drained_per_s

    assert drained_per_s(None, 16, 0.04) == pytest.approx(400)  # the first look sets it
    # One look's burst moves it part of the way; looks at the same pace converge on the rate.
    assert drained_per_s(400, 32, 0.04) == pytest.approx(400 + DRAIN_SMOOTHING * 400)
    rate = 100.0
    for _ in range(20):
        rate = drained_per_s(rate, 16, 0.04)
    assert rate == pytest.approx(400, rel=0.01)
    assert drained_per_s(250, 0, 0.25) == pytest.approx(250 * (1 - DRAIN_SMOOTHING))  # nothing freed: slower
    assert drained_per_s(250, 5, 0.0) == 250  # no time between the looks: nothing learnt


def test_a_window_is_stretched_to_a_time_of_its_queues_drain_within_its_bounds():
    from orchestrator.core.admission import stretched

    # No-op steps drained at 400 a second: a quarter of a second's worth.
    assert stretched(32, 400, seconds=0.25, most=256) == 100
    # Slow steps (0.2 s on 16 threads: 80 a second) never shrink a window below its own size.
    assert stretched(32, 80, seconds=0.25, most=256) == 32
    assert stretched(32, 5000, seconds=0.25, most=256) == 256
    assert stretched(512, 5000, seconds=0.25, most=256) == 512  # a queue's own size above the most stays
    # Unknown rate (a backlog's first look), or stretching turned off: the window's own size.
    assert stretched(32, None, seconds=0.25, most=256) == 32
    assert stretched(32, 400, seconds=0, most=256) == 32
