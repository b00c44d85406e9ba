"""GET /metrics: Prometheus text computed from the database, tenant-scoped unless made public."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Api, publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


def samples(response) -> dict[tuple[str, tuple], float]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    result = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            result[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return result


def test_metrics_count_runs_steps_retries_and_failures(api):
    workflow = publish(api, {
        "name": "metrics",
        "defaults": {"retry": {"max_attempts": 2, "backoff": "fixed", "initial_delay_s": 0.1, "jitter": False}},
        "steps": [
            {"id": "ok", "type": "tool", "tool": "echo", "args": {"v": 1}},
            {"id": "bad", "type": "tool", "tool": "fail", "needs": ["ok"], "args": {"message": "no"}},
        ],
    })
    before = samples(api.get("/metrics"))
    run = wait_run(api, start(api, workflow))
    assert run["status"] == "failed"
    after = samples(api.get("/metrics"))

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("switchyard_runs", status="failed") == 1
    assert after[("switchyard_runs", (("status", "failed"),))] >= 1
    # Two tool steps finished (ok succeeded, bad failed for good); both were dispatched to workers.
    assert grew("switchyard_step_duration_seconds_count", type="tool") == 2
    assert grew("switchyard_step_duration_seconds_bucket", type="tool", le="+Inf") == 2
    assert grew("switchyard_step_dispatch_latency_seconds_count", type="tool") == 2
    assert grew("switchyard_step_retries_total", type="tool", code="tool_failed") == 1
    assert grew("switchyard_step_failures_total", type="tool", code="tool_failed") == 1
    assert after[("switchyard_queue_depth", (("queue", "steps"),))] >= 0
    # Buckets are cumulative: each is at most the next one.
    buckets = sorted(
        (float(dict(labels)["le"]), value) for (name, labels), value in after.items()
        if name == "switchyard_step_duration_seconds_bucket" and dict(labels)["type"] == "tool"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)


def total_runs(found: dict) -> float:
    return sum(value for (name, _), value in found.items() if name == "switchyard_runs")


@pytest.fixture
def runs_in_db(database_url):
    from sqlalchemy import create_engine, func, select

    from orchestrator.db.models import Run

    engine = create_engine(database_url)

    def count(tenant_id=None):
        query = select(func.count()).select_from(Run)
        if tenant_id:
            query = query.where(Run.tenant_id == tenant_id)
        with engine.connect() as conn:
            return conn.execute(query).scalar_one()

    yield count
    engine.dispose()


def test_metrics_need_a_token_and_show_only_the_callers_tenant(api, tokens, runs_in_db):
    response = api.as_(None).get("/metrics")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    other = api.as_(tokens["other_tenant"])
    start(other, publish(other, {"name": "x", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}))
    assert total_runs(samples(other.get("/metrics"))) == runs_in_db("globex")
    assert total_runs(samples(api.as_(tokens["viewer"]).get("/metrics"))) == runs_in_db("acme")


def test_public_metrics_need_no_token_and_cover_every_tenant(settings, api, tokens, runs_in_db, app_for):

    other = api.as_(tokens["other_tenant"])
    start(other, publish(other, {"name": "x", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}))

    public = Api(app_for(settings.model_copy(update={"metrics_public": True})).test_client(), None)
    assert total_runs(samples(public.get("/metrics"))) == runs_in_db() > runs_in_db("acme")


def test_folding_steps_into_the_rollups_changes_no_histogram(api, settings):
    """On PostgreSQL: fold every finished step into metric_rollups (no lag) between two scrapes."""
    from orchestrator import metrics
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction

    workflow = publish(api, {"name": "rolled", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]})
    wait_run(api, start(api, workflow))

    def histogram_samples():
        return {k: v for k, v in samples(api.get("/metrics")).items()
                if k[0].startswith(("switchyard_step_duration", "switchyard_step_dispatch"))}

    before = histogram_samples()
    engine = make_engine(settings)
    with transaction(make_sessionmaker(engine)) as session:
        repo.advance_step_rollups(session, metrics.BUCKETS, lag_s=0)
    engine.dispose()
    assert histogram_samples() == before
