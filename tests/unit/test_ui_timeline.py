"""The run timeline and the readable times of the web UI (api/ui/timeline.py, api/ui/times.py): pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.ui import timeline, times

T0 = datetime(2026, 12, 3, 13, 35, 42, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ev(kind: str, step: str | None, seconds: float, attempt: int | None = 1, **data) -> dict:
    return {"type": kind, "step_id": step, "attempt": attempt, "data": data, "created_at": at(seconds)}


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "—"), (0.349, "0.35 s"), (1.23, "1.2 s"), (42.4, "42 s"), (180, "3 min"), (184, "3 min 4 s"),
    (7500, "2 h 5 min"), (3 * 86400 + 4 * 3600, "3 d 4 h"), (-2, "0.00 s"),
])
def test_durations_read_as_people_say_them(seconds, text):
    assert times.duration(seconds) == text


def test_a_time_falls_back_to_utc_and_a_span_runs_to_now_while_open():
    assert times.clock("2020-01-02T03:04:05.123456Z") == "2020-01-02 03:04:05 UTC"
    assert times.clock(datetime.now(UTC)).endswith(" UTC") and len(times.clock(datetime.now(UTC))) == 12
    assert times.clock(None) == "—"
    assert times.between(at(0), at(1.2)) == "1.2 s"
    assert times.between(at(0), None, now=T0 + timedelta(minutes=3)) == "3 min"
    assert times.between(None, at(1)) == "—"


RETRIED = [
    ev("step_queued", "fetch", 0), ev("step_started", "fetch", 0.5),
    ev("step_retrying", "fetch", 1.5, delay_s=2.0, error={"code": "flaky", "message": "try again"}),
    ev("step_queued", "fetch", 3.5, attempt=2), ev("step_started", "fetch", 3.7, attempt=2),
    ev("step_completed", "fetch", 4.0, attempt=2),
    ev("step_queued", "review", 4.1), ev("step_started", "review", 4.2),
    ev("step_waiting", "review", 4.3, waiting_on="approval"),
]


def test_a_retried_step_has_queue_waits_executions_and_its_backoff_gap():
    rows = timeline.rows([{"id": "fetch", "status": "succeeded"}, {"id": "review", "status": "waiting"},
                          {"id": "after", "status": "pending"}], RETRIED, T0 + timedelta(seconds=10))
    fetch, review, after = rows
    assert [(s.kind, s.attempt, s.outcome) for s in fetch.segments] == [
        ("queued", 1, None), ("running", 1, "retrying"), ("backoff", 1, None),
        ("queued", 2, None), ("running", 2, "succeeded")]
    assert [(s.end - s.start).total_seconds() for s in fetch.segments] == pytest.approx([0.5, 1.0, 2.0, 0.2, 0.3])
    assert fetch.segments[2].note == "retry in 2.0 s after flaky"
    wait = review.segments[-1]
    assert (wait.kind, wait.note, wait.open, wait.end) == ("waiting", "approval", True, T0 + timedelta(seconds=10))
    assert after.segments == [] and after.item is None  # the for-each hook: one row per step today


def test_the_drawing_scales_the_run_into_the_plot_and_says_what_each_bar_is():
    run = {"created_at": at(0), "completed_at": at(10), "steps": [{"id": "fetch", "status": "succeeded"},
                                                                     {"id": "review", "status": "succeeded"}]}
    drawn = timeline.build(run, RETRIED + [ev("step_completed", "review", 9.0)], datetime.now(UTC))
    assert not drawn.live and drawn.span == "10 s"
    first, last = drawn.bars[0], drawn.bars[-1]
    assert first.x == timeline.LABEL_W and first.w == pytest.approx(timeline.PLOT_W * 0.05, abs=0.01)
    assert last.css == "tl-waiting" and last.x + last.w == pytest.approx(timeline.LABEL_W + timeline.PLOT_W * 0.9)
    assert "backoff 2.0 s" in drawn.bars[2].title and "attempt 1" in drawn.bars[2].title
    assert drawn.bars[1].css == "tl-running bad" and drawn.bars[4].css == "tl-running ok"
    assert [t.label for t in drawn.ticks][:3] == ["0", "+2.0 s", "+4.0 s"]
    assert all(timeline.LABEL_W <= t.x <= timeline.LABEL_W + timeline.PLOT_W for t in drawn.ticks)


def test_a_live_run_draws_to_now_and_marks_the_open_bar():
    run = {"created_at": at(0), "completed_at": None, "steps": [{"id": "fetch", "status": "running"}]}
    drawn = timeline.build(run, RETRIED[:2], T0 + timedelta(seconds=4))
    assert drawn.live and drawn.bars[-1].css == "tl-running run open" and "still going" in drawn.bars[-1].title
    assert drawn.bars[-1].x + drawn.bars[-1].w == pytest.approx(timeline.LABEL_W + timeline.PLOT_W)


def test_the_log_opens_a_failed_run_at_its_first_failure_and_a_long_log_shows_a_window():
    log = [{"seq": i, "type": "step_completed"} for i in range(1, 1001)]
    shown, first = timeline.log_window(log, failed=False)
    assert [e["seq"] for e in shown] == list(range(801, 1001)) and first is None
    log[99] = {"seq": 100, "type": "step_failed"}
    log[-1] = {"seq": 1000, "type": "run_failed"}
    shown, first = timeline.log_window(log, failed=True)
    assert first == 100 and shown[0]["seq"] == 95 and len(shown) == timeline.LOG_WINDOW
    assert timeline.log_window(log[:50], failed=True)[0] == log[:50]
    assert len(timeline.log_window(log, failed=True, show_all=True)[0]) == 1000
    assert timeline.log_window([], failed=True) == ([], None)


def test_a_laid_out_version_is_recoloured_by_status_without_moving():
    from api.ui import graph

    drawn = graph.layout([{"id": "a", "type": "tool"}, {"id": "b", "type": "tool", "needs": ["a"]}])
    coloured = graph.with_statuses(drawn, {"a": "succeeded", "b": "queued"})
    assert [(n.status, n.label, n.css) for n in coloured.nodes] == [
        ("succeeded", "Success", "ok"), ("queued", "Queued", "queue")]
    assert [(n.x, n.y) for n in coloured.nodes] == [(n.x, n.y) for n in drawn.nodes]
    assert coloured.edges == drawn.edges


ITEMS = [
    ev("step_started", "map", 0, items=3),
    ev("step_queued", "map[0]", 0.1), ev("step_queued", "map[1]", 0.1), ev("step_queued", "map[10]", 0.1),
    ev("step_started", "map[1]", 0.2), ev("step_started", "map[0]", 0.3), ev("step_started", "map[10]", 0.3),
    ev("step_completed", "map[0]", 1.0), ev("step_failed", "map[1]", 1.5, error={"code": "x"}),
    ev("step_completed", "map[10]", 1.2), ev("step_completed", "map", 1.6),
]


def test_a_for_each_steps_items_are_drawn_in_its_row_until_expanded():
    steps = [{"id": "map", "status": "succeeded"}, {"id": "after", "status": "pending"}]
    collapsed = timeline.rows(steps, ITEMS, T0 + timedelta(seconds=2))
    assert [(r.label, r.items, r.expanded) for r in collapsed] == [("map", 3, False), ("after", 0, False)]
    assert len(collapsed[0].segments) == 1 + 3 * 2  # its own run, and each item's queue wait and execution
    drawn = timeline.build({"created_at": at(0), "completed_at": at(2), "steps": steps}, ITEMS, T0)
    assert sum("map[1] · attempt 1 · execution" in b.title for b in drawn.bars) == 1
    expanded = timeline.rows(steps, ITEMS, T0 + timedelta(seconds=2), frozenset({"map"}))
    assert [r.label for r in expanded] == ["map", "map[0]", "map[1]", "map[10]", "after"]
    assert expanded[0].expanded and len(expanded[0].segments) == 1
    assert [s.outcome for s in expanded[2].segments] == [None, "failed"]
