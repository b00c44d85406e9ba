"""Finding step messages that vanished from Redis (orchestrator/vanished.py), on fakeredis: a message
waiting in its queue's list or delivered and unacknowledged is there; one in neither is missing, and
confirmed only when missing at two calls in a row."""

from __future__ import annotations

import json

import fakeredis

from orchestrator.broker import UNACKED
from orchestrator.vanished import VanishedWatch, missing_task_ids


def message(task_id: str) -> str:
    return json.dumps({"headers": {"id": task_id, "task": "switchyard.run_step"}, "body": ""})


def redis_with(waiting: list[str], delivered: list[str]):
    client = fakeredis.FakeRedis()
    for task_id in waiting:
        client.lpush("steps", message(task_id))
    client.lpush("steps\x06\x169", message("r.high.1"))  # a priority list of the queue
    for n, task_id in enumerate(delivered):
        client.hset(UNACKED, f"tag-{n}", json.dumps([json.loads(message(task_id)), "", "steps"]))
    client.hset(UNACKED, "not-a-task", "garbage")
    return client


def test_only_a_message_in_no_list_and_no_hash_is_missing():
    client = redis_with(waiting=["r.a.1"], delivered=["r.b.1"])
    queued = {"r.a.1": "steps", "r.b.1": "steps", "r.high.1": "steps", "r.c.1": "steps", "r.d.2": "other"}
    assert missing_task_ids(client, queued) == {"r.c.1", "r.d.2"}
    assert missing_task_ids(client, {}) == set()


def test_a_message_missing_once_is_not_confirmed():
    client = redis_with(waiting=[], delivered=[])
    watch = VanishedWatch()
    assert watch.confirm(client, {"r.a.1": "steps", "r.b.1": "steps"}) == set()  # suspects now
    client.lpush("steps", message("r.b.1"))  # it was in a worker's hands, and came back
    assert watch.confirm(client, {"r.a.1": "steps", "r.b.1": "steps"}) == {"r.a.1"}
    assert watch.confirm(client, {"r.a.1": "steps"}) == set()  # published again: suspected anew
