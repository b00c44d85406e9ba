"""A step message a worker took from Redis and died with, before kombu recorded it as delivered (a
worker SIGKILLed while it waits in BRPOP): it is in no queue and in no unacked hash, and its step stays
`queued`. The sweep finds it missing at two sweeps in a row and publishes it again; the run succeeds.

Real processes (a scheduler, then a worker) on a database and a Redis db of the test's own; the dying
worker is played by a Redis client that pops the message and never acknowledges it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from orchestrator.broker import BrokerEpoch
from orchestrator.db import repository as repo
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.settings import Settings
from tests.integration.conftest import Api, Processes, publish, stack_of_its_own, start, wait_for
from tests.integration.invariants import assert_no_violations

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(tmp_path) -> Iterator[tuple[Settings, Processes]]:
    with stack_of_its_own("switchyard_vanished", tmp_path, lease_s=6.0, stranded_after_s=1.0) as stack:
        yield stack


def test_a_message_taken_by_a_worker_that_died_before_recording_it_is_published_again(own_stack, app_for):

    settings, procs = own_stack
    procs.start("scheduler", "scheduler")
    client = redis.Redis.from_url(settings.broker_url)
    # Its first sweep marks the broker (a broker without the mark lost everything: all is re-published).
    wait_for(lambda: client.exists(BrokerEpoch.KEY), 30, "the scheduler's first sweep", interval=0.2)
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        token = repo.create_token(session, "vanished", "admin", "vanished message test")[1]
    api = Api(app_for(settings).test_client(), token)
    workflow = publish(api, {"name": "one", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {}}]})
    run_id = start(api, workflow)

    # The dying worker: BRPOP takes the message from the queue's list, and nothing records it anywhere.
    popped = client.brpop([settings.default_queue], timeout=30)
    assert popped is not None, "the run's first step was never published"
    assert json.loads(popped[1])["headers"]["id"] == f"{run_id}.a.1"
    assert client.hlen("unacked") == 0

    procs.start("worker", "worker", "--concurrency", "1", "--pool", "prefork", "--loglevel", "INFO")
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["status"] == "succeeded", 60,
             "the vanished step to be published again and run", interval=0.2)
    assert "vanished from the broker" in procs.log_tail("scheduler", 200)
    assert_no_violations(settings)
