"""A run's timeline (a Gantt chart) from its attempt events — pure: steps and events in, positioned
bars out, drawn as server-rendered SVG by _timeline.html.

One row per step; per attempt, a bar of queue wait (queued → started) and one of execution
(started → completed, failed, retrying, waiting); between attempts the backoff gap of a retry; a
step waiting for a person, an event or a timer gets a wait bar until its next move. A bar still open
(the run is live) runs to ``now`` and is marked open; the page re-renders on each event of the run.

For-each items: an item's events name it ``<step>[<index>]`` (its own row of ``steps``); ``_key`` turns
an event into its row. Collapsed (the default), a for-each step's row carries every item's bars over its
own; expanded (``expanded`` names the step), each item gets a row of its own under its step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from api.ui import times

# The run page's event log shows this many events at most (a run of thousands of steps stays a page).
LOG_WINDOW = 200
FAILURES = ("step_failed", "run_failed")

LABEL_W, PLOT_W, ROW_H, AXIS_H, BAR_H = 170, 830, 22, 22, 14
MIN_BAR_W = 1.5  # an instant still shows
NICE_STEPS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
                7200, 10800, 21600, 43200, 86400, 172800, 604800)

# What an event does to its step's open bar: the kind of the bar it opens next (None: opens none).
OPENS = {"step_queued": "queued", "step_started": "running", "step_retrying": "backoff",
         "step_waiting": "waiting", "step_deferred": "deferred",
         "step_completed": None, "step_failed": None, "step_cancelled": None}
# How the bar it closes ended, by the closing event.
OUTCOMES = {"step_completed": "succeeded", "step_failed": "failed", "step_cancelled": "cancelled",
            "step_retrying": "retrying"}


@dataclass(frozen=True)
class Segment:
    kind: str  # queued, running, backoff, waiting or deferred
    start: datetime
    end: datetime
    attempt: int | None
    outcome: str | None = None  # how it ended: succeeded, failed, cancelled, retrying; None if it went on
    note: str = ""  # what a wait waits on, a retry's error
    open: bool = False  # still going (a live run)
    item: str | None = None  # the for-each item it belongs to (its bars are in its step's row while collapsed)


@dataclass
class Row:
    step_id: str
    status: str
    item: str | None = None  # the for-each item (its index) of this row (see the module's docstring)
    segments: list[Segment] = field(default_factory=list)
    items: int = 0  # a for-each step's items with events (their bars in this row while collapsed)
    expanded: bool = False

    @property
    def label(self) -> str:
        return f"{self.step_id}[{self.item}]" if self.item is not None else self.step_id


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    css: str
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    rows: tuple[Row, ...]
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    width: int
    height: int
    live: bool
    span: str  # the whole run's duration, as read


ITEM = re.compile(r"^(?P<step>.+)\[(?P<index>\d+)\]$")


def _key(event: dict) -> tuple[str | None, str | None]:
    """The row an event belongs to: (step id, for-each item index or None)."""
    found = ITEM.match(event["step_id"] or "")
    return (found["step"], found["index"]) if found else (event["step_id"], None)


def rows(steps: list[dict], events: list[dict], end: datetime, expanded: frozenset[str] = frozenset()) -> list[Row]:
    """A row per step (in ``steps``' order, each ``{"id", "status"}``) with its segments, built from
    the run's attempt events in order (``type``, ``step_id``, ``attempt``, ``data``, ``created_at``).
    A segment still open is closed at ``end`` and marked open. A for-each step's items are rows of
    their own under it if ``expanded`` names it, else their bars are drawn in its row."""
    by_key = _segments(steps, events, end)
    result = []
    for key, row in by_key.items():
        if key[1] is not None:
            continue
        items = sorted((k for k in by_key if k[0] == row.step_id and k[1] is not None), key=lambda k: int(k[1]))
        row.items, row.expanded = len(items), row.step_id in expanded and bool(items)
        result.append(row)
        for item in items:
            if row.expanded:
                result.append(by_key[item])
            else:
                row.segments.extend(by_key[item].segments)
    return result


def _segments(steps: list[dict], events: list[dict], end: datetime) -> dict[tuple, Row]:
    """Every row's segments, steps' and items' alike, keyed by (step id, item index or None)."""
    by_key = {(s["id"], None): Row(s["id"], s["status"]) for s in steps}
    opened: dict[tuple, tuple[str, datetime, int | None, str]] = {}
    for event in events:
        key = _key(event)
        if key[0] is None or event["type"] not in OPENS:
            continue
        row = by_key.setdefault(key, Row(key[0], "" if key[1] is not None else "pending", key[1]))
        at = times.parse(event["created_at"])
        if key in opened:
            kind, start, attempt, note = opened.pop(key)
            row.segments.append(Segment(kind, start, max(at, start), attempt, OUTCOMES.get(event["type"]), note,
                                        item=key[1]))
        kind = OPENS[event["type"]]
        if kind is not None:
            opened[key] = (kind, at, event.get("attempt"), _note(event))
    for key, (kind, start, attempt, note) in opened.items():
        by_key[key].segments.append(Segment(kind, start, max(end, start), attempt, None, note, open=True, item=key[1]))
    return by_key


def _note(event: dict) -> str:
    data = event.get("data") or {}
    if event["type"] == "step_retrying":
        error = data.get("error") or {}
        return f"retry in {times.duration(data.get('delay_s'))} after {error.get('code', 'an error')}"
    if event["type"] in ("step_waiting", "step_deferred"):
        return str(data.get("waiting_on") or data.get("reason") or "")
    return ""


def build(run: dict, events: list[dict], now: datetime, expanded: frozenset[str] = frozenset()) -> Timeline:
    """The timeline of ``run`` (the API's run: ``created_at``, ``completed_at``, ``steps``) from its
    attempt events, drawn up to its end (``now`` while it is live); ``expanded``: the for-each steps
    whose items get rows of their own."""
    live = run.get("completed_at") is None
    start = times.parse(run["created_at"])
    end = times.parse(run.get("completed_at")) or now
    all_rows = rows(run["steps"], events, end, expanded)
    starts = [seg.start for row in all_rows for seg in row.segments]
    start = min([start, *starts])
    end = max([end, *(seg.end for row in all_rows for seg in row.segments)])
    span_s = max((end - start).total_seconds(), 0.001)
    scale = PLOT_W / span_s
    bars = []
    for i, row in enumerate(all_rows):
        y = AXIS_H + i * ROW_H + (ROW_H - BAR_H) / 2
        for seg in row.segments:
            x = LABEL_W + (seg.start - start).total_seconds() * scale
            w = max((seg.end - seg.start).total_seconds() * scale, MIN_BAR_W)
            bars.append(Bar(round(x, 2), round(y, 2), round(w, 2), _css(seg), _title(row, seg)))
    return Timeline(tuple(all_rows), tuple(bars), _ticks(span_s, scale), LABEL_W + PLOT_W + 10,
                    AXIS_H + len(all_rows) * ROW_H + 4, live, times.duration(span_s))


def _css(seg: Segment) -> str:
    css = f"tl-{seg.kind}"
    if seg.kind == "running":
        css += {"succeeded": " ok", "failed": " bad", "cancelled": " cancel", "retrying": " bad"}.get(
            seg.outcome or "", " run")
    return css + (" open" if seg.open else "")


def _title(row: Row, seg: Segment) -> str:
    what = {"queued": "queue wait", "running": "execution", "backoff": "backoff", "waiting": "waiting",
            "deferred": "deferred"}[seg.kind]
    parts = [row.label if seg.item is None else f"{row.step_id}[{seg.item}]"]
    if seg.attempt:
        parts.append(f"attempt {seg.attempt}")
    parts.append(f"{what} {times.duration((seg.end - seg.start).total_seconds())}")
    if seg.note:
        parts.append(seg.note)
    if seg.outcome:
        parts.append(seg.outcome)
    if seg.open:
        parts.append("still going")
    return " · ".join(parts)


def _ticks(span_s: float, scale: float) -> tuple[Tick, ...]:
    """Axis ticks every 'nice' interval, at most about 8 of them, labelled as offsets from the start."""
    step = next((s for s in NICE_STEPS_S if span_s / s <= 8), NICE_STEPS_S[-1])
    count = int(span_s / step) + 1
    return tuple(Tick(round(LABEL_W + i * step * scale, 2), "+" + times.duration(i * step) if i else "0")
                 for i in range(count))


def log_window(events: list[dict], *, failed: bool, show_all: bool = False) -> tuple[list[dict], int | None]:
    """The events the log shows and the seq of a failed run's first failure (where the page opens it):
    LOG_WINDOW events from just before that failure, else the newest; every event with ``show_all``."""
    first = next((i for i, e in enumerate(events) if e["type"] in FAILURES), None) if failed else None
    newest = max(len(events) - LOG_WINDOW, 0)
    start = newest if first is None else min(max(first - 5, 0), newest)
    shown = events if show_all else events[start:start + LOG_WINDOW]
    return shown, (events[first]["seq"] if first is not None else None)
