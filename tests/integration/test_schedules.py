"""Cron schedules fired by real scheduler processes (PostgreSQL, Redis, workers): each slot once however
many schedulers run, one killed and restarted between; overlap skip; catch-up after an outage."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from orchestrator.db.models import Run, Schedule, ScheduleFire
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.schedules import Spec
from tests.integration.conftest import publish, signed_in, unique, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")
QUICK = [{"id": "echo", "type": "tool", "tool": "echo", "args": {"at": "{{ input.tag }}"}}]


@pytest.fixture(scope="module")
def sessions(settings):
    return make_sessionmaker(make_engine(settings))


def fires(sessions, workflow_id: str) -> list[ScheduleFire]:
    with sessions() as session:
        return list(session.execute(select(ScheduleFire).where(ScheduleFire.workflow_id == workflow_id)
                                    .order_by(ScheduleFire.slot)).scalars())


def scheduled_runs(sessions, workflow_id: str) -> list[Run]:
    with sessions() as session:
        return list(session.execute(select(Run).where(Run.workflow_id == workflow_id)).scalars())


def put(api, workflow_id: str, schedule_id: str, **body) -> dict:
    response = api.put(f"/workflows/{workflow_id}/schedules/{schedule_id}", json=body)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def test_each_slot_fires_once_with_two_more_schedulers_one_killed_and_restarted(api, sessions, engine_processes):
    """An every-second schedule while three schedulers run (the session's and two more); one is SIGKILLed,
    later started again. Every slot from the first fired to the last fired is fired exactly once."""
    workflow = publish(api, {"name": "every second", "steps": QUICK})
    extra = [unique("scheduler") for _ in range(2)]
    for name in extra:
        engine_processes.start(name, "scheduler")
    try:
        put(api, workflow, "tick", cron="* * * * * *", overlap="allow", catchup="all", input={"tag": "t"})
        wait_for(lambda: len(fires(sessions, workflow)) >= 4, 20, "four slots fired")
        engine_processes.stop(extra[0], kill=True)
        wait_for(lambda: len(fires(sessions, workflow)) >= 8, 20, "four more slots with one scheduler killed")
        engine_processes.start(extra[0], "scheduler")
        wait_for(lambda: len(fires(sessions, workflow)) >= 12, 20, "four more slots after the restart")
    finally:
        put(api, workflow, "tick", cron="* * * * * *", enabled=False)
        for name in extra:
            if name in engine_processes.procs:
                engine_processes.stop(name)
    fired = fires(sessions, workflow)
    slots = [f.slot for f in fired]
    assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))], "a slot was skipped or repeated"
    assert all(f.outcome == "started" and f.run_id for f in fired)
    runs = scheduled_runs(sessions, workflow)
    assert sorted(r.id for r in runs) == sorted(f.run_id for f in fired)  # one run per slot, no other
    assert {(r.trigger_type, r.triggered_by) for r in runs} == {("schedule", "tick")}
    for run in runs[:3]:
        assert wait_run(api, run.id)["status"] == "succeeded"


def test_overlap_skip_skips_slots_while_the_previous_run_is_live(api, sessions):
    key = unique("hold")
    workflow = publish(api, {"name": "held", "steps": [
        {"id": "hold", "type": "wait_event", "correlation_key": "{{ input.key }}"}]})
    put(api, workflow, "held", cron="* * * * * *", overlap="skip", input={"key": key})
    try:
        wait_for(lambda: sum(f.outcome == "skipped" for f in fires(sessions, workflow)) >= 3, 20,
                 "three slots skipped while the first run waits")
        started = [f for f in fires(sessions, workflow) if f.outcome == "started"]
        assert len(started) == 1 and len(scheduled_runs(sessions, workflow)) == 1
        api.post("/events", json={"correlation_key": key, "payload": {}})
        assert wait_run(api, started[0].run_id)["status"] == "succeeded"
        wait_for(lambda: sum(f.outcome == "started" for f in fires(sessions, workflow)) >= 2, 20,
                 "the next slot after the run ended to start a run")
    finally:
        put(api, workflow, "held", cron="* * * * * *", enabled=False)


def test_overlap_cancel_previous_cancels_the_live_run_and_starts_the_next(api, sessions):
    workflow = publish(api, {"name": "replaced", "steps": [
        {"id": "hold", "type": "wait_event", "correlation_key": "{{ input.key }}"}]})
    put(api, workflow, "replace", cron="* * * * * *", overlap="cancel_previous", input={"key": unique("never")})
    try:
        wait_for(lambda: len(fires(sessions, workflow)) >= 3, 20, "three slots fired")
    finally:
        put(api, workflow, "replace", cron="* * * * * *", enabled=False)
    runs = sorted(scheduled_runs(sessions, workflow), key=lambda r: r.created_at)
    assert len(runs) == len(fires(sessions, workflow)) >= 3
    for earlier in runs[:-1]:  # each cancelled by the slot after it
        assert wait_run(api, earlier.id, ("cancelled",), timeout=20)["status"] == "cancelled"
        log = api.get(f"/runs/{earlier.id}/events").get_json()["events"]
        assert any(e["type"] == "run_cancelled" and e["data"].get("triggered_by") == "schedule:replace" for e in log)
    assert api.get(f"/runs/{runs[-1].id}").get_json()["status"] in ("queued", "running", "waiting")
    assert api.post(f"/runs/{runs[-1].id}/cancel").status_code == 200  # leave nothing waiting behind


@pytest.mark.parametrize(("catchup", "started"), [("latest", 1), ("none", 0), ("all", 5)])
def test_catchup_after_a_five_minute_outage(api, sessions, catchup, started):
    """Five slots (the minutes 6 to 2 minutes ago) missed, as if no scheduler had run since 7 minutes ago
    (the schedule's last slot is set back by hand): the running schedulers start one run for `latest`,
    none for `none`, one per missed slot for `all`; none of the slots is on time, and the next is an hour on."""
    workflow = publish(api, {"name": "missed", "steps": QUICK})
    put(api, workflow, "missed", cron="* * * * *", enabled=False)
    with transaction(sessions) as session:
        now = session.execute(select(Schedule.updated_at).where(Schedule.workflow_id == workflow)).scalar_one()
        minute = now.replace(second=0, microsecond=0)
        cron = ",".join(str((minute - timedelta(minutes=k)).minute) for k in range(6, 1, -1)) + " * * * *"
        missed, _ = Spec(cron, "UTC").due_slots(minute - timedelta(minutes=7), now, 100)
        assert len(missed) == 5
        session.execute(update(Schedule).where(Schedule.workflow_id == workflow).values(
            cron=cron, overlap="allow", catchup=catchup, enabled=True, last_slot=minute - timedelta(minutes=7),
            next_fire_at=missed[0]))

    def consumed():
        with sessions() as session:
            return session.execute(select(Schedule.last_slot).where(Schedule.workflow_id == workflow)
                                   ).scalar_one() >= missed[-1]

    wait_for(consumed, 20, "the schedulers to consider the missed slots")
    put(api, workflow, "missed", cron="* * * * *", enabled=False)
    fired = fires(sessions, workflow)
    assert len(fired) == started and all(f.outcome == "started" for f in fired)
    if started:
        assert [f.slot for f in fired] == missed[-started:]
    assert sorted(r.id for r in scheduled_runs(sessions, workflow)) == sorted(f.run_id for f in fired)


@pytest.mark.parametrize(("body", "field"), [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"cron": "* * * * *", "overlap": "sometimes"}, "overlap"),
    ({"cron": "* * * * *", "catchup": 3}, "catchup"),
    ({"cron": "* * * * *", "input": {"n": "x"}}, "input"),
])
def test_an_invalid_schedule_is_a_400_naming_the_field(api, body, field):
    workflow = publish(api, {"name": "strict", "steps": QUICK, "input_schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}}})
    response = api.put(f"/workflows/{workflow}/schedules/bad", json=body)
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["code"] == "invalid_request"
    assert error["details"].get("field") == field or any(p.startswith(field) for p in error["details"]["problems"])
    assert field in error["message"]


def test_schedules_are_listed_with_their_next_fire_times_and_deleted(api, tokens):
    workflow = publish(api, {"name": "listed", "steps": QUICK})
    created = api.put(f"/workflows/{workflow}/schedules/nightly",
                      json={"cron": "30 2 * * *", "timezone": "Europe/Berlin", "enabled": True})
    assert created.status_code == 201
    schedule = created.get_json()
    assert len(schedule["next_fire_times"]) == 5 and schedule["next_fire_times"] == sorted(schedule["next_fire_times"])
    assert all(t.endswith(("00:30:00Z", "01:30:00Z")) for t in schedule["next_fire_times"])  # 02:30 in Berlin
    assert api.put(f"/workflows/{workflow}/schedules/nightly", json={"cron": "0 * * * *"}).status_code == 200
    listed = api.get(f"/workflows/{workflow}/schedules").get_json()["schedules"]
    assert [(s["id"], s["cron"], s["timezone"]) for s in listed] == [("nightly", "0 * * * *", "UTC")]
    assert ("nightly", workflow) in [(s["id"], s["workflow_id"]) for s in api.get("/schedules").get_json()["schedules"]]
    assert api.as_(tokens["other_tenant"]).get(f"/workflows/{workflow}/schedules").status_code == 404
    assert workflow not in [s["workflow_id"] for s in api.as_(tokens["other_tenant"]).get("/schedules").get_json()[
        "schedules"]]
    assert api.as_(tokens["operator"]).delete(f"/workflows/{workflow}/schedules/nightly").status_code == 403
    paused = api.put(f"/workflows/{workflow}/schedules/nightly", json={"cron": "0 * * * *", "enabled": False})
    assert paused.get_json()["next_fire_times"] == []
    assert api.delete(f"/workflows/{workflow}/schedules/nightly").status_code == 204
    assert api.get(f"/workflows/{workflow}/schedules").get_json()["schedules"] == []
    assert api.delete(f"/workflows/{workflow}/schedules/nightly").status_code == 404
    assert api.put(f"/workflows/{unique('none')}/schedules/x", json={"cron": "* * * * *"}).status_code == 404


def test_the_workflow_page_lists_schedules_and_an_admin_adds_pauses_and_deletes_one(app, api, tokens):
    workflow = publish(api, {"name": "page", "steps": QUICK})
    admin, viewer = signed_in(app, tokens["admin"]), signed_in(app, tokens["viewer"])
    added = admin.post(f"/workflows/{workflow}/schedules", {
        "schedule_id": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin", "overlap": "skip",
        "catchup": "latest", "input": '{"tag": "n"}'})
    assert added.status_code == 302
    page = admin.client.get(f"/workflows/{workflow}").get_data(as_text=True)
    assert "Schedule nightly saved." in page and "<code>30 2 * * *</code>" in page
    upcoming = api.get(f"/workflows/{workflow}/schedules").get_json()["schedules"][0]["next_fire_times"]
    assert all(f'datetime="{t}"' in page for t in upcoming)
    assert "Add schedule" not in viewer.client.get(f"/workflows/{workflow}").get_data(as_text=True)

    refused = admin.post(f"/workflows/{workflow}/schedules", {"schedule_id": "bad", "cron": "61 * * * *"})
    assert "cron:" in admin.client.get(refused.location).get_data(as_text=True)

    admin.post(f"/workflows/{workflow}/schedules/nightly/pause", {})
    assert api.get(f"/workflows/{workflow}/schedules").get_json()["schedules"][0]["enabled"] is False
    assert "none while paused" in admin.client.get(f"/workflows/{workflow}").get_data(as_text=True)
    admin.post(f"/workflows/{workflow}/schedules/nightly/resume", {})
    assert api.get(f"/workflows/{workflow}/schedules").get_json()["schedules"][0]["enabled"] is True
    assert viewer.post(f"/workflows/{workflow}/schedules/nightly/delete", {}).status_code == 302
    assert len(api.get(f"/workflows/{workflow}/schedules").get_json()["schedules"]) == 1  # a viewer cannot
    admin.post(f"/workflows/{workflow}/schedules/nightly/delete", {})
    assert api.get(f"/workflows/{workflow}/schedules").get_json()["schedules"] == []
