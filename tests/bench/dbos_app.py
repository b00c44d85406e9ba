"""DBOS Transact's side of `make bench` (tests/bench/bench_front.py): the same shapes as Switchyard's
and raw Celery's — a one-step workflow and a 10-step sequential workflow of no-op steps — on the same
PostgreSQL, each DBOS side with a system database of its own.

In process (the bench's own process: ``launch(url)``), a workflow runs on the caller's machine with its
steps checkpointed in PostgreSQL. Through a queue, the bench enqueues with ``DBOSClient`` and a worker
process started as ``python -m tests.bench.dbos_app <system database url>`` dequeues (polling every
0.1 s, DBOS's setting for a busy queue; its default is 1 s).
"""

from __future__ import annotations

import signal
import sys
import threading

from dbos import DBOS

APP_NAME = "switchyard-bench"
QUEUE_NAME = "bench"


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.workflow()
def one_step() -> int:
    return noop(0)


@DBOS.workflow()
def ten_steps() -> int:
    total = 0
    for i in range(10):
        total += noop(i)
    return total


def launch(system_database_url: str) -> None:
    """Launch DBOS in this process on ``system_database_url`` (its migrations run on first launch)."""
    DBOS(config={"name": APP_NAME, "system_database_url": system_database_url, "application_version": "bench",
                 "log_level": "WARNING", "console_log_level": "WARNING"})
    DBOS.launch()


def main() -> None:
    launch(sys.argv[1])
    # Only this process serves the queue: the bench's in-process DBOS (another system database) has none.
    DBOS.register_queue(QUEUE_NAME, polling_interval_sec=0.1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("dbos worker ready", flush=True)
    stop.wait()
    DBOS.destroy()


if __name__ == "__main__":
    main()
