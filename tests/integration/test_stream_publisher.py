"""The live streams' publisher on a real Redis: what one process commits for a run within the linger
goes out as one message on the run's channel; status changes still go one by one to the tenant's."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator import streams


def _committed(run_id: str, seqs: list[int], status: str, previous: str | None) -> list[dict]:
    """What one commit leaves for the publisher (repository._stage_written's shape)."""
    now = datetime.now(UTC)
    return [{"tenant_id": "t1", "run_id": run_id, "workflow_id": "wf", "previous_status": previous,
             "status": status, "waiting_on": None, "status_changed": previous is not None,
             "events": [{"seq": s, "type": f"e{s}", "step_id": "a", "attempt": 1, "data": {}, "created_at": now}
                        for s in seqs]}]


@pytest.fixture
def bus(broker_url):
    bus = streams.Bus(broker_url)
    yield bus
    bus.client.close()


def test_a_runs_commits_within_the_linger_go_out_as_one_message_in_order(bus):
    run_updates = bus.subscribe(streams.run_channel("run_p1"))
    tenant_updates = bus.subscribe(streams.tenant_channel("t1"))
    publisher = streams._Publisher(bus, linger_s=0.5)
    try:
        publisher.submit(_committed("run_p1", [1, 2], "running", "queued"))  # the run started, a step claimed
        publisher.submit(_committed("run_p1", [3, 4], "succeeded", "running"))  # its outcome, the run's end
        publisher.submit(_committed("run_p2", [7], "running", None))  # another run's, in the same batch
        assert publisher.wait_idle(5)
        message = run_updates.get(5)
        assert [e["seq"] for e in message["events"]] == [1, 2, 3, 4]
        assert message["status"] == "succeeded"  # the status after the last of them: a follower ends there
        assert run_updates.get(0.5) is None  # nothing more for this run: the two commits made one message
        changes = [tenant_updates.get(5), tenant_updates.get(5)]
        assert [(c["run_id"], c["status"], c["seq"]) for c in changes] == [("run_p1", "running", 2),
                                                                          ("run_p1", "succeeded", 4)]
    finally:
        run_updates.close()
        tenant_updates.close()
