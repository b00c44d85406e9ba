"""Step messages on the real Redis broker: publish_steps skips Celery's per-message queue declaration
on kombu's virtual transports, so a message must still land in the queue its step names, whether or
not any worker declared that queue, with the ids, task id and time limits a worker needs."""

from __future__ import annotations

import json

import redis

from orchestrator import broker
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings


def test_step_messages_land_in_their_queues_undeclared(broker_url, tmp_path):
    app = broker.make_celery(Settings(broker_url=broker_url, data_dir=tmp_path))
    messages = [StepMessage("run_p1", "a", 1, "publish.test.one", 30.0),
                StepMessage("run_p1", "b", 2, "publish.test.two", 12.5),
                StepMessage("run_p2", "a", 1, "publish.test.one", 30.0)]
    client = redis.Redis.from_url(broker_url)
    assert client.llen("publish.test.one") == client.llen("publish.test.two") == 0
    broker.publish_steps(app, messages, cancel_grace_s=5.0)
    broker.publish_steps(app, [StepMessage("run_p3", "c", 1, "publish.test.two", 1.0)], cancel_grace_s=5.0)
    found: dict[str, list] = {}
    for queue in ("publish.test.one", "publish.test.two"):
        for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSH: the oldest is last
            headers = json.loads(raw)["headers"]
            found.setdefault(queue, []).append((headers["argsrepr"], headers["id"], headers["timelimit"]))
    assert found == {
        "publish.test.one": [("['run_p1', 'a', 1]", messages[0].task_id, [35.0, 30.0]),
                             ("['run_p2', 'a', 1]", messages[2].task_id, [35.0, 30.0])],
        "publish.test.two": [("['run_p1', 'b', 2]", messages[1].task_id, [17.5, 12.5]),
                             ("['run_p3', 'c', 1]", StepMessage("run_p3", "c", 1, "x", 1.0).task_id, [6.0, 1.0])],
    }
