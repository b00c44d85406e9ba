"""The OpenAPI 3.1 document, ``GET /api/v1/openapi.json``, built from the app itself.

Paths and path parameters come from the app's url_map; request bodies from the pydantic models the
views validate with (api/schemas.py); answers from api/responses.py. ``OPERATIONS`` says, per
endpoint, what the url_map cannot: the summary, query parameters, body and answers. A url_map rule
without an entry here makes ``build`` fail, and a test checks that every rule is in the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import operator_responses, schemas
from api import responses as R
from api import schedules as schedule_api
from api.auth import PUBLIC, ROUTE_ROLES, SIGNED
from orchestrator import schedules
from orchestrator.states import RunStatus, StepStatus

bp = Blueprint("openapi", __name__)

ERROR_TEXT = {400: "invalid_request (or runtime_not_applicable)", 401: "unauthorized: no, unknown or revoked token",
              403: "forbidden: role too low", 404: "not_found: no such thing in this tenant",
              409: "invalid_transition, idempotency_conflict or workflow_archived", 413: "payload_too_large",
              429: "rate_limited: over the tenant's rate limit; see Retry-After",
              503: "unavailable: the database does not answer; see Retry-After"}
# The codes of a step's `error` (and of a failed run's, which names its `step_id`) that the engine, the
# built-in tools and the providers set: code -> (retryable, when). A project's tool may add its own.
# docs/api.md, "Step errors", holds the same table (a test compares them).
STEP_ERRORS: dict[str, tuple[bool | None, str]] = {
    "invalid_arguments": (False, "a tool's arguments do not fit its argument schema (or its own checks), as "
                                 "rendered; literal ones are refused at publish"),
    "policy_denied": (False, "the workflow's or tenant's policy denied the tool call"),
    "template_error": (False, "a template or expression failed to render (an undefined name, 1/0)"),
    "unknown_tool": (False, "the tool is not installed on the worker that took the step"),
    "invalid_model": (False, "the step's model names no known provider"),
    "invalid_step": (False, "the step's type does not run on a worker"),
    "approval_rejected": (False, "a person rejected the approval (or the gated tool call of a tool step)"),
    "event_timeout": (False, "no event came before a wait_event step's timeout_s"),
    "max_turns_exceeded": (False, "an agent did not answer within max_turns"),
    "invalid_for_each": (False, "for_each did not evaluate to a list"),
    "too_many_items": (False, "for_each gave more than SWITCHYARD_MAX_FOR_EACH_ITEMS items"),
    "too_few_succeeded": (False, "fewer items than min_succeeded can still succeed"),
    "max_depth_exceeded": (False, "a sub-run would nest deeper than SWITCHYARD_MAX_RUN_DEPTH"),
    "child_run_failed": (True, "a workflow step's child run failed or was cancelled (a retry starts a new child)"),
    "timeout": (True, "an attempt ran past its timeout_s"),
    "worker_lost": (True, "the worker holding the attempt stopped (its lease ran out)"),
    "step_error": (True, "the executor or tool raised an unexpected exception"),
    "tool_failed": (True, "the fail tool failed on purpose"),
    "http_error": (True, "http.request could not reach the server"),
    "http_status": (None, "http.request got an error status: retryable for 5xx and 429, not for other 4xx (the "
                    "details keep the first 4,096 characters of the body)"),
    "http_redirects": (False, "http.request was redirected more than 5 times, or to a URL that is not http(s)"),
    "storage_error": (True, "file.write could not store the file"),
    "llm_unavailable": (True, "the model endpoint is unreachable, answered 429 or 5xx, or a rate limit wait ran out"),
    "llm_error": (None, "the model endpoint refused the request (4xx: not retryable) or sent no chat completion"),
    "run_stopped": (False, "the step was stopped because its run failed elsewhere or was cancelled"),
}


def _step_error_schema() -> dict[str, Any]:
    rows = "\n".join(f"- `{code}` ({'retryable' if again else 'not retryable' if again is False else 'depends'}): "
                     f"{when}" for code, (again, when) in STEP_ERRORS.items())
    return {"title": "StepError", "type": "object", "required": ["code", "message"],
            "description": "A step's `error` (a failed run's `error` is the same, with `step_id`).",
            "properties": {"code": {"type": "string", "examples": list(STEP_ERRORS),
                                    "description": f"What went wrong; the engine's codes:\n{rows}"},
                           "message": {"type": "string"}, "retryable": {"type": "boolean"},
                           "details": {"type": "object"}}}


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "required": True,
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def limit(default: int, high: int) -> dict[str, Any]:
    return query("limit", {"type": "integer", "minimum": 1, "maximum": high, "default": default},
                 f"Page size, 1-{high}.")


TRIGGERED_BY = query("triggered_by", {"type": "string", "minLength": 1, "maxLength": 200},
                     "A name recorded on the audit trail.")


SINCE = query("since", {"type": "string"}, "An RFC 3339 time, or a span back from now: 90m, 24h, 7d.")

ANY_JSON: dict[str, Any] = {"description": "Any JSON value; it becomes the run's input."}


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from an answer to the next call (schemathesis' stateful phase follows them)."""

    name: str
    endpoint: str
    parameters: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        link: dict[str, Any] = {"operationId": self.endpoint.replace(".", "_")}
        if self.parameters:
            link["parameters"] = self.parameters
        if self.body is not None:
            link["requestBody"] = self.body
        return link


def run_links(pointer: str) -> tuple[Link, ...]:
    """Links to what can be done with the run whose id is at ``pointer`` of the answer."""
    run_id = {"run_id": f"$response.body#{pointer}"}
    return (Link("GetRun", "runs.get_run", run_id), Link("GetEvents", "runs.run_events", run_id),
            Link("GetContext", "runs.run_context", run_id), Link("Act", "controls.act", run_id))


def workflow_links(pointer: str) -> tuple[Link, ...]:
    """Links to what can be done with the workflow whose id is at ``pointer`` of the answer."""
    ref = f"$response.body#{pointer}"
    return (Link("StartRun", "runs.start_run", body={"workflow_id": ref}),
            Link("GetWorkflow", "workflows.get_workflow", {"workflow_id": ref}),
            Link("CreateWebhookSecret", "webhooks.create_secret", {"workflow_id": ref}))


@dataclass(frozen=True)
class Op:
    summary: str
    ok: tuple[int, type[BaseModel] | None]  # None: the answer is a file, not JSON
    body: type[BaseModel] | dict[str, Any] | None = None  # a model, or a JSON Schema as it is
    body_required: bool = True
    query: tuple[dict[str, Any], ...] = ()
    headers: tuple[dict[str, Any], ...] = ()
    errors: tuple[int, ...] = ()
    other_ok: dict[int, type[BaseModel]] = field(default_factory=dict)
    links: tuple[Link, ...] = ()  # from every success answer
    media: str = "application/octet-stream"  # the success answer's type when it is not JSON


OPERATIONS: dict[str, Op] = {
    "system.healthz": Op("Liveness: the process answers.", (200, R.Status)),
    "system.readyz": Op("Readiness: the database answers.", (200, R.Status), errors=(503,)),
    "openapi.spec": Op("This document.", (200, R.Document)),
    "workflows.list_workflows": Op("The tenant's workflows (the archived ones instead with archived=true).",
                                   (200, R.WorkflowList), query=(query("archived", {"type": "string", "enum": [
                                       "true", "false"], "default": "false"}),),
                                   links=workflow_links("/workflows/0/id")),
    "workflows.get_workflow": Op("A workflow: latest definition and its versions.", (200, R.Workflow)),
    "workflows.get_version": Op("One immutable version of a workflow; a negative number is the definition a fork "
                                "with step overrides runs (POST /runs/{run_id}/fork), never listed.",
                                (200, R.WorkflowVersion)),
    "workflows.publish": Op("Publish a new version of a definition; with dry_run=true only check it (the same 400s, "
                            "nothing stored, 200 with the version it would become).", (201, R.WorkflowVersion),
                            schemas.Definition, other_ok={200: R.WorkflowVersion},
                            query=(query("dry_run", {"type": "string", "enum": ["true", "false"], "default": "false"}),),
                            links=(*workflow_links("/id"), Link("GetVersion", "workflows.get_version", {
                                "workflow_id": "$response.body#/id", "number": "$response.body#/version"}))),
    "workflows.archive": Op("Archive a workflow: starting it answers 409 workflow_archived until a new version "
                            "is published; its runs are left as they are.", (200, R.Workflow)),
    "schedules.put_schedule": Op("Create or replace a cron schedule of the workflow (it starts afresh from now); "
                                 "200 when replaced. A cron or timezone that cannot be read is a 400 naming "
                                 "the field.", (201, schedule_api.Schedule), schedules.ScheduleBody,
                                 other_ok={200: schedule_api.Schedule}),
    "schedules.workflow_schedules": Op("The workflow's schedules, each with its next five fire times.",
                                       (200, schedule_api.ScheduleList)),
    "schedules.all_schedules": Op("Every schedule of the tenant.", (200, schedule_api.ScheduleList)),
    "schedules.delete_schedule": Op("Delete a schedule.", (204, None)),
    "runs.list_runs": Op("The tenant's runs, newest first.", (200, R.RunPage), query=(
        query("status", {"type": "string", "enum": [s.value for s in RunStatus]}),
        query("workflow_id", {"type": "string"}),
        query("parent_run_id", {"type": "string"}, "Only the child runs of this run."),
        limit(50, 500),
        query("cursor", {"type": "string"}, "next_cursor of the previous page."),
    ), links=run_links("/runs/0/id")),
    "runs.get_run": Op("A run with its steps.", (200, R.Run)),
    "runs.run_events": Op("A run's event log after a sequence number.", (200, R.EventPage), query=(
        query("after", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0}), limit(1000, 5000),
    )),
    "runs.step_items": Op("A for-each step's items in index order, a page at a time; 400 for a step that is "
                          "not a for-each step.", (200, R.ItemPage), query=(
                              query("status", {"type": "string", "enum": [s.value for s in StepStatus]}),
                              limit(50, 500),
                              query("cursor", {"type": "string"}, "next_cursor of the previous page."))),
    "runs.run_context": Op("A run's input and step outputs.", (200, R.RunContext)),
    "runs.start_run": Op("Start a run.", (201, R.Run), schemas.StartRun, other_ok={200: R.Run}, errors=(409,),
                         links=run_links("/id"),
                         query=(TRIGGERED_BY,), headers=({
                             "name": "Idempotency-Key", "in": "header", "required": False,
                             "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                             "description": "The same key and body answer the first run (200); another body 409."},)),
    "controls.act": Op("Pause, resume, cancel, retry or rerun a run (rerun answers 201 with the new run).",
                       (200, R.Run), schemas.ControlBody, body_required=False, query=(TRIGGERED_BY,),
                       errors=(409,), other_ok={201: R.Run}, links=run_links("/id")),
    "forks.fork": Op("Fork a run that ended from one of its steps: a new run (201) where that step and every step "
                     "after it run anew (with a new input, input patch, step overrides or version if given), and "
                     "the steps that do not depend on it and succeeded keep their output (`reused`, no usage "
                     "charged).", (201, R.Run), schemas.ForkBody, query=(TRIGGERED_BY,), errors=(409,),
                     links=run_links("/id")),
    "forks.bulk_action": Op("Apply one action to every run a filter selects (at most `limit`, newest first), each "
                            "through the single-run state machine in its own transaction; a run in the wrong state "
                            "is listed in `skipped`. `dry_run` changes nothing.", (200, operator_responses.BulkResult),
                            schemas.BulkBody, query=(TRIGGERED_BY,)),
    "forks.compare_runs": Op("Two runs side by side, step by step in graph order: status, attempts, duration, "
                             "tokens and credits in each, whether input and output changed (with a JSON Patch), "
                             "and the first step that diverges.", (200, operator_responses.Comparison)),
    "approvals.inbox": Op("The tenant's approvals.", (200, R.ApprovalList), query=(
        query("status", {"type": "string", "enum": ["pending", "decided", "approved", "rejected", "changes_requested",
                                                     "cancelled", "all"], "default": "pending"},
              "decided: approved, rejected or changes_requested."), limit(100, 500))),
    "approvals.open_questions": Op("The tenant's questions.", (200, R.QuestionList), query=(
        query("status", {"type": "string", "enum": ["pending", "answered", "cancelled", "all"], "default": "pending"}),
        limit(100, 500))),
    "approvals.decide": Op("Approve, reject or request changes.", (200, R.Run), schemas.Decision,
                           body_required=False, query=(TRIGGERED_BY,), errors=(409,)),
    "approvals.answer": Op("Answer a question.", (200, R.Run), schemas.Answer, query=(TRIGGERED_BY,), errors=(409,)),
    "events.post_event": Op("Start a run of every workflow whose trigger matches the event's name, and deliver it to "
                            "the wait_event steps waiting on its key; an id seen before does neither again.",
                            (202, R.EventAccepted),
                            schemas.InboundEvent, query=(TRIGGERED_BY,)),
    "tokens.list_tokens": Op("The tenant's tokens (never their secrets).", (200, R.TokenList)),
    "tokens.create_token": Op("Create a token; the answer's `token` is the only time it is shown.",
                              (201, R.TokenCreated), schemas.TokenCreate,
                              links=(Link("RevokeToken", "tokens.revoke_token", {"token_id": "$response.body#/id"}),)),
    "tokens.revoke_token": Op("Revoke a token: it answers 401 from now on.", (200, R.Token)),
    "files.download": Op("An output file, for whoever holds a URL that GET /runs/{run_id} signed (valid 15 "
                         "minutes; no bearer token).", (200, None), query=(
                             query("expires", {"type": "string"}, "Unix time the URL stops working."),
                             query("sig", {"type": "string"}, "HMAC-SHA256 of the run, the name and expires."))),
    "webhooks.list_secrets": Op("A workflow's webhook secrets (never their values).", (200, R.WebhookSecretList)),
    "webhooks.create_secret": Op("A new webhook secret, shown only in this answer; the secrets in use stay valid "
                                 "for the overlap.", (201, R.WebhookSecretCreated), schemas.WebhookSecretCreate,
                                 body_required=False, links=(Link("ListSecrets", "webhooks.list_secrets", {
                                     "workflow_id": "$response.body#/workflow_id"}),)),
    "webhooks.receive": Op("Start a run from a signed delivery; the JSON body is the run's input.", (201, R.Run),
                           ANY_JSON, body_required=False, errors=(409, 413), headers=({
                               "name": "X-Switchyard-Signature", "in": "header", "required": True,
                               "schema": {"type": "string"},
                               "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'> with "
                                              "the workflow's webhook secret; at most 300 s old, used once."},)),
    "policies.get_policy": Op("The tenant's policy on tool calls (with none set: allow everything, no limits).",
                              (200, R.TenantPolicy)),
    "policies.put_policy": Op("Replace the tenant's policy: its rules come before every workflow's own, the "
                              "stricter default applies, its limits cap every run, and its rate_limits (by provider "
                              "or provider/model: requests_per_min, tokens_per_min) hold back its model calls.",
                              (200, R.TenantPolicy),
                              schemas.Policy),
    "runs.run_diagnosis": Op("Why a run is not moving, and the operator action that would move it: as a "
                             "sentence (`action`), as an API call (`request`) and as a shell line to paste "
                             "(`command`).", (200, R.Diagnosis)),
    "evidence.run_evidence": Op("The run's evidence pack: a zip of the run, its workflow version, steps, events, "
                                "approvals, outputs, output files (`files/<name>`) and audit entries, with a "
                                "manifest of SHA-256 hashes.",
                                (200, None), media="application/zip"),
    "live.run_stream": Op("The run's events as Server-Sent Events, from Last-Event-ID (or `after`) on, live; the "
                          "stream ends once the run is terminal.", (200, None), media="text/event-stream", query=(
                              query("after", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),),
                          headers=({"name": "Last-Event-ID", "in": "header", "required": False,
                                    "schema": {"type": "string"}, "description": "The seq of the last event seen."},)),
    "live.tenant_stream": Op("The tenant's run status changes as Server-Sent Events, live (no replay).",
                             (200, None), media="text/event-stream"),
    "analytics.summary": Op("Live and recent runs by status, success rate, steps executed and usage.",
                            (200, R.AnalyticsSummary), query=(SINCE,)),
    "analytics.timeseries": Op("One metric per time bucket.", (200, R.Timeseries), query=(
        query("metric", {"type": "string", "enum": ["runs_started", "runs_succeeded", "runs_failed", "steps",
                                                    "credits"]}),
        query("bucket", {"type": "string", "enum": ["minute", "hour", "day"], "default": "hour"}), SINCE)),
    "monitoring.queues": Op("Each step queue: depth from the broker, consumers, the tenant's rates, its dispatch "
                            "window; and the tenant's concurrency keys held or waited for, with the runs and steps "
                            "waiting under each.", (200, R.QueueList)),
    "monitoring.workers": Op("Online workers: pool, queues, active tasks, last heartbeat.", (200, R.WorkerList)),
    "monitoring.metrics": Op("Prometheus text: runs by status, step durations, dispatch latency, retries, "
                             "failures (no token needed with SWITCHYARD_METRICS_PUBLIC=1).", (200, None),
                             media="text/plain"),
}

_PART = re.compile(r"<(?:(\w+)(?:\(([^)]*)\))?:)?(\w+)>")


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A werkzeug rule as an OpenAPI path and its path parameters."""
    params = []
    for converter, args, name in _PART.findall(rule):
        if converter == "any":
            schema: dict[str, Any] = {"type": "string", "enum": [a.strip() for a in args.split(",")]}
        elif converter == "int":
            bounds = dict(re.findall(r"(min|max)=(\d+)", args))
            schema = {"type": "integer"}
            if "signed=True" not in args:
                schema["minimum"] = int(bounds.get("min", 0))
            if "max" in bounds:
                schema["maximum"] = int(bounds["max"])
        else:
            schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return _PART.sub(lambda m: "{" + m.group(3) + "}", rule), params


def _json(schema_name: str, description: str, headers: dict | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}
    if headers:
        body["headers"] = headers
    return body


def _operation(endpoint: str, op: Op, path_params: list[dict[str, Any]]) -> dict[str, Any]:
    role = ROUTE_ROLES[endpoint]
    answers = {str(op.ok[0]): _json(op.ok[1].__name__, "Success.") if op.ok[1] else {
        "description": "Not JSON: see the summary.", "content": {op.media: {"schema": {"type": "string"}}}}}
    if op.ok[0] == 204:
        answers = {"204": {"description": "Done; no content."}}
    answers.update({str(code): _json(model.__name__, "Success.") for code, model in op.other_ok.items()})
    if op.links:
        for code in (op.ok[0], *op.other_ok):
            answers[str(code)]["links"] = {link.name: link.as_json() for link in op.links}
    errors = set(op.errors) | {503}
    if role not in (PUBLIC,):
        errors |= {401, 429} if role == SIGNED else {400, 401, 403, 429}
    if path_params or op.body:
        errors |= {400, 404}
    if op.body:
        errors |= {413}
    for code in sorted(errors):
        answers[str(code)] = _json("Error", ERROR_TEXT[code], RETRY_AFTER if code in (429, 503) else None)
    operation: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"), "summary": op.summary, "tags": [endpoint.split(".")[0]],
        "parameters": [*path_params, *op.query, *op.headers], "responses": answers,
    }
    if role in (PUBLIC, SIGNED):
        operation["security"] = []
    else:
        operation["description"] = f"Needs a token with the `{role}` role or higher."
    if op.body:
        schema = op.body if isinstance(op.body, dict) else {"$ref": f"#/components/schemas/{op.body.__name__}"}
        operation["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": schema}}}
    return operation


def _components() -> dict[str, Any]:
    models = [(m, "validation") for m in schemas.REQUEST_BODIES.values()]
    models += [(m, "serialization") for m in {R.Error, R.Status, *(op.ok[1] for op in OPERATIONS.values() if op.ok[1]),
                                               *(m for op in OPERATIONS.values() for m in op.other_ok.values())}]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return {**top["$defs"], "StepError": _step_error_schema()}


def api_rules(app: Flask) -> list:
    """The rules of the API (under /api/v1): the web UI's pages at / are not part of the document."""
    return [rule for rule in app.url_map.iter_rules() if rule.rule.startswith(API_PREFIX)]


API_PREFIX = "/api/v1/"


def build(app: Flask) -> dict[str, Any]:
    """The document for every rule of ``app``; KeyError names a rule OPERATIONS does not describe."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(api_rules(app), key=lambda r: r.rule):
        if rule.endpoint not in OPERATIONS:
            raise KeyError(f"endpoint {rule.endpoint!r} ({rule.rule}) has no entry in api.openapi.OPERATIONS")
        path, params = _path(rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, OPERATIONS[rule.endpoint], params)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchyard run API", "version": "1",
                 "description": "Durable runs of AI-agent workflows. Errors: {\"error\": {\"code\", \"message\", "
                                "\"details\"}}; another tenant's things answer 404. A step's (and a failed run's) "
                                "`error.code`: see the StepError schema."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": _components(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


@bp.get("/openapi.json")
def spec():
    """The document, built once per app."""
    cache = current_app.extensions.setdefault("openapi", {})
    if "spec" not in cache:
        cache["spec"] = build(current_app)
    return cache["spec"]
