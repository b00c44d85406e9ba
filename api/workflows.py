"""Workflows: publish versions, list, read, archive."""

from __future__ import annotations

import re

from flask import Blueprint, request

from api import serializers
from api.auth import principal
from api.context import json_body, services
from orchestrator import service
from orchestrator.db import repository as repo
from orchestrator.db.models import WorkflowVersion
from orchestrator.db.session import transaction
from orchestrator.errors import InvalidRequest, NotFound

bp = Blueprint("workflows", __name__)
WORKFLOW_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def _check_id(workflow_id: str) -> None:
    if not WORKFLOW_ID.match(workflow_id):
        raise InvalidRequest("a workflow id is 1-100 characters of letters, digits, '_', '.' and '-'")


@bp.put("/workflows/<workflow_id>")
def publish(workflow_id: str):
    _check_id(workflow_id)
    raw = json_body()
    if _dry_run():
        return _check_only(workflow_id, raw), 200
    with transaction(services().sessions) as session:
        version = service.publish_workflow(session, services().settings, principal().tenant_id, workflow_id, raw)
        body = serializers.version_json(version)
    return body, 201


def _dry_run() -> bool:
    value = request.args.get("dry_run", "false")
    if value not in ("true", "false"):
        raise InvalidRequest("query parameter 'dry_run' must be true or false", {"field": "dry_run"})
    return value == "true"


def _check_only(workflow_id: str, raw) -> dict:
    """``?dry_run=true`` (the web UI's editor validates as you type): the checks of a publish, the same
    400 on a refusal, nothing stored; answers the version it would become."""
    with services().sessions() as session:
        definition = service.check_workflow(session, services().settings, principal().tenant_id, workflow_id, raw)
        workflow = repo.get_workflow(session, principal().tenant_id, workflow_id)
        would_be = WorkflowVersion(workflow_id=workflow_id, version=(workflow.latest_version if workflow else 0) + 1,
                                   definition=definition.model_dump(mode="json", exclude_unset=True),
                                   created_at=repo.now(session))
    return serializers.version_json(would_be)


@bp.get("/workflows")
def list_workflows():
    """The live workflows; with ``?archived=true`` the archived ones."""
    archived = request.args.get("archived", "false")
    if archived not in ("true", "false"):
        raise InvalidRequest("query parameter 'archived' must be true or false", {"field": "archived"})
    with services().sessions() as session:
        workflows = repo.list_workflows(session, principal().tenant_id, archived=archived == "true")
        return {"workflows": [serializers.workflow_json(w) for w in workflows]}


@bp.delete("/workflows/<workflow_id>")
def archive(workflow_id: str):
    """Archive the workflow: it starts no run (409 workflow_archived) until a new version is published;
    its runs, live or not, are left as they are."""
    with transaction(services().sessions) as session:
        workflow = repo.archive_workflow(session, principal().tenant_id, workflow_id)
        if workflow is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        versions = repo.list_versions(session, principal().tenant_id, workflow_id)
        return serializers.workflow_json(workflow, list(versions))


@bp.get("/workflows/<workflow_id>")
def get_workflow(workflow_id: str):
    with services().sessions() as session:
        workflow = repo.get_workflow(session, principal().tenant_id, workflow_id)
        if workflow is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        versions = repo.list_versions(session, principal().tenant_id, workflow_id)
        return serializers.workflow_json(workflow, list(versions))


# Negative numbers are the definitions forks with step overrides run (POST /runs/{id}/fork).
@bp.get("/workflows/<workflow_id>/versions/<int(signed=True):number>")
def get_version(workflow_id: str, number: int):
    with services().sessions() as session:
        version = (repo.get_version(session, principal().tenant_id, workflow_id, number)
                   if -2**31 < number < 2**31 else None)  # the column's range
        if version is None:
            raise NotFound(f"workflow {workflow_id!r} has no version {number}")
        return serializers.version_json(version)
