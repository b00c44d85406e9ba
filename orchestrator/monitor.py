"""What the Celery workers are doing, kept up to date in the background for GET /workers and GET /queues.

Asking the workers (Celery's ``inspect``) waits for their replies, a second every time: a request must
not. A ``WorkerMonitor`` keeps what the workers already broadcast, as Flower does, on two daemon threads
of the process that reads it:

- **events** (a Redis broker): Celery's event receiver (``app.events.Receiver``) takes the workers'
  heartbeats (every 2 s) and task events. A worker is online while its last heartbeat has not expired by
  Celery's rule (``celery.events.state.heartbeat_expires``: two heartbeat intervals); one killed outright
  drops out when it expires, one shut down cleanly at its ``worker-offline`` event. A task is active on a
  worker from its ``task-started`` event to the event that ends it. The receiver reconnects when the
  broker goes away.
- **inspect**: a round of ``inspect stats / active_queues / active`` every ``refresh_s`` and at once when
  an unknown worker heartbeats, for what only it tells: a worker's pool and queues, and the tasks that
  were already running when the receiver connected. A task the latest round did not list, and no event
  has mentioned since the round began, is no longer active.

The embedded broker (``switchyard dev``) keeps its queues in files: a receiver's queue would collect every
event in files for as long as it is bound, read by nobody once its process is gone. There, workers send
no heartbeats and the monitor asks ``inspect`` every ``EMBEDDED_REFRESH_S`` seconds; a worker is online
while it answered the latest round.

A worker that stopped sending heartbeats is **silent** (``silent()``, for the diagnosis): named within
two heartbeat intervals of its death, long before its steps' leases expire (the lease stays the
authority that reclaims them). One the monitor never heard is silent too once the monitor has listened
longer than that without a heartbeat or an inspect answer from it (a worker that died before this
process began listening). The embedded broker has no heartbeats: no worker is ever named silent there.

Readers never wait for the broker: ``workers()`` and ``silent()`` answer from memory. Only the first reader after the
monitor starts may wait (``wait_ready``) for the first round, so a fresh process does not answer "no
workers" while it has not asked yet.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery
from celery.events.state import heartbeat_expires

from orchestrator import broker
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_FREQ_S = 2.0  # a Celery worker's heartbeat interval unless it says otherwise
REFRESH_S = 10.0  # a round of inspect, with events on
EMBEDDED_REFRESH_S = 2.0  # a round of inspect, the embedded broker's only source
FORGET_AFTER_S = 600.0  # a worker silent this long is forgotten (it is offline long before)
TASK_ENDED = frozenset({"task-succeeded", "task-failed", "task-revoked", "task-retried", "task-rejected"})


@dataclass(frozen=True)
class WorkerView:
    """One online worker as the monitor last saw it."""

    name: str
    pool: dict  # stats.pool of the latest inspect answer ({} until it answered one)
    queues: list[str]  # the queues it consumes
    active: list[str]  # the task ids it runs
    processed: int
    seen_at: float  # time.time() of its latest heartbeat or inspect answer


@dataclass
class _Beat:
    received: float  # time.time() when its latest heartbeat arrived
    freq: float
    processed: int | None

    def alive(self, now: float) -> bool:
        return now < heartbeat_expires(self.received, self.freq)


# The monitors started in this process and not stopped (an API process has one; a test process makes
# one per app it asks about workers, and stops those it is done with: each listens to every event).
_RUNNING: weakref.WeakSet = weakref.WeakSet()


def running() -> list[WorkerMonitor]:
    """The monitors of this process that are started and not stopped."""
    return list(_RUNNING)


class WorkerMonitor:
    def __init__(self, app: Celery, settings: Settings, refresh_s: float | None = None):
        self.app = app
        self.timeout_s = settings.inspect_timeout_s
        self.events = not settings.uses_embedded_broker
        self.refresh_s = refresh_s or (REFRESH_S if self.events else EMBEDDED_REFRESH_S)
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._beats: dict[str, _Beat] = {}
        self._started: dict[str, dict[str, float]] = {}  # worker -> {task id: when its event came}
        self._ended: dict[str, float] = {}  # task id -> when its end event came (since the round began)
        self._known: dict[str, dict] = {}  # worker -> its latest inspect answer
        self._answered: dict[str, float] = {}  # worker -> time.time() of that answer
        self._round: set[str] = set()  # who answered the latest round
        self._round_began = 0.0
        self._offline: dict[str, float] = {}  # worker -> time.time() of its worker-offline event
        self._listening_since: float | None = None  # time.time() when the event receiver began capturing
        self._ready = threading.Event()
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._receiver = None

    # --- reading ------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) until the first inspect round is over; at once afterwards."""
        return self._ready.wait(timeout)

    def workers(self) -> list[WorkerView]:
        """The online workers, by name; from memory."""
        now = time.time()
        with self._lock:
            online = [name for name in set(self._beats) | self._round if self._online(name, now)]
            views = []
            for name in sorted(online):
                answer = self._known.get(name) or {}
                stats = answer.get("stats") or {}
                beat = self._beats.get(name)
                active = (set(self._started.get(name, {}))
                          | {t["id"] for t in answer.get("active") or [] if name in self._round}) - set(self._ended)
                processed = beat.processed if beat and beat.processed is not None else \
                    sum((stats.get("total") or {}).values())
                views.append(WorkerView(
                    name=name, pool=stats.get("pool") or {},
                    queues=sorted(q["name"] for q in answer.get("active_queues") or []),
                    active=sorted(active), processed=processed,
                    seen_at=max(beat.received if beat else 0.0, self._answered.get(name, 0.0)),
                ))
            return views

    def silent(self, names: Iterable[str]) -> dict[str, float | None]:
        """Of the Celery workers ``names``, those gone quiet: by name, when they were last heard
        (time.time() of their latest heartbeat, inspect answer or worker-offline event; None if never
        heard). A worker the monitor cannot judge yet (it has not listened two heartbeat intervals) is
        left out, as is every worker when events are off (the embedded broker)."""
        now, found = time.time(), {}
        with self._lock:
            listened_long_enough = self._listening_since is not None and now >= heartbeat_expires(
                self._listening_since, DEFAULT_HEARTBEAT_FREQ_S)
            for name in names:
                beat = self._beats.get(name)
                if beat is not None:
                    if not beat.alive(now):
                        found[name] = beat.received
                elif name in self._offline:
                    found[name] = self._offline[name]
                elif listened_long_enough and not self._answered_while_listening(name):
                    found[name] = self._answered.get(name)
        return found

    def _answered_while_listening(self, name: str) -> bool:
        """Whether the worker answered the latest inspect round since the receiver began listening (one
        started without heartbeats is alive while it answers; an answer from before says nothing)."""
        since = self._listening_since
        return name in self._round and since is not None and self._answered.get(name, 0.0) >= since

    def _online(self, name: str, now: float) -> bool:
        beat = self._beats.get(name)
        # Heartbeats decide for a worker that sends them; inspect for one that does not (yet).
        return beat.alive(now) if beat is not None else name in self._round

    # --- running ------------------------------------------------------------------------------------

    def start(self) -> WorkerMonitor:
        _RUNNING.add(self)
        threading.Thread(target=self._inspect_loop, name="switchyard-monitor-inspect", daemon=True).start()
        if self.events:
            threading.Thread(target=self._event_loop, name="switchyard-monitor-events", daemon=True).start()
        return self

    def stop(self) -> None:
        _RUNNING.discard(self)
        self._stop.set()
        self._poke.set()
        if self._receiver is not None:
            self._receiver.should_stop = True

    def _inspect_loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                answers = broker.inspect_workers(self.app, self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - the broker may be away; the next round asks again
                log.warning("monitor: could not ask the workers: %s", exc)
                answers = {}
            self._take_round(answers, began)
            self._ready.set()
            self._poke.wait(self.refresh_s)
            self._poke.clear()

    def _take_round(self, answers: dict[str, dict], began: float) -> None:
        now = time.time()
        with self._lock:
            self._round, self._round_began = set(answers), began
            for name, answer in answers.items():
                self._known[name], self._answered[name] = answer, now
                listed = {t["id"] for t in answer.get("active") or []}
                started = self._started.get(name, {})
                for task_id in [t for t, seen in started.items() if seen < began and t not in listed]:
                    del started[task_id]  # its end event was lost
            self._ended = {t: seen for t, seen in self._ended.items() if seen >= began}
            for name in [n for n, at in self._answered.items() if now - at > FORGET_AFTER_S and n not in self._beats]:
                self._forget(name)
            for name in [n for n, b in self._beats.items() if now - b.received > FORGET_AFTER_S]:
                self._forget(name)
            for name in [n for n, at in self._offline.items() if now - at > FORGET_AFTER_S]:
                self._forget(name)

    def _forget(self, name: str) -> None:
        for table in (self._beats, self._started, self._known, self._answered, self._offline):
            table.pop(name, None)

    def _event_loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1)
                    self._receiver = self.app.events.Receiver(conn, handlers={"*": self.on_event})
                    backoff = 1.0
                    self._listening_since = time.time()
                    # wakeup: every worker sends a heartbeat at once, so they show up without waiting 2 s.
                    self._receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:  # noqa: BLE001 - the broker went away: reconnect, more slowly each time
                # Deaf meanwhile: a worker not heard of is not judged silent until it listened again.
                self._listening_since = None
                if self._stop.is_set():
                    return
                log.warning("monitor: lost the workers' events (%s); reconnecting in %.0f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def on_event(self, event: dict) -> None:
        """One Celery event (the receiver's handler; a test may call it directly)."""
        kind, name = event.get("type", ""), event.get("hostname")
        received = event.get("local_received") or time.time()
        new_worker = False
        with self._lock:
            if kind == "worker-offline":
                self._offline[name] = received
                self._beats.pop(name, None)
                self._started.pop(name, None)
                self._round.discard(name)
            elif kind.startswith("worker-"):
                new_worker = name not in self._beats and name not in self._known
                self._offline.pop(name, None)
                self._beats[name] = _Beat(received, float(event.get("freq") or 2.0), event.get("processed"))
            elif kind == "task-started" and name:
                self._started.setdefault(name, {})[event["uuid"]] = time.monotonic()
                self._ended.pop(event["uuid"], None)
            elif kind in TASK_ENDED and event.get("uuid"):
                for started in self._started.values():
                    started.pop(event["uuid"], None)
                self._ended[event["uuid"]] = time.monotonic()
        if new_worker:
            self._poke.set()  # ask it for its pool and queues now


def attempt_of(task_id: str) -> tuple[str | None, str | None, int | None]:
    """(run, step, attempt) of a step's task id (``messages.task_id``); Nones for another task."""
    run_id, _, rest = task_id.partition(".")
    step_id, _, attempt = rest.rpartition(".")
    if not step_id or not attempt.isdigit():
        return None, None, None
    return run_id, step_id, int(attempt)
