"""Schedules of a workflow: PUT, list, delete; fired by the schedulers (orchestrator/firing.py)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from api.auth import principal
from api.context import parse_body, services
from api.serializers import ts
from orchestrator import schedules
from orchestrator.db import models
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.definitions import Definition, input_problems
from orchestrator.errors import InvalidRequest, NotFound

bp = Blueprint("schedules", __name__)
SCHEDULE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class Schedule(BaseModel):
    """A schedule as the API answers it."""

    model_config = ConfigDict(extra="forbid")
    id: str
    workflow_id: str
    cron: str
    timezone: str
    input: Any
    overlap: Literal["skip", "allow", "cancel_previous"]
    catchup: Literal["none", "latest", "all"]
    enabled: bool
    next_fire_times: list[datetime] = Field(description="The next five slots (UTC); none while disabled.")
    last_run_id: str | None = Field(description="The last run the schedule started.")


class ScheduleList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schedules: list[Schedule]


def schedule_json(schedule: models.Schedule, now: datetime) -> dict[str, Any]:
    spec = schedules.Spec(schedule.cron, schedule.timezone)
    return {
        "id": schedule.id, "workflow_id": schedule.workflow_id, "cron": schedule.cron, "timezone": schedule.timezone,
        "input": schedule.input, "overlap": schedule.overlap, "catchup": schedule.catchup, "enabled": schedule.enabled,
        "next_fire_times": [ts(t) for t in spec.next_slots(now)] if schedule.enabled else [],
        "last_run_id": schedule.last_run_id,
    }


def _checked(body: schedules.ScheduleBody, definition: Definition) -> None:
    """InvalidRequest naming the field: a cron croniter cannot read, an unknown timezone, an input the
    workflow's input_schema refuses."""
    problem = schedules.cron_problem(body.cron)
    if problem:
        raise InvalidRequest(f"cron: {problem}", {"field": "cron", "problems": [f"cron: {problem}"]})
    if schedules.zone(body.timezone) is None:
        problem = f"timezone: unknown timezone {body.timezone!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        raise InvalidRequest(problem, {"field": "timezone", "problems": [problem]})
    problems = input_problems(definition, body.input)
    if problems:
        raise InvalidRequest("input does not match the workflow's input_schema: " + "; ".join(problems),
                             {"field": "input", "problems": problems})


def _definition(session, tenant_id: str, workflow_id: str) -> Definition:
    workflow = repo.get_workflow(session, tenant_id, workflow_id)
    if workflow is None:
        raise NotFound(f"workflow {workflow_id!r} not found; publish it with PUT /api/v1/workflows/{workflow_id}")
    svc = services()
    return svc.catalog.get(session, (tenant_id, workflow_id, workflow.latest_version))


@bp.put("/workflows/<workflow_id>/schedules/<schedule_id>")
def put_schedule(workflow_id: str, schedule_id: str):
    """Create or replace a schedule; it starts afresh from now (slots before it never fire)."""
    if not SCHEDULE_ID.match(schedule_id):
        raise InvalidRequest("a schedule id is 1-100 characters of letters, digits, '_', '.' and '-'",
                             {"field": "schedule_id"})
    body = parse_body(schedules.ScheduleBody)
    key = (principal().tenant_id, workflow_id, schedule_id)
    with transaction(services().sessions) as session:
        _checked(body, _definition(session, key[0], workflow_id))
        created = repo.get_schedule(session, key) is None
        now = repo.now(session)
        fields = body.model_dump()
        spec = schedules.Spec(body.cron, body.timezone)
        fields.update(last_slot=now, next_fire_at=spec.next_slots(now, 1)[0] if body.enabled else None)
        answer = schedule_json(repo.put_schedule(session, key, fields), now)
    return answer, 201 if created else 200


@bp.get("/workflows/<workflow_id>/schedules")
def workflow_schedules(workflow_id: str):
    tenant_id = principal().tenant_id
    with services().sessions() as session:
        if repo.get_workflow(session, tenant_id, workflow_id) is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        now = repo.now(session)
        return {"schedules": [schedule_json(s, now) for s in repo.list_schedules(session, tenant_id, workflow_id)]}


@bp.get("/schedules")
def all_schedules():
    with services().sessions() as session:
        now = repo.now(session)
        return {"schedules": [schedule_json(s, now) for s in repo.list_schedules(session, principal().tenant_id)]}


@bp.delete("/workflows/<workflow_id>/schedules/<schedule_id>")
def delete_schedule(workflow_id: str, schedule_id: str):
    with transaction(services().sessions) as session:
        if not repo.delete_schedule(session, (principal().tenant_id, workflow_id, schedule_id)):
            raise NotFound(f"schedule {schedule_id!r} of workflow {workflow_id!r} not found")
    return "", 204
