"""A worker's own metrics: prefork children write them in multiprocess mode, the main process serves them."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Processes, publish, start, unique, wait_for, wait_run
from tests.integration.test_monitoring import free_port

pytestmark = pytest.mark.usefixtures("engine_processes")


def scrape(url: str) -> dict[tuple[str, tuple], float] | None:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_prefork_worker_serves_the_summed_metrics_of_its_children(api, settings, tmp_path):
    queue, port = unique("metered"), free_port()
    procs = Processes(settings, tmp_path)
    proc = procs.start("metered-worker", "worker", "--concurrency", "2", "--pool", "prefork", "--queues", queue,
                       env={"SWITCHYARD_METRICS_DIR": str(tmp_path / "metrics"),
                            "SWITCHYARD_WORKER_METRICS_PORT": str(port),
                            "SWITCHYARD_WORKER_METRICS_HOST": "127.0.0.1"})
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        def serving():
            assert proc.poll() is None, procs.log_tail("metered-worker")
            return scrape(url) is not None

        wait_for(serving, 30, "the worker's metrics endpoint")
        workflow = publish(api, {"name": "on the metered worker", "steps": [
            {"id": "a", "type": "tool", "tool": "echo", "queue": queue},
            {"id": "b", "type": "llm", "prompt": "x", "queue": queue,
             "script": [{"content": "y", "tokens_in": 11, "tokens_out": 7}]},
            {"id": "c", "type": "tool", "tool": "fail", "queue": queue, "args": {"until_attempt": 2},
             "retry": {"max_attempts": 2, "backoff": "fixed", "initial_delay_s": 0.1, "jitter": False}},
        ]})
        assert wait_run(api, start(api, workflow))["status"] == "succeeded"

        def counted():
            found = scrape(url) or {}
            return found.get(("switchyard_worker_attempt_duration_seconds_count", (("type", "tool"),))) == 3 and found

        found = wait_for(counted, 10, "the three tool attempts to be counted")
        assert found[("switchyard_worker_attempts_total", (("result", "succeeded"), ("type", "tool")))] == 2
        assert found[("switchyard_worker_attempts_total", (("result", "failed"), ("type", "tool")))] == 1
        assert found[("switchyard_worker_attempts_total", (("result", "succeeded"), ("type", "llm")))] == 1
        assert found[("switchyard_worker_usage_total", (("kind", "tokens_in"),))] == 11
        assert found[("switchyard_worker_usage_total", (("kind", "tool_calls"),))] == 3  # c called it twice
        assert found[("switchyard_worker_attempts_in_progress", (("type", "tool"),))] == 0
        assert list((tmp_path / "metrics").glob("*.db")), "the children wrote no multiprocess files"
    finally:
        procs.stop_all()
