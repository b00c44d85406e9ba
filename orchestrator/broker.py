"""The broker edge: the Celery app factory, publishing step messages, and the scheduler's doorbell.

Messages carry ids only (run, step, attempt); the database is the truth (docs/architecture.md, section 2).
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from queue import Empty

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport.virtual import Transport as VirtualTransport

from orchestrator import tracing
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

RUN_STEP_TASK = "switchyard.run_step"

# What this process's broker edge counts (GET /metrics adds it to the database's series).
# Made on first use: importing prometheus-client here would fix its mode before a worker sets up its
# multiprocess directory (workers/metrics.py), and the worker's children would count nothing.
_process_metrics: dict = {}


def process_metrics():
    """The registry of what this process's broker edge counts, and its dropped-calls counter."""
    if not _process_metrics:
        from prometheus_client import CollectorRegistry, Counter

        registry = CollectorRegistry(auto_describe=True)
        _process_metrics.update(registry=registry, dropped=Counter(
            "switchyard_broker_calls_dropped", "Broker calls off the request path dropped because too many were "
            "waiting (a broker not answering); the outbox and the sweep cover them.", ["call"], registry=registry))
    return _process_metrics


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for Switchyard's delivery guarantees (tasks are registered by workers)."""
    app = Celery("switchyard", broker=settings.resolved_broker_url, set_as_current=False)
    conf = dict(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.default_queue,
        task_ignore_result=True,
        # At-least-once: ack after the step ran, redeliver if the worker process died. The claim
        # guard in the database makes a redelivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Task events on, so a stock Flower can watch the same broker; the publisher's task-sent
        # event only where asked for (it costs a Redis write per step message).
        worker_send_task_events=True,
        task_send_sent_event=settings.task_sent_events,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # The dispatch windows the publishers check (orchestrator/admission.py), and where they ring.
        switchyard_window=settings.dispatch_window, switchyard_queue_windows=dict(settings.queue_windows),
        switchyard_wake=settings.wake_queue,
        # The slack of each step message's soft time limit for the steps a worker runs after it
        # (Settings.worker_eager_s; workers/tasks.py).
        switchyard_eager_s=settings.worker_eager_s if settings.database_url.startswith("postgresql") else 0.0,
    )
    if settings.uses_embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
    else:
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
    app.conf.update(conf)
    return app


# The app's conf key of the soft time limits' slack for eager steps (Settings.worker_eager_s).
CONF_EAGER = "switchyard_eager_s"


def publish_steps(app: Celery, messages: Iterable[StepMessage], cancel_grace_s: float) -> None:
    """Publish one Celery message per step attempt, over one producer connection; on Redis, several
    messages go out in one pipeline (kombu's publish batch) rather than a request each.

    The message is Celery's own (``app.amqp``: the task message of the protocol the workers read, sent
    with Celery's publish signals, so tracing and Flower see it), built without ``send_task``'s wrapper
    around it: its routing, options and result object, which cost about a third of a publish's CPU,
    are the same for every step message of a queue. The one thing dropped is the parent task's id,
    which ``send_task`` adds to a message published from inside a task (a worker's next step)."""
    messages = list(messages)
    slack = app.conf.get(CONF_EAGER) or 0.0
    amqp, sent_event, reply_to = app.amqp, app.conf.task_send_sent_event, app.thread_oid
    with app.producer_or_acquire() as producer, producer.batch() if len(messages) > 1 else nullcontext():
        # On kombu's virtual transports (Redis, the embedded broker) the default exchange delivers to
        # the queue the routing key names, declared or not: declaring it again for every message only
        # binds and copies kombu objects, a third of a publish's CPU. Elsewhere Celery declares it.
        declare = [] if isinstance(producer.connection.transport, VirtualTransport) else None
        for m in messages:
            args = [m.run_id, m.step_id, m.attempt]
            soft = m.soft_time_limit + slack
            message = amqp.create_task_message(
                m.task_id, RUN_STEP_TASK, args, {}, time_limit=soft + cancel_grace_s, soft_time_limit=soft,
                create_sent_event=sent_event, reply_to=reply_to, ignore_result=None,
                # Given, so Celery does not build them with its (much slower) safe repr: ids and a number.
                argsrepr=repr(args), kwargsrepr="{}")
            amqp.send_task_message(producer, RUN_STEP_TASK, message, declare=declare, **_route(app, m.queue))


def _route(app: Celery, queue: str) -> dict:
    """Where ``send_task`` would send a step message for ``queue`` (Celery's router: the queue, its
    exchange and routing key), worked out once per app and queue."""
    routes = _ROUTES.setdefault(app, {})
    if queue not in routes:
        routes[queue] = app.amqp.router.route({"queue": queue}, RUN_STEP_TASK, None, None)
    return routes[queue]


_ROUTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def revoke(app: Celery, task_ids: list[str]) -> None:
    """Ask workers to stop these attempts now (terminate the process running them).

    Best effort: the steps are already `cancelled` in the database, and the heartbeat's cooperative
    flag stops them even where the broadcast does not arrive.
    """
    if not task_ids:
        return
    try:
        app.control.revoke(task_ids, terminate=True, signal="SIGTERM")
    except Exception as exc:  # noqa: BLE001 - the signal is an optimisation over the database fact
        log.warning("could not broadcast revoke for %d tasks: %s", len(task_ids), exc)


def stranded_attempts(client, older_than_s: float) -> dict[str, tuple[str, str, int]]:
    """The step attempts (run id, step id, attempt) whose message a worker took more than
    ``older_than_s`` ago and neither acknowledged nor gave back, by the message's delivery tag.

    kombu's Redis transport keeps a delivered message in its ``unacked`` hash, with the delivery
    time in ``unacked_index``, until it is acknowledged; a worker killed outright leaves its
    messages there, and kombu puts them back only after the visibility timeout (an hour). With
    prefetch 1 a worker holds no message it is not running, so one held for long whose step was
    never claimed belongs to a dead worker (recovery must not wait for that timeout).
    """
    deadline = time.time() - older_than_s
    tags = client.zrange(UNACKED_INDEX, 0, deadline, byscore=True)
    if not tags:
        return {}
    attempts = {}
    for tag, raw in zip(tags, client.hmget(UNACKED, tags), strict=True):
        try:
            message = json.loads(raw)[0]
            if message["headers"].get("task") != RUN_STEP_TASK:
                continue
            run_id, step_id, attempt = message["headers"]["id"].split(".")
            attempts[tag] = (run_id, step_id, int(attempt))
        except (TypeError, ValueError, KeyError, IndexError):
            continue  # gone since the index was read, or not a step message
    return attempts


def forget_stranded(client, tags: list) -> None:
    """Drop stranded messages that were published again, as kombu drops a message it restores, so
    they are not restored (and published again) once more."""
    if tags:
        client.pipeline(transaction=False).hdel(UNACKED, *tags).zrem(UNACKED_INDEX, *tags).execute()


# Where kombu's Redis transport keeps delivered, unacknowledged messages (its default key names).
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


class BrokerEpoch:
    """Tells whether the broker lost its messages since the schedulers last looked.

    Redis keeps queues in memory: a restart without persistence, a failover to an empty replica or a
    FLUSHDB drops every step message in flight, and the outbox rows are gone by then. A marker key
    set next to the queues disappears with them, so its absence means "re-publish every `queued`
    step from the database" (the scheduler can rebuild every message from the database).
    The embedded broker keeps its files, so it never reports a loss.
    """

    KEY = "switchyard:broker-epoch"

    def __init__(self, settings: Settings):
        self.client = None
        if not settings.uses_embedded_broker:
            import redis

            self.client = redis.Redis.from_url(settings.resolved_broker_url, socket_timeout=5,
                                               socket_connect_timeout=5)

    def lost(self) -> bool:
        """True if the marker is missing: messages published before may be gone."""
        return self.client is not None and not self.client.exists(self.KEY)

    def mark(self) -> None:
        """Set the marker, after every message that should exist was published again."""
        if self.client is not None:
            self.client.set(self.KEY, "1")


class Doorbell:
    """Wakes a scheduler when a run has work.

    The ring carries nothing that matters (runs carry a `has_work` flag in the database); it only
    spares the scheduler from polling, and a lost ring costs at most one sweep interval. On Redis it
    is a short list the scheduler blocks on (one LPUSH a ring, on every step's path: a kombu publish
    costs several times that); on the embedded broker, a kombu queue.
    """

    MAX_PENDING = 100  # rings kept while no scheduler listens; one is enough to wake it
    # A ring waits at most this long for Redis (it is never worth more than a sweep interval).
    TIMEOUT_S = 2.0

    def __init__(self, app: Celery, queue_name: str, courier: Courier | None = None):
        """With a ``courier``, ``ring`` returns at once and the courier's thread rings (the API: a
        request never waits on the broker); without, ``ring`` rings before it returns."""
        self.app = app
        self.courier = courier
        self._lock = threading.Lock()
        self._ring_pending = False
        # The trace context the last ring heard carried (see take_trace).
        self._heard_trace: dict[str, str] | None = None
        url = app.conf.broker_url or ""
        self.key = f"switchyard:doorbell:{queue_name}"
        self.client = None
        if url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            self.url = url
            from orchestrator.redis_line import RedisLine

            self.client = redis.Redis.from_url(url, socket_timeout=self.TIMEOUT_S,
                                               socket_connect_timeout=self.TIMEOUT_S)
            self.line = RedisLine(self.client)
        exchange = Exchange(queue_name, type="direct", durable=False)
        self.queue = Queue(queue_name, exchange, routing_key=queue_name, durable=False)

    def ring(self, reason: str = "") -> None:
        """Wake a scheduler. With a courier, rings asked for while one waits to be sent are served by
        it: it is sent after they were asked for (its flag is cleared before it is sent), so after
        the commits that called for them."""
        if self.courier is None:
            self._ring_now(reason)
            return
        with self._lock:
            if self._ring_pending:
                return
            self._ring_pending = True
        if not self.courier.send(self._ring_pending_now, "doorbell"):
            with self._lock:
                self._ring_pending = False

    def _ring_pending_now(self) -> None:
        with self._lock:
            self._ring_pending = False
        self._ring_now("")

    def _ring_now(self, reason: str) -> None:
        try:
            if self.client is not None:
                # With tracing on, the ring carries the ringer's trace: the pass it wakes continues it.
                carrier = tracing.inject()
                value = json.dumps({"reason": reason, "trace": carrier}) if carrier else reason or "1"
                self.line.send([("LPUSH", self.key, value), ("LTRIM", self.key, 0, self.MAX_PENDING - 1)])
                return
            with self.app.producer_or_acquire() as producer:
                producer.publish(
                    {"reason": reason},
                    exchange=self.queue.exchange,
                    routing_key=self.queue.routing_key,
                    declare=[self.queue],
                    serializer="json",
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
                )
        except Exception as exc:  # noqa: BLE001 - the sweep is the safety net
            log.warning("could not wake the scheduler (%s); the next sweep will pick the work up", exc)

    def take_trace(self) -> dict[str, str] | None:
        """The trace context the last ring heard carried (once), for the pass it woke."""
        heard, self._heard_trace = self._heard_trace, None
        return heard

    @contextmanager
    def listening(self, max_wait_s: float) -> Iterator[Callable[[float], int]]:
        """A ``wait(timeout) -> rings`` function: block until a ring or ``timeout`` seconds (at most
        ``max_wait_s``), then take every ring that is waiting (one pass over the runs serves them all)."""
        if self.client is not None:
            with _RingListener(self, max_wait_s) as listener:
                yield listener.wait
            return
        with self.app.connection_for_read() as conn:
            simple_queue = conn.SimpleQueue(self.queue)

            def wait_kombu(timeout: float) -> int:
                try:
                    simple_queue.get(block=True, timeout=min(max(timeout, 0.001), max_wait_s)).ack()
                except Empty:
                    return 0
                rings = 1
                while True:
                    try:
                        simple_queue.get_nowait().ack()
                        rings += 1
                    except Empty:
                        return rings

            try:
                yield wait_kombu
            finally:
                try:
                    simple_queue.close()
                except Exception as exc:  # noqa: BLE001 - the connection may already be gone
                    log.debug("closing the wake queue failed: %s", exc)


class _RingListener:
    """Hears a Redis doorbell's rings on a thread of its own, while the scheduler's loop waits on a
    local condition with its own timeout. Redis serves a blocking pop's timeout at its clock's tick (100 ms
    at its default ``hz`` of 10) whenever nothing else wakes it: a 20 ms wait for the pace of admission
    took 100 ms, a 0.25 s one 0.3-0.4 s, and a window left empty that long drained the workers
    (make bench --only throughput)."""

    def __init__(self, doorbell: Doorbell, max_wait_s: float):
        import redis

        self.doorbell, self.max_wait_s = doorbell, max_wait_s
        # Its own connection, whose read timeout outlasts the longest pop (redis-py's default of 5 s
        # would cut a 5 s wait short and count it as a broken connection).
        self.client = redis.Redis.from_url(doorbell.url, socket_connect_timeout=5, socket_keepalive=True,
                                           socket_timeout=max_wait_s + 10)
        # Pushed to when the listener is closed, so its pop returns at once (a key of its own: no
        # other scheduler hears it).
        self.stop_key = f"{doorbell.key}:stop:{uuid.uuid4().hex}"
        self.heard = threading.Condition()
        self.rings = 0
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._listen, name="doorbell", daemon=True)

    def __enter__(self) -> _RingListener:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        try:
            # Expiring: a value the thread never pops (it had stopped already) does not stay behind.
            self.doorbell.line.send([("LPUSH", self.stop_key, 1), ("EXPIRE", self.stop_key, 60)])
            self.thread.join(timeout=self.doorbell.TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - Redis gone: the thread's pop fails with the closed connection
            log.debug("stopping the doorbell's listener failed: %s", exc)
        self.client.close()

    def _listen(self) -> None:
        try:
            while True:
                ring = self.client.blpop([self.stop_key, self.doorbell.key], timeout=self.max_wait_s)
                if ring is None:
                    continue
                if ring[0].decode() == self.stop_key:
                    return
                trace = _trace_of(ring[1])
                pipe = self.client.pipeline(transaction=False)
                pipe.llen(self.doorbell.key)
                pipe.delete(self.doorbell.key)
                waiting = pipe.execute()[0]
                with self.heard:
                    self.rings += 1 + waiting
                    self.doorbell._heard_trace = trace or self.doorbell._heard_trace
                    self.heard.notify_all()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting loop, which reconnects
            with self.heard:
                self.failure = exc
                self.heard.notify_all()

    def wait(self, timeout: float) -> int:
        """Block until a ring or ``timeout`` seconds (at most max_wait_s); the rings heard since the
        last wait (one pass over the runs serves them all). Raises what broke the listener's connection."""
        with self.heard:
            self.heard.wait_for(lambda: self.rings or self.failure, timeout=min(max(timeout, 0.0), self.max_wait_s))
            if self.failure is not None:
                raise self.failure
            rings, self.rings = self.rings, 0
        return rings


def _trace_of(value: bytes) -> dict[str, str] | None:
    """The trace context a ring carries, if it carries one."""
    if not value.startswith(b"{"):
        return None
    try:
        return dict(json.loads(value).get("trace") or {}) or None
    except (ValueError, AttributeError, TypeError):
        return None


class Courier:
    """Runs broker calls off the calling thread: a daemon thread of this process (started on first
    use, again in a forked child) makes them in order. A broker that stops answering then holds that
    thread, never a request. A call that finds ``capacity`` calls waiting is dropped and counted
    (``switchyard_broker_calls_dropped``): every call sent this way is covered by the database (the
    outbox and the sweep re-publish, a lost ring costs a sweep interval, a revoke is also a flag the
    heartbeat reads)."""

    def __init__(self, name: str, capacity: int = 10_000):
        self.name, self.capacity = name, capacity
        self._lock = threading.Lock()
        self._calls: queue.Queue | None = None
        self._pid: int | None = None

    def send(self, call: Callable[[], object], what: str) -> bool:
        """Queue ``call`` (named ``what`` in logs and metrics); False if it was dropped."""
        try:
            # Run in the caller's context: its log fields, and its trace (a step message published
            # for a request carries that request's trace context).
            self._queue().put_nowait((functools.partial(contextvars.copy_context().run, call), what))
            return True
        except queue.Full:
            process_metrics()["dropped"].labels(what).inc()
            log.warning("dropped a %s: %d broker calls are waiting (is the broker answering?); the sweep covers it",
                        what, self.capacity)
            return False

    def waiting(self) -> int:
        """Calls sent in this process and not yet started."""
        calls = self._calls
        return calls.qsize() if calls is not None and self._pid == os.getpid() else 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every call sent so far was made (True), or ``timeout`` seconds (False); for tests."""
        deadline = time.monotonic() + timeout
        while self._calls is not None and self._calls.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def _queue(self) -> queue.Queue:
        if self._pid != os.getpid():  # a forked child has no thread of its parent's
            with self._lock:
                if self._pid != os.getpid():
                    self._calls = queue.Queue(self.capacity)
                    threading.Thread(target=self._run, args=(self._calls,), name=self.name, daemon=True).start()
                    self._pid = os.getpid()
        return self._calls

    @staticmethod
    def _run(calls: queue.Queue) -> None:
        while True:
            call, what = calls.get()
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - best effort: the database covers a lost call
                log.warning("a %s off the request path failed (%s); the sweep covers it", what, exc)
            finally:
                calls.task_done()


# --- monitoring: what the broker and the workers say --------------------------------------------


def queue_depths(app: Celery, names: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting in each queue, read from the broker (on Redis, LLEN of the queue's lists, its
    priority lists included); 0 for a queue the broker does not know, None if the broker is down."""
    names = sorted(set(names))
    try:
        # A pooled connection: opening one per request cost GET /queues several milliseconds.
        with app.pool.acquire(block=True, timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.default_channel
            depths = {}
            for name in names:
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except conn.channel_errors:
                    depths[name] = 0  # never declared, or emptied and removed: nothing waits
            return depths
    except Exception as exc:  # noqa: BLE001 - monitoring answers "unknown" rather than failing
        log.warning("could not read queue depths from the broker: %s", exc)
        return {name: None for name in names}


def inspect_workers(app: Celery, timeout: float) -> dict[str, dict]:
    """{worker name: {"stats", "active_queues", "active"}} of the workers that answered Celery's inspect
    within ``timeout`` seconds (the three broadcasts run at once). Empty if nobody answered or the
    broker is down."""
    inspect = app.control.inspect(timeout=timeout)
    calls = {"stats": inspect.stats, "active_queues": inspect.active_queues, "active": inspect.active}
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {key: pool.submit(call) for key, call in calls.items()}
        answers = {}
        for key, future in futures.items():
            try:
                answers[key] = future.result() or {}
            except Exception as exc:  # noqa: BLE001 - no answer is an answer: nobody is listening
                log.warning("celery inspect %s failed: %s", key, exc)
                answers[key] = {}
    names = set().union(*(set(a) for a in answers.values()))
    return {name: {key: answers[key].get(name) for key in calls} for name in sorted(names)}
