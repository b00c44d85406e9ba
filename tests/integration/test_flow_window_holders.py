"""A step that holds no message and no worker takes no place in its queue's dispatch window: a for-each
step (its items hold the places) and a sub-workflow step (its child run's steps do) are `running` while
their items or child run, and counted as places they would fill a small window with steps that can
only end once the steps they keep out have run. Found by the PostgreSQL chaos scenario (1,000 runs,
window 32: 17 for-each and 16 sub-workflow steps `running` held every other message of the queue for
good). Real processes, on a stack of the test's own with a window of 2."""

from __future__ import annotations

import pytest

from tests.integration.conftest import publish, start, wait_for
from tests.integration.flow_stack import flow_stack

pytestmark = pytest.mark.integration

WINDOW, RUNS = 2, 4


def test_for_each_and_sub_workflow_steps_leave_the_window_to_the_steps_that_run(settings, artifacts):
    queue = "flow.holders"
    with flow_stack(settings, artifacts, tenants=("holders",), workers={"w": (queue, 4)},
                    windows={queue: WINDOW}) as stack:
        api = stack.api("holders")
        child = publish(api, {"name": "child", "steps": [
            {"id": "leaf", "type": "tool", "tool": "echo", "args": {}, "queue": queue}]})
        workflow = publish(api, {"name": "holders", "steps": [
            {"id": "items", "type": "tool", "tool": "echo", "for_each": "input.parts", "max_parallel": 1,
             "args": {"part": "{{ item }}"}, "queue": queue},
            {"id": "sub", "type": "workflow", "workflow_id": child, "input": {}, "queue": queue},
        ]})
        # More for-each and sub-workflow steps running at once than the window has places.
        run_ids = [start(api, workflow, {"parts": [0, 1, 2]}) for _ in range(RUNS)]

        def statuses() -> list[str]:
            return [api.get(f"/runs/{r}").get_json()["status"] for r in run_ids]

        wait_for(lambda: all(s in ("succeeded", "failed", "cancelled") for s in statuses()), 60,
                 f"{RUNS} runs with {2 * RUNS} for-each and sub-workflow steps to end through a window of {WINDOW}",
                 interval=0.2)
        assert statuses() == ["succeeded"] * RUNS

