"""``runs watch``: a run's steps, redrawn from its event stream.

``apply`` is the pure part: a view of the run (``Board``) and one event give the next view. On a
terminal the board is redrawn in place (rich); otherwise each event is one line, for logs and pipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from switchyard.client.models import TERMINAL_RUN, TERMINAL_STEP, Event, Run

# The run-level events with the status each moves its run to (the API's event vocabulary).
RUN_AFTER = {"run_created": "queued", "run_started": "running", "run_running": "running", "run_resumed": "running",
             "run_waiting": "waiting", "run_paused": "paused", "run_succeeded": "succeeded", "run_failed": "failed",
             "run_cancelled": "cancelled", "run_retried": "queued"}
STEP_AFTER = {"step_queued": "queued", "step_started": "running", "step_retrying": "retrying",
              "step_waiting": "waiting", "step_failed": "failed", "step_cancelled": "cancelled",
              "step_deferred": "pending"}
COLOURS = {"succeeded": "green", "failed": "red", "cancelled": "magenta", "skipped": "dim", "running": "cyan",
           "queued": "blue", "retrying": "yellow", "waiting": "yellow", "paused": "yellow", "pending": "dim"}


@dataclass(frozen=True)
class StepView:
    id: str
    type: str
    status: str = "pending"
    attempt: int = 0
    note: str = ""


@dataclass(frozen=True)
class Board:
    run_id: str
    workflow: str
    status: str
    steps: tuple[StepView, ...] = field(default_factory=tuple)

    @property
    def settled(self) -> int:
        return sum(s.status in TERMINAL_STEP for s in self.steps)


def board_from(run: Run, *, replay: bool) -> Board:
    """The board of ``run``: as it is now, or (``replay``) every step pending, for a replay from seq 0."""
    steps = tuple(StepView(s.id, s.type) if replay else StepView(s.id, s.type, s.status, s.attempt, _note(s))
                  for s in run.steps)
    return Board(run.id, f"{run.workflow.id} v{run.workflow.version}", "queued" if replay else run.status, steps)


def _note(step: Any) -> str:
    if step.error:
        return step.error.message or step.error.code
    return step.skipped_reason or step.waiting_on or ""


def apply(board: Board, event: Event) -> Board:
    """The board after ``event``."""
    if event.type in RUN_AFTER:
        return replace(board, status=RUN_AFTER[event.type])
    if event.type == "steps_reopened":
        ids = set(event.data.get("steps") or [])
        return replace(board, steps=tuple(replace(s, status="pending", note="") if s.id in ids else s
                                          for s in board.steps))
    status = _step_status(event)
    if status is None or event.step_id is None:
        return board
    note = _event_note(event, status)
    steps = tuple(replace(s, status=status, attempt=event.attempt or s.attempt, note=note) if s.id == event.step_id
                  else s for s in board.steps)
    return replace(board, steps=steps)


def _step_status(event: Event) -> str | None:
    if event.type == "step_completed":
        return "skipped" if event.data.get("skipped") else "succeeded"
    return STEP_AFTER.get(event.type)


def _event_note(event: Event, status: str) -> str:
    if status == "skipped":
        return str(event.data.get("reason") or "")
    error = event.data.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "")
    return str(event.data.get("waiting_on") or event.data.get("reason") or "")


def line(event: Event) -> str:
    """One event as a line of a log."""
    at = event.created_at.strftime("%H:%M:%S") if event.created_at else "--:--:--"
    where = f" {event.step_id}" if event.step_id else ""
    attempt = f" (attempt {event.attempt})" if event.attempt else ""
    note = _event_note(event, _step_status(event) or "")
    return f"{at} #{event.seq} {event.type}{where}{attempt}{f': {note}' if note else ''}"


def render(board: Board) -> Any:
    """The board as a rich renderable: the run's line, a progress bar and a table of the steps."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    total = len(board.steps) or 1
    head = Text.assemble((board.run_id, "bold"), f"  {board.workflow}  ",
                         (board.status, COLOURS.get(board.status, "")),
                         f"  {board.settled}/{len(board.steps)} steps settled")
    grid = Table("step", "type", "status", "attempt", "note", box=None, header_style="bold")
    for s in board.steps:
        grid.add_row(s.id, s.type, Text(s.status, COLOURS.get(s.status, "")), str(s.attempt or "-"), s.note)
    done = board.status in TERMINAL_RUN
    return Group(head, ProgressBar(total=total, completed=total if done else board.settled, width=40), grid)
