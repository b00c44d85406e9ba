"""Counts the round trips of one step on the hot path, in process, on the bench's database and broker.

A two-step run (``a`` then ``b``) on a queue no worker reads goes through what the processes do for a
step: the scheduler's pass that dispatches ``a``, the worker's claim, its outcome write, its doorbell,
and the scheduler's pass that records the step's effect and dispatches ``b``. SQL statements are counted
with ``before_cursor_execute``, transactions with ``commit``/``rollback`` (each a BEGIN and a COMMIT
on the wire), and Redis requests by the commands redis-py sends (a pipeline is one request). Celery's
own traffic around a task (BRPOP, the late ack, the task events) is the same as the raw baseline's
and is not counted here.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager

import redis.connection
from sqlalchemy import event


@contextmanager
def _counting(engine):
    counts: Counter = Counter()

    def statement(*_args, **_kw):
        counts["sql"] += 1

    def commit(*_args):
        counts["transactions"] += 1

    original = redis.connection.AbstractConnection.send_packed_command

    def send(self, command, check_health=True):
        # The live streams' publisher sends from a thread of its own, off the step's path.
        off_path = threading.current_thread().name == "switchyard-stream-publisher"
        counts["stream publishes" if off_path else "redis"] += 1
        return original(self, command, check_health)

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    event.listen(engine, "rollback", commit)
    redis.connection.AbstractConnection.send_packed_command = send
    try:
        yield counts
    finally:
        redis.connection.AbstractConnection.send_packed_command = original
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)
        event.remove(engine, "rollback", commit)


def _trips(counts: Counter) -> dict[str, int]:
    return {"sql statements": counts["sql"], "transactions": counts["transactions"],
            "db round trips": counts["sql"] + 2 * counts["transactions"], "redis requests": counts["redis"],
            "stream publishes": counts["stream publishes"]}


def count(settings, sessions, engine, celery, tenant: str) -> str:
    """One line per phase of the hot path, and the total per step; the scheduler must not be running."""
    from orchestrator import broker, outcomes, service, streams
    from orchestrator.catalog import DefinitionCatalog
    from orchestrator.db.session import transaction
    from orchestrator.scheduler import Scheduler

    publisher = streams.install_publisher(sessions, streams.make_bus(settings))
    steps = [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}, "queue": "bench.census"},
             {"id": "b", "type": "tool", "tool": "echo", "args": {"text": "x"}, "queue": "bench.census",
              "needs": ["a"]}]
    with transaction(sessions) as session:
        service.publish_workflow(session, settings, tenant, "census", {"name": "census", "steps": steps})
        run_id = service.start_run(session, settings, tenant, "census", None, {})[0].id
    scheduler = Scheduler(settings, sessions, celery)
    doorbell = broker.Doorbell(celery, settings.wake_queue)
    catalog = DefinitionCatalog()
    scheduler.advance_batch()  # warm: run_started and the dispatch of `a`, outside the count
    catalog.get_many(sessions(), [(tenant, "census", 1)])  # a worker has the definition after its first step
    doorbell.ring("warm")  # and a connection to Redis

    def settled() -> None:  # the live streams' publishes of a phase are counted with it
        if publisher is not None:
            publisher.wait_idle(5)

    phases: dict[str, dict[str, int]] = {}
    with _counting(engine) as c:
        with transaction(sessions) as session:
            assert outcomes.claim_attempt(session, catalog, run_id, "a", 1, "census", settings.lease_s)
        settled()
    phases["claim"] = _trips(c)
    with _counting(engine) as c:
        with transaction(sessions) as session:
            outcomes.record_outcome(session, catalog, run_id, "a", 1, outcomes.Outcome(output={"text": "x"}),
                                    prices=settings.prices)
        settled()
    phases["record outcome"] = _trips(c)
    with _counting(engine) as c:
        doorbell.ring(run_id)
        settled()
    phases["doorbell"] = _trips(c)
    with _counting(engine) as c:
        scheduler.drain()
        settled()
    phases["scheduler pass (dispatches the next step)"] = _trips(c)
    total = Counter()
    for trips in phases.values():
        total.update(trips)
    lines = [f"{name}: {trips['db round trips']} db ({trips['sql statements']} statements in "
             f"{trips['transactions']} transactions), {trips['redis requests']} redis, "
             f"{trips['stream publishes']} live-stream publish(es) off the path" for name, trips in phases.items()]
    lines.append(f"total per step: {total['db round trips']} db round trips in {total['transactions']} transactions, "
                 f"{total['redis requests']} redis requests on the path, {total['stream publishes']} live-stream "
                 "publishes off it")
    return "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
