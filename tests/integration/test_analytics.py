"""GET /analytics/summary and /analytics/timeseries: SQL aggregates of one tenant's runs."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Api, publish, start, unique, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


@pytest.fixture(scope="module")
def fresh(app, settings):
    """A tenant of its own, so that every count below is exact, with three finished runs."""
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    tenant = unique("analytics")
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        api = Api(app.test_client(), repo.create_token(session, tenant, "operator")[1])
    ok = publish_admin(app, settings, tenant, {
        "name": "ok", "steps": [
            {"id": "a", "type": "tool", "tool": "echo"},
            {"id": "b", "type": "llm", "needs": ["a"], "prompt": "hi", "script": [{"content": "x", "tokens_in": 10}]},
        ]})
    bad = publish_admin(app, settings, tenant, {
        "name": "bad", "defaults": {"retry": {"max_attempts": 1}},
        "steps": [{"id": "a", "type": "tool", "tool": "fail"}]})
    runs = [wait_run(api, start(api, wf)) for wf in (ok, ok, bad)]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded", "failed"]
    return api, runs


def publish_admin(app, settings, tenant, definition):
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    with transaction(make_sessionmaker(make_engine(settings))) as session:
        admin = Api(app.test_client(), repo.create_token(session, tenant, "admin")[1])
    return publish(admin, definition)


def test_summary_counts_runs_steps_and_usage_of_the_tenant(fresh):
    api, runs = fresh
    body = api.get("/analytics/summary?since=1h").get_json()
    assert body["recent_runs"]["total"] == 3
    assert body["recent_runs"]["succeeded"] == 2 and body["recent_runs"]["failed"] == 1
    assert body["live_runs"]["total"] == 0
    assert body["success_rate"] == round(2 / 3, 4)
    assert body["steps_executed"] == 2 + 2 + 1
    assert body["usage"]["llm_calls"] == 2 and body["usage"]["tokens_in"] == 20
    assert body["usage"]["credits"] == pytest.approx(sum(r["usage"]["credits"] for r in runs))
    # An RFC 3339 'since' after the runs sees none of them.
    later = api.get("/analytics/summary", query_string={"since": body["until"]}).get_json()
    assert later["recent_runs"]["total"] == 0 and later["success_rate"] is None


@pytest.mark.parametrize("metric, expected", [
    ("runs_started", 3), ("runs_succeeded", 2), ("runs_failed", 1), ("steps", 5),
])
def test_timeseries_buckets_add_up_to_the_totals(fresh, metric, expected):
    api, _ = fresh
    for bucket, since in (("minute", "30m"), ("hour", "3h"), ("day", "2d")):
        body = api.get(f"/analytics/timeseries?metric={metric}&bucket={bucket}&since={since}").get_json()
        assert body["metric"] == metric and body["bucket"] == bucket
        times = [p["t"] for p in body["points"]]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert sum(p["value"] for p in body["points"]) == expected, (bucket, body)
    # Every run finished within the last minute or two: the newest minute buckets hold them all.
    minutes = api.get(f"/analytics/timeseries?metric={metric}&bucket=minute&since=30m").get_json()["points"]
    assert len(minutes) in (30, 31) and sum(p["value"] for p in minutes[-3:]) == expected


def test_timeseries_of_credits(fresh):
    api, runs = fresh
    points = api.get("/analytics/timeseries?metric=credits&bucket=hour&since=2h").get_json()["points"]
    assert sum(p["value"] for p in points) == pytest.approx(sum(r["usage"]["credits"] for r in runs))


@pytest.mark.parametrize("query", [
    "/analytics/timeseries?metric=bogus",
    "/analytics/timeseries",
    "/analytics/timeseries?metric=steps&bucket=week",
    "/analytics/timeseries?metric=steps&since=yesterday",
    "/analytics/timeseries?metric=steps&since=2026-01-01T00:00:00",
    "/analytics/timeseries?metric=steps&since=2999-01-01T00:00:00Z",
    "/analytics/timeseries?metric=steps&bucket=minute&since=30d",
    "/analytics/summary?since=-5h",
    "/analytics/summary?since=9999999d",
    "/analytics/summary?since=999999d",
])
def test_bad_parameters_are_400_in_the_contract_shape(api, query):
    response = api.get(query)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_analytics_need_a_token_and_never_count_another_tenants_runs(api, fresh, tokens):
    assert api.as_(None).get("/analytics/summary").status_code == 401
    mine = api.as_(tokens["viewer"]).get("/analytics/summary?since=1d").get_json()
    theirs = fresh[0].get("/analytics/summary?since=1d").get_json()
    assert theirs["recent_runs"]["total"] == 3 and mine["recent_runs"]["total"] != 3
