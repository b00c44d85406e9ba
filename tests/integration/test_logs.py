"""The worker processes' log lines about a run are JSON naming its tenant, run, step and attempt."""

from __future__ import annotations

import json

from tests.integration.conftest import publish, start, wait_for, wait_run


def run_lines(processes, run_id: str) -> list[dict]:
    found = []
    for name in ("worker1", "worker2", "scheduler"):
        path = processes.folder / f"{name}.log"
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and run_id in line:
                record = json.loads(line)
                if record.get("run_id") == run_id:
                    found.append({**record, "process": name})
    return found


def test_worker_lines_about_a_run_are_json_with_its_ids(api, engine_processes):
    workflow = publish(api, {"name": "logged", "steps": [
        {"id": "a", "type": "tool", "tool": "echo"},
        {"id": "b", "type": "tool", "tool": "fail", "needs": ["a"], "args": {"until_attempt": 2},
         "retry": {"max_attempts": 2, "backoff": "fixed", "initial_delay_s": 0.1, "jitter": False}},
    ]})
    run_id = start(api, workflow)
    assert wait_run(api, run_id)["status"] == "succeeded"

    def finished_lines():
        lines = [r for r in run_lines(engine_processes, run_id) if r["message"].startswith("attempt finished")]
        return len(lines) >= 3 and lines

    finished = wait_for(finished_lines, 10, "the workers to log three finished attempts")
    assert sorted((r["step_id"], r["attempt"]) for r in finished) == [("a", 1), ("b", 1), ("b", 2)]
    assert {r["tenant"] for r in finished} == {"acme"}
    assert {r["level"] for r in finished} == {"info"} and all(r["logger"] == "workers.tasks" for r in finished)
    assert any("error tool_failed" in r["message"] for r in finished if r["step_id"] == "b" and r["attempt"] == 1)


def test_api_lines_name_the_callers_tenant_and_the_run_in_the_url(settings, tokens, monkeypatch, app_for):
    import logging

    from api import auth
    from orchestrator import logs

    app = app_for(settings)
    # The probe route needs an access rule like every route (api.auth fails closed without one).
    monkeypatch.setitem(auth.ROUTE_ROLES, "log_probe", "viewer")
    app.add_url_rule("/api/v1/runs/<run_id>/log-probe", "log_probe",
                     lambda run_id: (logging.getLogger("api.probe").warning("probing"), ("", 204))[1])
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(logs.JsonFormatter())
    logging.getLogger("api.probe").addHandler(handler)
    try:
        response = app.test_client().get("/api/v1/runs/run_probe/log-probe",
                                         headers={"Authorization": f"Bearer {tokens['viewer']}"})
    finally:
        logging.getLogger("api.probe").removeHandler(handler)
    assert response.status_code == 204
    [line] = [json.loads(x) for x in lines]
    assert line["message"] == "probing" and line["tenant"] == "acme" and line["run_id"] == "run_probe"
