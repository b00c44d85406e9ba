"""The retention sweep on PostgreSQL: seeded old terminal runs deleted in batches with every row of theirs,
each archived first; live runs, recent runs and workflows that keep everything are left alone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from orchestrator import evidence, retention
from orchestrator.db import repository as repo
from orchestrator.db.models import Event, Run, Step
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from tests.bench.bench_retention import seed_terminal_runs
from tests.integration.conftest import publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")
# The runs are seeded as ended 40 days ago under workflows keeping them 60 days, and the sweep is run
# 30 days ahead: the session's scheduler (whose sweeps use the real clock) never races this one. The
# sweeps here keep what has no retention_days of its own (SWITCHYARD_RETENTION_DAYS=0), so the other
# tests' runs are never theirs to delete.
AHEAD = timedelta(days=30)


@pytest.fixture(scope="module")
def keep_by_default(settings):
    return settings.model_copy(update={"retention_days": 0})


@pytest.fixture(scope="module")
def engine(settings):
    return make_engine(settings)


def count(engine, model, prefix: str) -> int:
    column = model.id if model is Run else model.run_id
    with make_sessionmaker(engine)() as session:
        return session.execute(select(func.count()).where(column.like(f"{prefix}%"))).scalar_one()


def workflow_keeping(api, days: int | None) -> str:
    definition = {"name": "kept", "steps": [{"id": "a", "type": "tool", "tool": "echo"}]}
    if days is not None:
        definition["retention_days"] = days
    return publish(api, definition)


def test_old_terminal_runs_are_purged_in_batches_archived_first(api, keep_by_default, engine, tmp_path):
    settings = keep_by_default
    expiring, keeping = workflow_keeping(api, 60), workflow_keeping(api, 0)
    old = seed_terminal_runs(engine, tenant="acme", workflow_id=expiring, count=23, ended_days_ago=40)
    kept_forever = seed_terminal_runs(engine, tenant="acme", workflow_id=keeping, count=3, ended_days_ago=400)
    recent = seed_terminal_runs(engine, tenant="acme", workflow_id=expiring, count=2, ended_days_ago=10)
    live = seed_terminal_runs(engine, tenant="acme", workflow_id=expiring, count=1, ended_days_ago=40)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:  # an old run still running is never deleted
        session.execute(update(Run).where(Run.id.like(f"{live}%")).values(status="running", completed_at=None))
        now = repo.now(session)
    first_old = f"{old}{1:012d}"
    assert api.get(f"/runs/{first_old}").status_code == 200

    swept = retention.sweep(sessions, settings.model_copy(update={"retention_batch": 7, "archive_dir": tmp_path}),
                            now=now + AHEAD)
    assert (swept.runs, swept.batches) == (23, 4)  # 7 + 7 + 7 + 2
    assert swept.rows["runs"] == 23 and swept.rows["steps"] == 23 and swept.rows["events"] == 23 * 5
    assert count(engine, Run, old) == count(engine, Step, old) == count(engine, Event, old) == 0
    assert api.get(f"/runs/{first_old}").status_code == 404
    assert count(engine, Run, recent) == 2 and count(engine, Run, live) == 1 and count(engine, Run, kept_forever) == 3

    packs = sorted((tmp_path / "acme").glob(f"{old}*.zip"))
    assert len(packs) == 23
    manifest = evidence.verify(Path(packs[0]), settings.secret_key)
    assert manifest["run_id"] == first_old and {"run.json", "steps.json", "events.json"} <= set(manifest["files"])

    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'switchyard_retention_purged_rows_total{table="runs"}' in metrics

    again = retention.sweep(sessions, settings.model_copy(update={"retention_batch": 7}), now=now + AHEAD)
    assert again.runs == 0


def test_a_purged_run_of_a_real_start_is_gone_with_its_rows(api, keep_by_default, engine):
    """A run started through the API, finished by the workers, then swept: every table of it is empty."""
    settings = keep_by_default
    workflow = workflow_keeping(api, 1)
    run_id = start(api, workflow)
    assert wait_run(api, run_id)["status"] == "succeeded"
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        now = repo.now(session)
    swept = retention.sweep(sessions, settings, now=now + timedelta(days=2))
    assert swept.runs >= 1
    assert api.get(f"/runs/{run_id}").status_code == 404
    assert api.get(f"/runs/{run_id}/events").status_code == 404
    assert count(engine, Step, run_id) == count(engine, Event, run_id) == 0

