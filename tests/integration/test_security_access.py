"""Every route of the app against every role, and against a second tenant.

(Named test_security_* so it runs after test_api, whose "changes nothing" counters assume no
worker processes are running yet.)

Both tests walk ``app.url_map`` itself, so a route added without an access rule (or without a case
here) fails them; the expected roles below are written from docs/api.md ("Roles"), not read from api.auth.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from tests.integration.conftest import Api, publish, signed_in, unique, wait_for

# What docs/api.md ("Roles") asks of each endpoint: the least role, or "public" (no token), or "signed" (webhooks:
# a signature, never a bearer token).
EXPECTED = {
    "system.healthz": "public",
    "system.readyz": "public",
    "openapi.spec": "public",
    "workflows.list_workflows": "viewer",
    "workflows.archive": "admin",
    "schedules.put_schedule": "admin",
    "schedules.workflow_schedules": "viewer",
    "schedules.all_schedules": "viewer",
    "schedules.delete_schedule": "admin",
    "ui.schedule_save": "session",
    "ui.schedule_action": "session",
    "workflows.get_workflow": "viewer",
    "workflows.get_version": "viewer",
    "workflows.publish": "admin",
    "runs.list_runs": "viewer",
    "runs.get_run": "viewer",
    "runs.run_events": "viewer",
    "runs.step_items": "viewer",
    "runs.run_context": "viewer",
    "runs.start_run": "operator",
    "controls.act": "operator",
    "forks.fork": "operator",
    "forks.bulk_action": "operator",
    "forks.compare_runs": "viewer",
    "approvals.inbox": "viewer",
    "approvals.open_questions": "viewer",
    "approvals.decide": "operator",
    "approvals.answer": "operator",
    "events.post_event": "operator",
    "tokens.list_tokens": "admin",
    "tokens.create_token": "admin",
    "tokens.revoke_token": "admin",
    "webhooks.list_secrets": "admin",
    "webhooks.create_secret": "admin",
    "webhooks.receive": "signed",
    "files.download": "signed",
    "runs.run_diagnosis": "viewer",
    "policies.get_policy": "viewer",
    "policies.put_policy": "admin",
    "evidence.run_evidence": "viewer",
    "live.run_stream": "viewer",
    "live.tenant_stream": "viewer",
    "analytics.summary": "viewer",
    "analytics.timeseries": "viewer",
    "monitoring.queues": "viewer",
    "monitoring.workers": "viewer",
    "monitoring.metrics": "viewer",
    # The web UI, outside /api/v1: a bearer token opens none of it (issue 7).
    "ui.static": "public",
    **{f"ui.{name}": "session" for name in (
        "sign_in", "sign_out", "command", "command_panels", "decide", "answer", "runs", "run", "run_body",
        "control", "run_evidence", "run_stream", "tenant_stream", "workflows", "workflow", "start", "queues",
        "analytics", "editor", "editor_check", "editor_publish", "new_workflow", "versions_diff",
        "compare", "compare_with", "bulk", "step_items")},
}
RANKS = {"viewer": 1, "operator": 2, "admin": 3}
CALLERS = ("none", "bad", "viewer", "operator", "admin")


def routes(app, values: dict[str, str] | None = None):
    """(endpoint, method, path) for every rule and method of the app, every value of an `any(...)` part."""
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        choices = []
        for name in sorted(rule.arguments):
            converter = rule._converters[name]
            if hasattr(converter, "items"):
                choices.append([(name, item) for item in sorted(converter.items)])
            elif converter.regex in (r"\d+", r"-?\d+"):
                choices.append([(name, 1)])
            else:
                choices.append([(name, (values or {}).get(name, "nope"))])
        for combo, method in itertools.product(itertools.product(*choices), sorted(rule.methods - {"HEAD", "OPTIONS"})):
            yield rule.endpoint, method, adapter.build(rule.endpoint, dict(combo), method=method), dict(combo)


def test_every_endpoint_has_an_expected_role(app):
    assert {rule.endpoint for rule in app.url_map.iter_rules()} == set(EXPECTED)


def test_session_rules_are_the_uis_alone(app):
    """The cookie-checked rule kind never guards an API route: those need a bearer token."""
    from api import auth

    for rule in app.url_map.iter_rules():
        if auth.ROUTE_ROLES[rule.endpoint] == auth.SESSION or EXPECTED[rule.endpoint] == "session":
            assert rule.endpoint.startswith("ui.") and not rule.rule.startswith("/api/"), rule


def test_every_route_with_every_role(app, tokens):
    """No token / bad token: 401 unless public; a role below the rule: 403; otherwise the view runs.

    The requests carry no body and name things that do not exist, so an allowed call answers 200,
    400 or 404 and changes nothing.
    """
    client = app.test_client()
    checked = 0
    for (endpoint, method, path, _), caller in itertools.product(routes(app), CALLERS):
        headers = {"none": {}, "bad": {"Authorization": "Bearer sy_not_a_token"}}.get(
            caller, {"Authorization": f"Bearer {tokens.get(caller)}"})
        response = client.open(path, method=method, headers=headers)
        status, needed = response.status_code, EXPECTED[endpoint]
        # A live stream that was let in stays open: close it rather than read it to the end.
        text = "(a live stream)" if response.mimetype == "text/event-stream" else response.get_data(as_text=True)
        response.close()
        where = f"{caller} {method} {path} -> {status} {text[:200]}"
        assert status < 500, where
        if status >= 400:
            assert set(response.get_json()["error"]) == {"code", "message", "details"}, where
        if needed == "public":
            assert status not in (401, 403), where
        elif needed == "session":  # the UI: only the sign-in page without a session, no POST without CSRF
            if method == "POST":
                assert status == 403 and "csrf" in response.get_json()["error"]["message"].lower(), where
            elif endpoint == "ui.sign_in":
                assert status == 200, where
            else:
                assert status == 302 and response.location.startswith("/sign-in"), where
        elif needed == "signed":
            assert status == 401 and "signature" in response.get_json()["error"]["message"].lower(), where
        elif caller in ("none", "bad"):
            assert status == 401 and response.get_json()["error"]["code"] == "unauthorized", where
        elif RANKS[caller] < RANKS[needed]:
            assert status == 403 and response.get_json()["error"]["code"] == "forbidden", where
        else:
            assert status not in (401, 403), where
        checked += 1
    assert checked >= 5 * len(EXPECTED)


WAITING = {
    "name": "waits on people and the world",
    "steps": [
        {"id": "review", "type": "approval", "prompt": "ok?"},
        {"id": "ask", "type": "question", "question": "why?"},
        {"id": "hook", "type": "wait_event", "correlation_key": "{{ input.key }}"},
    ],
}


@pytest.fixture(scope="module")
def acme(app, tokens, engine_processes):
    """Tenant acme's things: a run waiting on an approval, a question and an event; a token."""
    api = Api(app.test_client(), tokens["admin"])
    workflow = publish(api, WAITING)
    key = unique("key")
    run = api.post("/runs", json={"workflow_id": workflow, "input": {"key": key}}).get_json()["id"]

    def all_waiting():
        body = api.get(f"/runs/{run}").get_json()
        return body if sum(s["status"] == "waiting" for s in body["steps"]) == 3 else None

    wait_for(all_waiting, 30, "the run to wait on its approval, question and event")
    approval = api.get("/approvals").get_json()["approvals"]
    question = api.get("/questions").get_json()["questions"]
    token = api.post("/tokens", json={"role": "viewer", "name": "acme's"}).get_json()
    return SimpleNamespace(
        api=api, workflow=workflow, run=run, key=key, token=token,
        approval=next(a["id"] for a in approval if a["run_id"] == run),
        question=next(q["id"] for q in question if q["run_id"] == run),
    )


def _ids(items):
    return {item["id"] for item in items}


def tenant_expectations(acme, other: Api):
    """For each endpoint: a function that calls it as the other tenant and checks acme stays hidden."""

    def not_found(method, path, body=None):
        def check():
            full = path if path.startswith("/api/v1/") else f"/api/v1{path}"
            response = other.client.open(full, method=method, json=body,
                                         headers=other._headers(None))
            assert response.status_code == 404, (method, path, response.get_json())
            assert response.get_json()["error"]["code"] == "not_found"
        return check

    def listing(path, key, hidden):
        def check():
            response = other.get(path)
            assert response.status_code == 200, response.get_json()
            assert hidden not in _ids(response.get_json()[key])
        return check

    def bulk_selects_nothing():  # another tenant's run ids match no run of the caller's
        response = other.post("/runs/bulk/cancel", json={"filter": {"run_ids": [acme.run]}})
        assert response.get_json() == {"matched": 0, "applied": 0, "skipped": [], "runs": []}

    def posts_event():
        response = other.post("/events", json={"correlation_key": acme.key, "payload": {"from": "globex"}})
        assert response.status_code == 202 and response.get_json()["delivered_to"] == []

    def publishes_its_own():
        response = other.put(f"/workflows/{acme.workflow}", json=WAITING)
        assert response.status_code == 201 and response.get_json()["version"] == 1
        assert acme.api.get(f"/workflows/{acme.workflow}").get_json()["version"] == 1

    def reads_its_own_policy():
        acme.api.put("/policy", json={"rules": [{"tool": "sleep", "decision": "deny"}]})
        try:
            assert other.get("/policy").get_json()["policy"]["rules"] == []
        finally:
            acme.api.put("/policy", json={})  # acme's runs in later tests must not meet this rule

    def sets_its_own_policy():
        assert other.put("/policy", json={"default": "deny"}).status_code == 200
        assert acme.api.get("/policy").get_json()["policy"]["default"] == "allow"
        other.put("/policy", json={})

    run, flow = acme.run, acme.workflow
    values = {"run_id": run, "workflow_id": flow, "approval_id": acme.approval, "question_id": acme.question,
              "token_id": acme.token["id"]}

    def every(endpoint, body=None):
        """A 404 check for each path of the endpoint (each action or decision), named with acme's ids."""
        app = acme.api.client.application
        return [not_found(method, path, body) for e, method, path, _ in routes(app, values) if e == endpoint]
    return {
        "system.healthz": [], "system.readyz": [], "openapi.spec": [],  # no tenant data
        "workflows.list_workflows": [listing("/workflows", "workflows", flow)],
        "workflows.get_workflow": [not_found("GET", f"/workflows/{flow}")],
        "workflows.get_version": [not_found("GET", f"/workflows/{flow}/versions/1")],
        "workflows.publish": [publishes_its_own],
        "workflows.archive": [not_found("DELETE", f"/workflows/{flow}")],
        "schedules.put_schedule": [not_found("PUT", f"/workflows/{flow}/schedules/nightly", {"cron": "0 3 * * *"})],
        "schedules.workflow_schedules": [not_found("GET", f"/workflows/{flow}/schedules")],
        "schedules.all_schedules": [],  # the caller's tenant's own: acme's schedules never show (test_schedules)
        "schedules.delete_schedule": [not_found("DELETE", f"/workflows/{flow}/schedules/nightly")],
        "runs.list_runs": [listing("/runs?limit=500", "runs", run),
                           listing(f"/runs?workflow_id={flow}", "runs", run)],
        "runs.get_run": [not_found("GET", f"/runs/{run}")],
        "runs.run_events": [not_found("GET", f"/runs/{run}/events")],
        "runs.step_items": [not_found("GET", f"/runs/{run}/steps/review/items")],
        "runs.run_context": [not_found("GET", f"/runs/{run}/context")],
        "runs.start_run": [not_found("POST", "/runs", {"workflow_id": flow, "input": {"key": "x"}})],
        "controls.act": every("controls.act"),
        "forks.fork": [not_found("POST", f"/runs/{run}/fork", {"from_step": "review"})],
        "forks.bulk_action": [bulk_selects_nothing],
        "forks.compare_runs": [not_found("GET", f"/runs/{run}/compare/{run}")],
        "approvals.inbox": [listing("/approvals?status=all", "approvals", acme.approval)],
        "approvals.open_questions": [listing("/questions?status=all", "questions", acme.question)],
        "approvals.decide": every("approvals.decide", {"comment": "no"}),
        "approvals.answer": [not_found("POST", f"/runs/{run}/questions/{acme.question}/answer", {"answer": 1})],
        "events.post_event": [posts_event],
        "tokens.list_tokens": [listing("/tokens", "tokens", acme.token["id"])],
        "tokens.create_token": [],  # creates a token of the caller's own tenant: nothing of acme's to name
        "tokens.revoke_token": [not_found("DELETE", f"/tokens/{acme.token['id']}")],
        "webhooks.list_secrets": [not_found("GET", f"/workflows/{flow}/webhook-secrets")],
        "webhooks.create_secret": [not_found("POST", f"/workflows/{flow}/webhook-secrets", {})],
        "webhooks.receive": [],  # no bearer token: the signature names the tenant (test_security_webhooks)
        "files.download": [],  # no bearer token: the signed URL is the permission (test_security_files)
        "runs.run_diagnosis": [not_found("GET", f"/runs/{run}/diagnosis")],
        "policies.get_policy": [reads_its_own_policy], "policies.put_policy": [sets_its_own_policy],
        "evidence.run_evidence": [not_found("GET", f"/runs/{run}/evidence")],
        "live.run_stream": [not_found("GET", f"/runs/{run}/events/stream")],
        # Aggregates and streams of the caller's tenant only: test_streams, test_analytics and test_metrics
        # check that another tenant's runs never show; queues and workers are shared by the installation.
        "live.tenant_stream": [], "analytics.summary": [], "analytics.timeseries": [],
        "monitoring.queues": [], "monitoring.workers": [], "monitoring.metrics": [],
        **ui_expectations(acme, other),
    }


def ui_expectations(acme, other: Api) -> dict:
    """The UI signed in as the other tenant: acme's run pages answer 404, its controls, decisions and
    answers change nothing (the test checks acme's run, approval and question after)."""
    ui = signed_in(other.client.application, other.token)
    run = acme.run

    def not_found(path):
        def check():
            response = ui.client.get(path)
            response.close()
            assert response.status_code == 404, (path, response.status_code)
        return check

    def refused(path, data=None):
        def check():
            response = ui.post(path, data or {})
            assert response.status_code == 302, (path, response.status_code)
            after = ui.client.get(response.location)  # acme's run page (404) or the Command Center's flash
            assert after.status_code == 404 or "not found" in after.get_data(as_text=True), path
        return check

    def bulk_changes_nothing():
        ui.post("/runs/selected", {"run_id": run, "action": "cancel", "back": "/runs"})
        assert "cancel: applied to 0 of 1." in ui.client.get("/runs").get_data(as_text=True)

    pages = ["sign_in", "sign_out", "command", "command_panels", "runs", "workflows", "start", "queues",
             "analytics", "tenant_stream", "workflow", "editor_check", "editor_publish", "new_workflow"]

    def a_new_workflow(path):  # the editor of another tenant's workflow id: a new workflow of one's own
        def check():
            page = ui.client.get(path).get_data(as_text=True)
            assert "new workflow" in page and "from v" not in page, path
        return check

    return {
        "ui.static": [],
        **{f"ui.{name}": [] for name in pages},  # the caller's own tenant only: the API behind them is checked above
        "ui.run": [not_found(f"/runs/{run}")],
        "ui.step_items": [not_found(f"/runs/{run}/steps/review/items")],
        "ui.compare": [not_found(f"/runs/{run}/compare/{run}")],
        "ui.compare_with": [],  # a redirect to ui.compare, checked above
        "ui.bulk": [bulk_changes_nothing],
        "ui.editor": [a_new_workflow(f"/workflows/{acme.workflow}/edit")],
        "ui.versions_diff": [not_found(f"/workflows/{acme.workflow}/diff")],
        "ui.schedule_save": [refused(f"/workflows/{acme.workflow}/schedules", {"schedule_id": "s", "cron": "* * * * *"})],
        "ui.schedule_action": [refused(f"/workflows/{acme.workflow}/schedules/s/delete")],
        "ui.run_body": [not_found(f"/runs/{run}/body")],
        "ui.run_evidence": [not_found(f"/runs/{run}/evidence")],
        "ui.run_stream": [not_found(f"/runs/{run}/stream")],
        "ui.control": [refused(f"/runs/{run}/cancel"), refused(f"/runs/{run}/pause")],
        "ui.decide": [refused(f"/runs/{run}/approvals/{acme.approval}/approve")],
        "ui.answer": [refused(f"/runs/{run}/questions/{acme.question}/answer", {"answer": "x"})],
    }


def test_another_tenant_sees_and_steers_nothing(app, tokens, acme):
    other = Api(app.test_client(), tokens["other_tenant"])
    cases = tenant_expectations(acme, other)
    assert set(cases) == {rule.endpoint for rule in app.url_map.iter_rules()}
    # Publishing under the same id makes the other tenant's own workflow: run it after the 404 checks.
    order = sorted(cases, key=lambda endpoint: endpoint == "workflows.publish")
    for endpoint in order:
        for check in cases[endpoint]:
            check()
    # acme's run, approval, question and token are untouched.
    run = acme.api.get(f"/runs/{acme.run}").get_json()
    assert run["status"] == "waiting" and sum(s["status"] == "waiting" for s in run["steps"]) == 3
    assert acme.approval in _ids(acme.api.get("/approvals").get_json()["approvals"])
    assert acme.question in _ids(acme.api.get("/questions").get_json()["questions"])
    assert acme.api.as_(acme.token["token"]).get("/runs?limit=1").status_code == 200
