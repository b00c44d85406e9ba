"""The OpenAPI document covers the whole app, and the app keeps to it under schemathesis.

schemathesis generates requests from the document and checks each answer: no 5xx, and status,
content type, headers and body as the document says. The stateless phase sends valid and invalid
requests to every operation; the stateful phase follows the document's links (list -> act on the run,
list -> decide an approval, …), each scenario over real runs of a fresh tenant of its own. The app under
test is built from the integration settings with the rate limit off, so no answer is a 429.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import API_PREFIX, _path, api_rules
from tests.integration.conftest import Api, publish, start, unique, wait_for


def test_openapi_needs_no_token_and_covers_every_rule(app):
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.1")
    rules = api_rules(app)
    # Only the web UI lives outside /api/v1 (its pages are not API operations).
    assert {r.endpoint.partition(".")[0] for r in app.url_map.iter_rules() if r not in rules} == {"ui"}
    assert all(r.rule.startswith(API_PREFIX) for r in app.url_map.iter_rules() if not r.endpoint.startswith("ui."))
    for rule in rules:
        path, _ = _path(rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = spec["paths"][path][method.lower()]
            assert {"200", "201", "202", "204"} & set(operation["responses"])  # 204: DELETE of a schedule
            if operation.get("security") != []:
                error = operation["responses"]["401"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}


def test_request_bodies_are_the_validating_models(app):
    from api import schemas

    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    start = spec["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert start == {"$ref": "#/components/schemas/StartRun"}
    assert spec["components"]["schemas"]["StartRun"]["additionalProperties"] is False
    assert set(spec["components"]["schemas"]["StartRun"]["properties"]) == set(schemas.StartRun.model_fields)


@pytest.fixture(scope="module")
def fuzz_app(settings):
    from api import create_app

    # No rate limit, so no answer is a 429; a short wait for the workers' inspect replies, since
    # GET /queues and /workers wait that long on every one of their ~150 calls.
    return create_app(settings.model_copy(update={"rate_limit_per_min": 0, "inspect_timeout_s": 0.05}))


@pytest.fixture(scope="module")
def fuzz_token(settings):
    """An admin token of a tenant of its own, so the fuzzing touches nobody else's things."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    with transaction(make_sessionmaker(make_engine(settings))) as session:
        return repo.create_token(session, "fuzz", "admin", "schemathesis")[1]


# The live streams stay open until their run ends (or, the tenant's, until the client goes): a WSGI call
# would never return. tests/integration/test_streams.py checks them over a real HTTP server instead.
STREAMS = {"GET /api/v1/events/stream", "GET /api/v1/runs/{run_id}/events/stream"}
STREAM_PATHS = r".*/events/stream$"

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES_PER_OPERATION = 75  # about 3,000 requests; the stateful phase adds about 1,200


def fuzz(operation, mode, headers: dict, calls: dict) -> str | None:
    """Run one operation in one generation mode; the failure's text, or None."""

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
    def check(case):
        calls[mode.value] = calls.get(mode.value, 0) + 1
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        return None  # no invalid request can be made for this operation (e.g. no parameters at all)
    except Exception as exc:  # noqa: BLE001 - the caller collects every operation's failure, then fails once
        return f"{type(exc).__name__}: {exc}"[:3000]
    return None


def test_app_keeps_to_its_openapi_document_stateless(fuzz_app, fuzz_token):
    """Every operation, EXAMPLES_PER_OPERATION valid and as many invalid requests each; every failure
    is reported at the end."""
    app = fuzz_app
    api_schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app).exclude(path_regex=STREAM_PATHS)
    headers = {"Authorization": f"Bearer {fuzz_token}"}
    failures, labels, calls = {}, set(), {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.add(operation.label)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            failure = fuzz(operation, mode, headers, calls)
            if failure:
                failures[f"{operation.label} ({mode.value})"] = failure
    spec = app.test_client().get("/api/v1/openapi.json").get_json()
    documented = {f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops}
    # schemathesis leaves out the document's own path.
    assert labels == documented - {"GET /api/v1/openapi.json"} - STREAMS
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert sum(calls.values()) >= 2000, calls


WAITS = {"name": "waits for people", "steps": [
    {"id": "review", "type": "approval", "prompt": "ok?"},
    {"id": "ask", "type": "question", "question": "why?"},
    # A timer far off, not a worker step: once a sequence has decided and answered, the run waits on in
    # the database instead of finishing in the workers at a moment no replay could repeat.
    {"id": "after", "type": "timer", "duration_s": 3600, "needs": ["review", "ask"]},
]}
SEEDED_RUNS = 3


def seed_tenant(app, sessionmaker) -> str:
    """A tenant of its own with SEEDED_RUNS runs waiting on an approval and a question; its admin token."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import transaction

    with transaction(sessionmaker) as session:
        token = repo.create_token(session, unique("fuzz"), "admin", "schemathesis")[1]
    api = Api(app.test_client(), token)
    workflow = publish(api, WAITS)
    for _ in range(SEEDED_RUNS):
        start(api, workflow)

    def all_wait():
        inbox = [len(api.get(f"/{kind}").get_json()[kind]) for kind in ("approvals", "questions")]  # pending, open
        return inbox == [SEEDED_RUNS, SEEDED_RUNS]

    wait_for(all_wait, 30, "the seeded runs to wait on their approvals and questions", interval=0.02)
    return token


def test_app_keeps_to_its_openapi_document_stateful(fuzz_app, settings, engine_processes):
    """Sequences of calls along the links, each over real runs waiting on approvals and questions."""
    from orchestrator.db.session import make_engine, make_sessionmaker

    engine = make_engine(settings)
    sessionmaker = make_sessionmaker(engine)
    # Every scenario starts on a fresh tenant seeded the same way. Hypothesis replays the start of
    # earlier scenarios while it generates; a replay that met the state an earlier scenario left (an
    # approval already decided, a run already cancelled) would answer with another status, follow
    # other links and draw differently: FlakyStrategyDefinition, one CI run in three.
    # Revoking tokens is still left to the stateless phase: a link from GET /tokens would revoke the
    # scenario's own. So are replacing the policy (no link leads to it: included, it was never called) and
    # starting runs (POST /runs, POST /hooks/…): a run started in a sequence goes on in the workers, so its state
    # at a later call depends on timing, not on the sequence.
    api_schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app).exclude(
        method="DELETE", path="/api/v1/tokens/{token_id}").exclude(
        method="PUT", path="/api/v1/policy").exclude(path_regex=STREAM_PATHS).exclude(
        method="POST", path="/api/v1/runs").exclude(method="POST", path="/api/v1/hooks/{workflow_id}")
    answers: dict[str, int] = {}
    tokens: list[str] = []

    class Machine(api_schema.as_state_machine()):
        def setup(self):
            self.token = seed_tenant(fuzz_app, sessionmaker)
            tokens.append(self.token)

        def before_call(self, case):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {self.token}"}

        def after_call(self, response, case):
            key = f"{case.method} {case.operation.path} {response.status_code}"
            answers[key] = answers.get(key, 0) + 1

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    try:
        Machine.run(settings=hypothesis.settings(
            max_examples=120, stateful_step_count=10, deadline=None, derandomize=True, database=None,
            suppress_health_check=list(hypothesis.HealthCheck)))
    finally:
        engine.dispose()
    assert sum(answers.values()) >= 1000, answers
    # The links were followed to real things: some calls on the seeded runs succeeded.
    acted = sum(n for key, n in answers.items() if key.startswith(("POST /api/v1/runs/{run_id}/", "GET /api/v1/runs/{run_id}"))
                and key.endswith((" 200", " 201")))
    assert acted > 0, answers
    assert len(tokens) >= 120  # a fresh tenant for every scenario
