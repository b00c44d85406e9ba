"""`switchyard doctor` on a database of its own, with one row of each kind of violation written by
hand (no scheduler runs against it, so nothing heals them), beside a graceful survivor that is no
violation: the command names each one, exits 1, and answers JSON with --json; fixed, it exits 0."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import insert, update

from orchestrator import service
from orchestrator.db.models import Outbox, Run, Step
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.db.types import db_now
from orchestrator.doctor import find_violations
from orchestrator.settings import Settings
from tests.integration.conftest import ROOT, _env, fresh_database

TWO_STEPS = {"name": "two", "steps": [
    {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}},
    {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"], "args": {"text": "y"}},
]}


@pytest.fixture
def doctor_db(tmp_path, settings):
    with fresh_database("switchyard_doctor") as url:
        own = Settings(**{**settings.model_dump(), "database_url": url, "data_dir": tmp_path})
        engine = make_engine(own)
        yield own, make_sessionmaker(engine)
        engine.dispose()


def doctor(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "doctor", *args], env=_env(settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def seed_violations(sessions) -> dict[str, str]:
    """Five runs: four breaking one invariant each, one a graceful cancel's survivor (no violation)."""
    with transaction(sessions) as session:
        service.publish_workflow(session, Settings(), "doc", "two", TWO_STEPS)
        runs = {name: service.start_run(session, Settings(), "doc", "two", {}).run.id
                for name in ("ended", "stalled", "overdue", "outbox", "survivor")}
        session.execute(update(Run).values(has_work=False))
        session.execute(update(Run).where(Run.id.in_([runs["ended"], runs["survivor"]])).values(status="cancelled"))
        session.execute(update(Run).where(Run.id.not_in([runs["ended"], runs["survivor"]])).values(status="running"))
        session.execute(update(Step).where(Step.run_id == runs["ended"], Step.step_id == "a").values(status="queued"))
        for name, lease_in in (("overdue", -60), ("outbox", 60), ("survivor", 60)):
            session.execute(update(Step).where(Step.run_id == runs[name], Step.step_id == "a")
                            .values(status="running", attempt=1, lease_expires_at=db_now(lease_in)))
        session.execute(insert(Outbox).values(run_id=runs["outbox"], step_id="b", attempt=1, queue="steps",
                                              soft_time_limit=60, created_at=db_now(-120)))
    return runs


def test_doctor_names_each_violation_and_exits_1_until_they_are_fixed(doctor_db):
    settings, sessions = doctor_db
    assert doctor(settings).returncode == 0
    runs = seed_violations(sessions)

    with sessions() as session:
        found = {(v.kind, v.run_id, v.step_id) for v in find_violations(session, settings)}
    assert found == {
        ("step_in_flight_in_ended_run", runs["ended"], "a"),
        ("stalled_run", runs["stalled"], None),
        ("lease_overdue", runs["overdue"], "a"),
        ("outbox_stale", runs["outbox"], "b"),
    }
    with sessions() as session:
        scoped = find_violations(session, settings, run_ids=[runs["stalled"], runs["survivor"]])
    assert [(v.kind, v.run_id) for v in scoped] == [("stalled_run", runs["stalled"])]

    text = doctor(settings)
    assert text.returncode == 1, text.stderr
    assert "4 violations" in text.stdout and runs["stalled"] in text.stdout and "switchyard scheduler" in text.stdout
    as_json = doctor(settings, "--json")
    assert as_json.returncode == 1, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["count"] == 4
    assert {v["kind"] for v in document["violations"]} == {
        "step_in_flight_in_ended_run", "stalled_run", "lease_overdue", "outbox_stale"}

    with transaction(sessions) as session:
        session.execute(update(Run).where(Run.id != runs["survivor"]).values(status="cancelled"))
        session.execute(update(Step).where(Step.run_id != runs["survivor"]).values(status="cancelled"))
        session.execute(Outbox.__table__.delete())
    fixed = doctor(settings, "--json")
    assert fixed.returncode == 0, fixed.stdout
    assert json.loads(fixed.stdout) == {"violations": [], "count": 0}
