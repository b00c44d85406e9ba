"""Templates cannot reach Python internals (400 at publish, or a clear step error at run time), and
no secret (the provider's API key, a webhook secret) appears in a run's events, its answers or the
processes' logs."""

from __future__ import annotations

import json
import logging
import time

import pytest

from orchestrator.webhooks import signature_header
from tests.integration.conftest import events, publish, start, wait_run

REFUSED = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ input|attr('__class__') }}",
    "{{ input['__class__'] }}",
    "{{ self._TemplateReference__context }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
]


@pytest.mark.parametrize("template", REFUSED)
def test_a_template_naming_python_internals_is_refused_at_publish(api, template):
    definition = {"name": "ssti", "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {"t": template}}]}
    response = api.put("/workflows/ssti", json=definition)
    assert response.status_code == 400, response.get_json()
    problems = response.get_json()["error"]["details"]["problems"]
    assert any("steps.0.args.t" in p and "Python internal" in p for p in problems), problems


def test_data_keys_with_an_underscore_are_still_fine(api):
    publish(api, {"name": "ok", "steps": [{"id": "a", "type": "tool", "tool": "echo",
                                             "args": {"t": "{{ input._id }} {{ input['_rev'] }}"}}]})


def test_a_computed_name_is_stopped_by_the_sandbox_at_run_time(api, engine_processes):
    workflow = publish(api, {"name": "sneaky", "steps": [
        {"id": "a", "type": "tool", "tool": "echo", "args": {"t": "{{ input | attr(input.k) }}"},
         "retry": {"max_attempts": 3, "initial_delay_s": 0}}]})
    run = wait_run(api, start(api, workflow, {"k": "__class__"}))
    assert run["status"] == "failed"
    step = run["steps"][0]
    assert step["error"]["code"] == "template_error" and "unsafe" in step["error"]["message"]
    assert step["attempt"] == 1  # a template error is permanent: no retry


def test_no_secret_in_events_answers_or_logs(api, engine_processes, settings, fake_llm, caplog):
    """A webhook starts a run whose LLM calls carry the provider key; one endpoint echoes the key in
    its error. Neither the key nor the webhook secret may appear anywhere the run is recorded."""
    caplog.set_level(logging.DEBUG)
    workflow = publish(api, {"name": "uses secrets", "steps": [
        {"id": "ask", "type": "llm", "model": "openai/fake", "prompt": "Summarise {{ input.ticket }}"},
        {"id": "leak", "type": "llm", "needs": ["ask"], "model": "openai/leaky", "prompt": "again",
         "retry": {"max_attempts": 1}},
    ]})
    hook_secret = api.post(f"/workflows/{workflow}/webhook-secrets").get_json()["secret"]
    body = json.dumps({"ticket": "the printer"}).encode()
    started = api.client.post(f"/api/v1/hooks/{workflow}", data=body, headers={
        "X-Switchyard-Signature": signature_header(hook_secret, int(time.time()), body)})
    assert started.status_code == 201, started.get_json()
    run = wait_run(api, started.get_json()["id"])

    assert run["status"] == "failed" and run["trigger_type"] == "webhook"
    steps = {s["id"]: s for s in run["steps"]}
    assert steps["ask"]["status"] == "succeeded"
    assert steps["leak"]["error"]["code"] == "llm_error" and "[redacted]" in steps["leak"]["error"]["message"]
    used = [r["auth"] for r in fake_llm.requests if r["body"]["model"] in ("fake", "leaky")]
    assert used and all(auth == f"Bearer {settings.openai_api_key}" for auth in used)  # the key was really sent

    recorded = {
        "run": json.dumps(run),
        "events": json.dumps(events(api, run["id"])),
        "context": api.get(f"/runs/{run['id']}/context").get_data(as_text=True),
        "list": api.get(f"/runs?workflow_id={workflow}").get_data(as_text=True),
        "api log": caplog.text,
        **{f"{name} log": engine_processes.log_tail(name, 100000) for name in ("worker1", "worker2", "scheduler")},
    }
    for where, text in recorded.items():
        for secret in (settings.openai_api_key, hook_secret):
            assert secret not in text, f"a secret appears in the {where}"
