"""Why a run is not moving, and what would move it — pure, no I/O.

``diagnose()`` reads facts gathered by the caller (the run's steps with their ages and leases, its open
approvals and questions, and how many workers consume each queue) and names every cause it finds,
each with the operator's next action.

An action that is an API call comes three ways: ``action``, a sentence for a person; ``request``, the
call as data (method, path under the API's base URL, JSON body); and ``command``, a shell line to paste.
The shell line is a ``curl`` call that reads the base URL (``…/api/v1``) from ``$SWITCHYARD_URL`` and
the token from ``$SWITCHYARD_TOKEN``, every other word quoted with ``shlex.quote``; an action that is a
command of its own (start a worker) is that command. A body holds ``<…>`` where the operator must choose
(an answer, a higher limit).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.core.vocabulary import ErrorCode
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus


@dataclass(frozen=True)
class StepFacts:
    step_id: str
    type: str
    status: StepStatus
    queue: str
    attempt: int
    lease_expired: bool = False
    due_in_s: float | None = None  # a retry's or timer's due time, seconds from now (negative: overdue)
    correlation_key: str | None = None
    waiting_on: str | None = None  # what a waiting agent or tool step waits on (question, approval, budget)
    queued_for_s: float | None = None  # how long a queued step has waited for a worker
    worker: str | None = None  # who runs its attempt: "<Celery worker name>:<pid>" (workers/tasks.py)
    lease_expires_at: datetime | None = None
    # A queued step held in the database for room in its queue's dispatch window (orchestrator/admission.py):
    # the places in use and the held messages of the queue ahead of it (higher priority, or as high and older).
    window: WindowFacts | None = None
    # A for-each step's running items whose leases have not expired (each a StepFacts named
    # "<step>[<index>]", with its worker): a silent worker holding some is named on the step.
    items_running: tuple[StepFacts, ...] = ()


@dataclass(frozen=True)
class WindowFacts:
    in_use: int
    size: int | None
    held_ahead: int


@dataclass(frozen=True)
class KeyWait:
    """A concurrency key the run (``step_id`` None: a workflow's key) or one of its steps waits for
    room under, as rendered, with its limit and the runs holding it (the first few)."""

    step_id: str | None
    key: str
    limit: int
    holders: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """An API call: ``path`` is under the API's base URL (``/api/v1``); ``body`` is JSON (None: no body)."""

    method: str
    path: str
    body: Any = None

    def curl(self) -> str:
        """The call as one shell line: $SWITCHYARD_URL and $SWITCHYARD_TOKEN expand, the rest is quoted."""
        words = ["curl", "-sS", "-X", self.method, f'"$SWITCHYARD_URL"{shlex.quote(self.path)}',
                 "-H", '"Authorization: Bearer $SWITCHYARD_TOKEN"']
        if self.body is not None:
            words += ["-H", shlex.quote("Content-Type: application/json"), "-d", shlex.quote(json.dumps(self.body))]
        return " ".join(words)


@dataclass(frozen=True)
class Cause:
    kind: str  # paused, budget_exceeded, rate_limit, approval, question, event, timer, retry, no_consumers, queued, window,
    # worker_lost, scheduler, failed, cancelled
    step_id: str | None
    message: str
    action: str
    request: Request | None = None  # the action's API call, if it is one
    command: str | None = None  # the action as a shell line to paste, if it is one (see the module's doc)

    def __post_init__(self):
        if self.request is not None and self.command is None:
            object.__setattr__(self, "command", self.request.curl())

    def as_json(self) -> dict:
        return asdict(self)


def diagnose(
    run_id: str,
    status: RunStatus,
    error: Mapping | None,
    steps: Sequence[StepFacts],
    *,
    approvals: Mapping[str, str],
    questions: Mapping[str, str],
    consumers: Mapping[str, int] | None,
    silent_workers: Mapping[str, datetime | None] | None = None,
    concurrency: Sequence[KeyWait] = (),
) -> list[Cause]:
    """Every reason the run is where it is. ``approvals`` and ``questions`` map a step id to its open
    approval or question id; ``consumers`` maps a queue to its consuming workers (None: unknown);
    ``silent_workers`` maps a Celery worker that stopped sending heartbeats to when it was last heard
    (None: never, by this process); ``concurrency``: the keys the run or its steps wait for."""
    if status in TERMINAL_RUN:
        if status is RunStatus.SUCCEEDED:
            return []
        what = (error or {}).get("message") or status.value
        return [Cause(status.value, (error or {}).get("step_id"), f"the run ended {status.value}: {what}",
                      f"POST /runs/{run_id}/retry to go on from the failed step, or /rerun for a new run",
                      Request("POST", f"/runs/{run_id}/retry"))]
    causes: list[Cause] = []
    if status is RunStatus.PAUSED:
        causes.append(Cause("paused", None, "the run is paused: nothing new is dispatched",
                            f"POST /runs/{run_id}/resume", Request("POST", f"/runs/{run_id}/resume")))
    causes += _concurrency_causes(concurrency)
    if status is RunStatus.QUEUED and not any(w.step_id is None for w in concurrency):
        causes.append(Cause("scheduler", None, "no scheduler has picked the run up yet",
                            "check that a `switchyard scheduler` process is running and reaches the database"))
    for step in steps:
        cause = (_step_cause(run_id, step, approvals, questions, consumers)
                 or _silent_worker_cause(step, silent_workers or {}))
        if cause is not None:
            causes.append(cause)
    return causes


def _step_cause(run_id, step: StepFacts, approvals, questions, consumers) -> Cause | None:
    sid = step.step_id
    if step.status is StepStatus.WAITING:
        if step.waiting_on == "budget":
            call = Request("POST", f"/runs/{run_id}/resume", {"limits": {"tokens": "<a higher limit>"}})
            return Cause("budget_exceeded", sid, f"step {sid!r} stopped before a call that would exceed the run's limits",
                         f"{_said(call)} to raise them (tokens, tool_calls or credits), or /cancel", call)
        if step.waiting_on == "rate_limit":
            return Cause("rate_limit", sid, f"step {sid!r} waits for room under an LLM rate limit (its step_waiting "
                         "event names the limit)" + _due(step, "is queued again"),
                         "nothing: the scheduler queues it again when the limit's window has room; raise the limit "
                         "(SWITCHYARD_RATE_LIMITS, the tenant policy's rate_limits) if this is too slow")
        if sid in approvals:
            call = Request("POST", f"/runs/{run_id}/approvals/{approvals[sid]}/approve")
            return Cause("approval", sid, f"step {sid!r} waits for an approval ({approvals[sid]})",
                         f"POST {call.path}, /reject or /request_changes", call)
        if sid in questions:
            call = Request("POST", f"/runs/{run_id}/questions/{questions[sid]}/answer", {"answer": "<your answer>"})
            return Cause("question", sid, f"step {sid!r} waits for the answer to a question ({questions[sid]})",
                         _said(call), call)
        if step.type == "wait_event":
            call = (Request("POST", "/events", {"correlation_key": step.correlation_key})
                    if step.correlation_key else None)
            return Cause("event", sid,
                         f"step {sid!r} waits for an event with correlation_key {step.correlation_key!r}"
                         + _due(step, "times out"),
                         _said(call) if call else "POST /events with the correlation_key the step waits for", call)
        if step.type == "timer":
            return Cause("timer", sid, f"step {sid!r} is a timer" + _due(step, "fires"),
                         "nothing: the scheduler fires it when it is due")
    if step.status is StepStatus.RETRYING:
        return Cause("retry", sid, f"step {sid!r} failed attempt {step.attempt} and is retried" + _due(step, "next"),
                     "nothing: the scheduler dispatches the next attempt when it is due")
    if step.status is StepStatus.QUEUED and step.window is not None:
        return _held_cause(step)
    if step.status is StepStatus.QUEUED:
        if consumers is not None and consumers.get(step.queue, 0) == 0:
            command = f"switchyard worker --queues {shlex.quote(step.queue)}"
            return Cause("no_consumers", sid, f"step {sid!r} is queued on {step.queue!r}, which no worker consumes",
                         f"start a worker for it: {command}", command=command)
        return Cause("queued", sid, f"step {sid!r} is queued on {step.queue!r}, waiting for a free worker",
                     "nothing, or add workers for that queue if it stays long")
    if step.status is StepStatus.RUNNING and step.lease_expired:
        return Cause(ErrorCode.WORKER_LOST.value, sid, f"the worker running step {sid!r} stopped heartbeating",
                     "nothing: the scheduler reclaims the attempt and retries it; check that worker's machine")
    return None


def _concurrency_causes(waits: Sequence[KeyWait]) -> list[Cause]:
    """The run (queued) or a step (pending) waits for room under a concurrency key: which key, its limit
    and the runs that hold it."""
    causes = []
    for wait in waits:
        held_by = ", ".join(wait.holders) if wait.holders else "runs that ended since (it starts at the next look)"
        what = (f"the run waits (queued) for room under its workflow's concurrency key {wait.key!r}"
                if wait.step_id is None else
                f"step {wait.step_id!r} waits (pending) for room under the concurrency key {wait.key!r}")
        causes.append(Cause(
            "concurrency", wait.step_id, f"{what}: limit {wait.limit}, held by {held_by}",
            "nothing: it starts when a holder ends (waiters start by priority, then age); to free it now, "
            "cancel a holder (POST /runs/<holder>/cancel), or raise the limit in the workflow's definition"))
    return causes


def _held_cause(step: StepFacts) -> Cause:
    """A step held for room in its queue's window: how full the window is and what is ahead of it."""
    window, sid = step.window, step.step_id
    places = f"{window.in_use} of {window.size}" if window.size is not None else f"{window.in_use}"
    return Cause("window", sid,
                 f"step {sid!r} is queued on {step.queue!r} but waits in the database: {places} places of the "
                 f"queue's dispatch window are in use and {window.held_ahead} held messages are ahead of it "
                 "(higher priority, or as high and older); places go to the tenants holding the fewest first",
                 "nothing: it is admitted as places free; to go faster add workers for the queue (and raise "
                 "its window, SWITCHYARD_QUEUE_WINDOWS, with them) or start urgent runs with a higher priority")


def worker_name(step_worker: str | None) -> str | None:
    """The Celery worker's name in a step's ``worker`` ("<name>:<pid of the pool process>")."""
    return (step_worker.rpartition(":")[0] or step_worker) if step_worker else None


def workers_running(steps: Sequence[StepFacts]) -> set[str]:
    """The Celery workers running the steps' attempts (for-each items' included) whose leases have not
    expired: those whose silence the diagnosis would name."""
    running = [i for s in steps for i in (s, *s.items_running)]
    return {worker_name(s.worker) for s in running if s.status is StepStatus.RUNNING and s.worker and not s.lease_expired}


def _silent_worker_cause(step: StepFacts, silent_workers: Mapping[str, datetime | None]) -> Cause | None:
    """A running step whose worker stopped sending Celery heartbeats, named before its lease expires
    (the lease stays the authority: the sweep reclaims the attempt only then); for a for-each step,
    the silent workers holding its items."""
    if step.items_running:
        return _silent_item_workers_cause(step, silent_workers)
    name = worker_name(step.worker)
    if step.status is not StepStatus.RUNNING or step.lease_expired or name not in silent_workers:
        return None
    lease = f" at {_at(step.lease_expires_at)}" if step.lease_expires_at is not None else ""
    return Cause(ErrorCode.WORKER_LOST.value, step.step_id,
                 f"worker {name} {_stopped(silent_workers[name])}; step {step.step_id!r} will be recovered when "
                 f"its lease expires{lease}",
                 "nothing: the scheduler reclaims the attempt when its lease expires and retries it; "
                 "check that worker's process and machine")


def _silent_item_workers_cause(step: StepFacts, silent_workers: Mapping[str, datetime | None]) -> Cause | None:
    """A for-each step some of whose running items are held by workers that stopped sending heartbeats."""
    held: dict[str, list[StepFacts]] = {}
    for item in step.items_running:
        name = worker_name(item.worker)
        if item.status is StepStatus.RUNNING and not item.lease_expired and name in silent_workers:
            held.setdefault(name, []).append(item)
    if not held:
        return None
    said = []
    for name, its in held.items():
        leases = [i.lease_expires_at for i in its if i.lease_expires_at is not None]
        until = f", the last lease expiring at {_at(max(leases))}" if leases else ""
        said.append(f"worker {name} {_stopped(silent_workers[name])} holding {_items(its)}{until}")
    return Cause(ErrorCode.WORKER_LOST.value, step.step_id,
                 f"{'; '.join(said)}: those items of step {step.step_id!r} will be recovered when their leases expire",
                 "nothing: the scheduler reclaims each item's attempt when its lease expires and retries it; "
                 "check that worker's process and machine")


def _stopped(last: datetime | None) -> str:
    """How a silent worker was last heard."""
    return (f"stopped sending heartbeats at {_at(last)}" if last is not None
            else "sends no heartbeats (none heard since this API process began listening)")


def _items(its: Sequence[StepFacts], shown: int = 10) -> str:
    """Items by id, the first ``shown`` of them."""
    ids = ", ".join(i.step_id for i in its[:shown])
    more = f" and {len(its) - shown} more" if len(its) > shown else ""
    return f"{len(its)} item{'s' if len(its) != 1 else ''} ({ids}{more})"


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _said(call: Request) -> str:
    """The call for a person to read: the method, the path and the body as JSON."""
    return f"{call.method} {call.path}" + ("" if call.body is None else f" with {json.dumps(call.body)}")


def _due(step: StepFacts, verb: str) -> str:
    if step.due_in_s is None:
        return ""
    if step.due_in_s <= 0:
        return f"; it {verb} now (overdue by {-step.due_in_s:.1f}s)"
    return f"; it {verb} in {step.due_in_s:.1f}s"
