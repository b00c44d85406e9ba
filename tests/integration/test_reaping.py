"""A graceful cancel lets two running attempts run on; then their worker dies (SIGKILL, pool and all).
The run is already cancelled, so nothing will report for those attempts: the sweep flags the run once
their leases expire, and the scheduler's pass stops them as the cancel would have (`cancelled`, reason
`run_stopped`) within a lease and a sweep, leaving no step in flight in the ended run."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import Processes, by_id, events, publish, start, unique, wait_for
from tests.integration.invariants import assert_no_violations

pytestmark = pytest.mark.usefixtures("engine_processes")


def test_steps_a_graceful_cancel_left_running_are_cancelled_when_their_worker_dies(api, settings, artifacts):
    queue = unique("reap")  # a worker of its own, so only it holds these attempts
    procs = Processes(settings, artifacts)
    procs.start("reap-worker", "worker", "--concurrency", "2", "--pool", "prefork", "-Q", queue)
    try:
        workflow = publish(api, {"name": "reaped", "steps": [
            {"id": "left", "type": "tool", "tool": "sleep", "queue": queue, "args": {"seconds": 120}},
            {"id": "right", "type": "tool", "tool": "sleep", "queue": queue, "args": {"seconds": 120}},
            {"id": "join", "type": "tool", "tool": "echo", "needs": ["left", "right"], "args": {}},
        ]})
        run_id = start(api, workflow)

        def both_running():
            steps = by_id(api.get(f"/runs/{run_id}").get_json())
            return steps["left"]["status"] == steps["right"]["status"] == "running"

        wait_for(both_running, 60, "both sleeps to run on the test's worker")
        response = api.post(f"/runs/{run_id}/cancel", json={"mode": "graceful"})
        assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
        assert both_running(), "a graceful cancel lets running attempts run on"
        procs.stop("reap-worker", kill=True)
        died_at = time.monotonic()
    finally:
        procs.stop_all()

    def reaped():
        steps = by_id(api.get(f"/runs/{run_id}").get_json())
        return steps["left"]["status"] == steps["right"]["status"] == "cancelled"

    # A lease and a sweep, and a little for the pass that follows the sweep on a busy machine.
    bound = settings.lease_s + settings.sweep_interval_s
    wait_for(reaped, bound + 3, f"both steps cancelled within a lease and a sweep ({bound:g} s)", interval=0.1)
    took = time.monotonic() - died_at
    run = api.get(f"/runs/{run_id}").get_json()
    assert run["status"] == "cancelled"
    assert by_id(run)["join"]["status"] == "skipped"
    stopped = [e for e in events(api, run_id) if e["type"] == "step_cancelled" and e["step_id"] in ("left", "right")]
    assert sorted(e["step_id"] for e in stopped) == ["left", "right"]
    assert all(e["data"]["reason"] == "run_stopped" for e in stopped)
    assert_no_violations(settings, [run_id], within_s=0)
    print(f"\nreaping: both steps cancelled {took:.1f} s after their worker died (lease {settings.lease_s:g} s, "
          f"sweep {settings.sweep_interval_s:g} s)")
