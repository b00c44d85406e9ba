"""Live event streams: publish a run's events after the commit that wrote them, follow them from an API.

The database stays the truth. ``apply_run_changes`` leaves what it wrote in the session; after the
commit, the publisher sends it on Redis pub/sub: the run's events to ``switchyard:run:<id>`` and, when
the run's status changed, a status change to ``switchyard:tenant:<id>``. A follower catches up from the
database first, then takes events live from its subscription, de-duplicated by ``seq``; a gap (a lost
publish, a publisher that died after its commit) sends it back to the database, and so does every
quiet ``keepalive_s``. With the embedded broker there is no pub/sub: followers poll the database.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db import repository as repo
from orchestrator.db.session import AutocommitSessions
from orchestrator.redis_line import RedisLine
from orchestrator.settings import Settings
from orchestrator.states import TERMINAL_RUN

log = logging.getLogger(__name__)

TERMINAL_VALUES = {s.value for s in TERMINAL_RUN}


def run_channel(run_id: str) -> str:
    return f"switchyard:run:{run_id}"


def tenant_channel(tenant_id: str) -> str:
    return f"switchyard:tenant:{tenant_id}"


def ts(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def event_json(seq: int, type_: str, *, step_id: str | None, attempt: int | None, data: Any,
               created_at: datetime | None) -> dict[str, Any]:
    """An event as the API shows it (GET /runs/{id}/events and the streams)."""
    return {"seq": seq, "type": type_, "step_id": step_id, "attempt": attempt, "data": data,
            "created_at": ts(created_at)}


# --- the bus ------------------------------------------------------------------------------------


class Subscription:
    """One Redis pub/sub connection listening on one channel."""

    def __init__(self, client: redis.Redis, channel: str):
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(channel)
        # Wait for Redis to confirm: from then on nothing published is missed, so a catch-up read
        # from the database that follows cannot leave a hole between itself and the live messages.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.5)
            if message and message["type"] == "subscribe":
                return
        self.close()
        raise redis.ConnectionError(f"Redis did not confirm the subscription to {channel}")

    def get(self, timeout: float) -> dict | None:
        """The next message's payload, or None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message and message["type"] == "message":
                return json.loads(message["data"])
        return None

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not raise
            pass


class Bus:
    """Publishes committed events and opens subscriptions, over one Redis client (thread-safe pool)."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30)
        self.line = RedisLine(self.client)  # publishing is on every step's path

    def publish(self, written: list[dict]) -> None:
        """One message per run of ``written`` (the commits' items, in commit order) on its channel,
        with all its events and the status after the last; one per status change on the tenant's."""
        by_run: dict[str, dict] = {}
        changes = []
        for item in written:
            events = [event_json(e["seq"], e["type"], step_id=e["step_id"], attempt=e["attempt"], data=e["data"],
                                 created_at=e["created_at"])
                      for e in item["events"]]
            status = {k: item[k] for k in ("run_id", "workflow_id", "status", "previous_status", "waiting_on")}
            merged = by_run.setdefault(item["run_id"], {"events": []})
            merged["events"] += events
            merged.update(status)  # the run's status after the last of them
            if item["status_changed"]:
                last = events[-1]
                change = {**status, "seq": last["seq"], "type": last["type"], "created_at": last["created_at"]}
                changes.append(("PUBLISH", tenant_channel(item["tenant_id"]), json.dumps(change, default=str)))
        self.line.send([("PUBLISH", run_channel(run_id), json.dumps(message, default=str))
                        for run_id, message in by_run.items()] + changes)

    def subscribe(self, channel: str) -> Subscription:
        return Subscription(self.client, channel)


def make_bus(settings: Settings) -> Bus | None:
    """The pub/sub bus on the broker's Redis; None with the embedded broker (followers poll instead)."""
    url = settings.resolved_broker_url
    return Bus(url) if url.startswith(("redis://", "rediss://", "unix://")) else None


Sessions = sessionmaker[Session] | AutocommitSessions


def install_publisher(sessions: Sessions | Iterable[Sessions], bus: Bus | None,
                      linger_s: float = 0.0) -> _Publisher | None:
    """Publish what each transaction of ``sessions`` (one factory or several) wrote to the event log,
    after its commit; for AutocommitSessions, whose statements commit one by one, after each use.

    The publishing itself happens on a thread of the process (``_Publisher``): the commit only hands
    it over, so what follows a commit on a step's path (the doorbell, the step messages) does not
    wait for the live streams. With ``linger_s``, what the thread takes is sent up to that long after
    its commit, with whatever else was committed meanwhile (see _Publisher).
    """
    publisher = _Publisher(bus, linger_s) if bus is not None else None

    def _published(session: Session) -> None:
        written = session.info.pop(repo.WRITTEN_EVENTS, None)
        if written and publisher is not None:
            publisher.submit(written)

    def _discarded(session: Session, *_args) -> None:
        session.info.pop(repo.WRITTEN_EVENTS, None)

    for factory in [sessions] if isinstance(sessions, sessionmaker | AutocommitSessions) else sessions:
        if isinstance(factory, AutocommitSessions):
            factory.after_use.append(_published)
        else:
            sa_event.listen(factory, "after_commit", _published)
            sa_event.listen(factory, "after_rollback", _discarded)
    return publisher


class _Publisher:
    """Sends committed events to the bus from one thread per process, in commit order.

    Started on first use in each process (a forked worker child starts its own). What is still
    queued when a process dies is lost to the live streams only: followers read it from the database
    at their next gap check or keepalive.
    """

    def __init__(self, bus: Bus, linger_s: float = 0.0):
        self.bus = bus
        # A worker's claim and its outcome a few milliseconds later: waiting that long sends one
        # message for both (one round trip, one wake-up of this thread), where each was one.
        self.linger_s = linger_s
        self.queue: queue.SimpleQueue[list[dict]] = queue.SimpleQueue()
        self.pid: int | None = None
        self.lock = threading.Lock()
        self.pending = 0  # submitted and not yet sent (or given up on)
        self.idle = threading.Condition()

    def submit(self, written: list[dict]) -> None:
        if self.pid != os.getpid():
            with self.lock:
                if self.pid != os.getpid():
                    self.queue = queue.SimpleQueue()  # a forked child must not share its parent's
                    threading.Thread(target=self._run, name="switchyard-stream-publisher", daemon=True).start()
                    self.pid = os.getpid()
        with self.idle:
            self.pending += 1
        self.queue.put(written)

    def wait_idle(self, timeout: float) -> bool:
        """Block until everything submitted so far was sent; False if ``timeout`` passed first."""
        with self.idle:
            return self.idle.wait_for(lambda: self.pending == 0, timeout)

    def _run(self) -> None:
        own = self.queue
        while True:
            batch, taken = own.get(), 1
            if self.linger_s:
                # Asleep, not waiting on the queue: what is submitted meanwhile does not wake this
                # thread (a wake-up costs the submitting thread a switch, on a worker's path).
                time.sleep(self.linger_s)
            while True:  # publish what piled up, and what came while lingering, in one pipeline
                try:
                    batch.extend(own.get_nowait())  # the lists are handed over: this thread owns them
                except queue.Empty:
                    break
                taken += 1
            try:
                self.bus.publish(batch)
            except Exception as exc:  # noqa: BLE001 - followers find the events in the database anyway
                log.warning("could not publish %d runs' events (%s); live streams catch up from the database",
                            len(batch), exc)
            with self.idle:
                self.pending -= taken
                self.idle.notify_all()


# --- following a run ----------------------------------------------------------------------------

KEEPALIVE = None  # what a follower yields when nothing happened for a while


@dataclass
class Follow:
    sessions: sessionmaker[Session]
    run_id: str
    after: int
    subscription: Subscription | None
    keepalive_s: float
    poll_s: float

    def __iter__(self) -> Iterator[dict | None]:
        """Every event after ``after`` in order, each once, then live ones; ends when the run is
        terminal and every event is out. Yields KEEPALIVE (None) after ``keepalive_s`` of quiet."""
        last = self.after
        try:
            while True:
                caught_up, terminal = yield from self._catch_up(last)
                last = caught_up
                if terminal:
                    return
                last = yield from self._live(last)
        finally:
            self.close()

    def close(self) -> None:
        """Give the Redis connection back; also for a follower that was never iterated."""
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None

    def _catch_up(self, last: int):
        while True:
            with self.sessions() as session:
                status = repo.run_status(session, self.run_id)
                rows = repo.run_events(session, self.run_id, last, 500)
            for e in rows:
                yield event_json(e.seq, e.type, step_id=e.step_id, attempt=e.attempt, data=e.data,
                                 created_at=e.created_at)
                last = e.seq
            if len(rows) < 500:
                # The status was read before the events: if it was terminal, they include the last one.
                return last, status is None or status in TERMINAL_VALUES

    def _live(self, last: int):
        """Live events until a gap, the run's end or a quiet spell sends us back to the database."""
        if self.subscription is None:
            # The embedded broker has no pub/sub: a short poll of the database per stream instead.
            waited = 0.0
            while waited < self.keepalive_s:
                time.sleep(self.poll_s)
                waited += self.poll_s
                with self.sessions() as session:
                    if repo.run_events(session, self.run_id, last, 1):
                        return last
            yield KEEPALIVE
            return last
        while True:
            try:
                message = self.subscription.get(self.keepalive_s)
            except redis.RedisError as exc:
                log.warning("live stream of %s falls back to polling the database: %s", self.run_id, exc)
                self.subscription.close()
                self.subscription = None
                return last
            if message is None:
                yield KEEPALIVE
                return last
            for e in message["events"]:
                if e["seq"] <= last:
                    continue
                if e["seq"] != last + 1:
                    return last
                yield e
                last = e["seq"]
            if message["status"] in TERMINAL_VALUES:
                return last


def follow_run(sessions: sessionmaker[Session], bus: Bus | None, settings: Settings, run_id: str,
               after: int) -> Follow:
    """Subscribe (before reading anything, so nothing falls between) and return the follower."""
    subscription = _subscribe(bus, run_channel(run_id))
    return Follow(sessions, run_id, after, subscription, settings.stream_keepalive_s, settings.stream_poll_s)


def _subscribe(bus: Bus | None, channel: str) -> Subscription | None:
    """A subscription, or None to poll the database instead (no pub/sub, or Redis not answering)."""
    if bus is None:
        return None
    try:
        return bus.subscribe(channel)
    except redis.RedisError as exc:
        log.warning("live stream falls back to polling the database: cannot subscribe to %s (%s)", channel, exc)
        return None


@dataclass
class TenantFollow:
    """The tenant's run status changes as they happen, forever; KEEPALIVE after quiet spells."""

    sessions: sessionmaker[Session]
    settings: Settings
    tenant_id: str
    subscription: Subscription | None
    since: datetime  # where polling starts (without a subscription)

    def __iter__(self) -> Iterator[dict | None]:
        try:
            if self.subscription is None:
                yield from _poll_tenant(self.sessions, self.settings, self.tenant_id, self.since)
            while self.subscription is not None:
                yield self.subscription.get(self.settings.stream_keepalive_s)
        finally:
            self.close()

    def close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None


def follow_tenant(bus: Bus | None, sessions: sessionmaker[Session], settings: Settings,
                  tenant_id: str) -> TenantFollow:
    """Subscribe before returning, so every change committed after the call is seen."""
    subscription = _subscribe(bus, tenant_channel(tenant_id))
    with sessions() as session:
        since = repo.now(session)
    return TenantFollow(sessions, settings, tenant_id, subscription, since)


def _poll_tenant(sessions: sessionmaker[Session], settings: Settings, tenant_id: str,
                 cursor: datetime) -> Iterator[dict | None]:
    """Without pub/sub (embedded broker): poll the tenant's run-level events from the database, each a
    change with the status it moved its run to and the status before (``repo.run_status_events``)."""
    quiet = 0.0
    while True:
        time.sleep(settings.stream_poll_s)
        with sessions() as session:
            changes = repo.run_status_events(session, tenant_id, cursor, 500)
        for change in changes:
            cursor = max(cursor, change["created_at"])
            yield {**change, "created_at": ts(change["created_at"])}
        quiet = 0.0 if changes else quiet + settings.stream_poll_s
        if quiet >= settings.stream_keepalive_s:
            quiet = 0.0
            yield KEEPALIVE
