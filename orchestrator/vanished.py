"""Step messages that vanished from Redis, and how the sweep finds them.

kombu's Redis transport delivers a message by BRPOP: Redis pops it from the queue's list as it sends it
to the worker, and only then does kombu record it in its ``unacked`` hash (where a dead worker's
messages are found: ``broker.stranded_attempts``). A worker killed while it waits in BRPOP (SIGKILL, an
OOM kill, its machine gone) can take a message popped in that instant with it: it is in no list and
in no hash, its step stays `queued` with nothing to run it, and no other safety net sees it (its outbox
row was deleted once it was published; the broker did not lose its other messages). Found by the
rolling-restart chaos scenario: one for-each item of 123 runs, never received by any worker.

The sweep asks for the `queued` attempts (not held, without an outbox row) queued more than
``SWITCHYARD_STRANDED_AFTER_S`` ago whose message is neither waiting in its queue nor delivered and
unacknowledged; one missing at two sweeps in a row is published again (once may be a message in a
worker's hands between Redis and the unacked hash). A message that was not lost after all makes a
duplicate, which the workers' claim guard drops.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from itertools import chain

from orchestrator.broker import UNACKED

# kombu keeps a queue's messages of priority p > 0 in lists of their own (its default steps 3, 6, 9).
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def missing_task_ids(client, queued: Mapping[str, str]) -> set[str]:
    """Of ``queued`` (a step message's task id -> its queue), the ids whose message is nowhere in Redis:
    not in its queue's lists, not in the unacked hash. The lists and the hash are read in one MULTI."""
    if not queued:
        return set()
    pipe = client.pipeline(transaction=True)
    for queue in sorted(set(queued.values())):
        for suffix in _PRIORITY_SUFFIXES:
            pipe.lrange(queue + suffix, 0, -1)
    pipe.hvals(UNACKED)
    *lists, unacked = pipe.execute()
    present = {_task_id(raw, delivered=False) for raw in chain.from_iterable(lists)}
    present |= {_task_id(raw, delivered=True) for raw in unacked}
    return set(queued) - present


def _task_id(raw: bytes, delivered: bool) -> str | None:
    """The task id of a message as kombu stores it (in the unacked hash: [message, exchange, routing key])."""
    try:
        message = json.loads(raw)
        return (message[0] if delivered else message)["headers"]["id"]
    except (TypeError, ValueError, KeyError, IndexError):
        return None  # not a task message


class VanishedWatch:
    """The attempts found missing at the previous sweep: only one missing twice in a row is confirmed."""

    def __init__(self):
        self.suspects: set[str] = set()

    def confirm(self, client, queued: Mapping[str, str]) -> set[str]:
        """The task ids of ``queued`` missing now and at the previous call (see the module's doc)."""
        missing = missing_task_ids(client, queued)
        confirmed = missing & self.suspects
        self.suspects = missing - confirmed
        return confirmed
