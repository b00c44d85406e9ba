"""The workflow page's schedules (templates/_schedules.html): listed with their next fire times; an admin
adds, pauses, resumes and deletes them. Routes of the UI's blueprint, acting through the API in-process
as the session's principal (api/ui/views.py), which checks each call again."""

from __future__ import annotations

import json

from flask import flash, redirect, request, url_for

from api.ui.views import _act, bp, get


@bp.app_template_global()
def schedules_of(workflow_id: str) -> list[dict]:
    """The workflow's schedules, as GET /workflows/{id}/schedules answers them."""
    return get(f"/workflows/{workflow_id}/schedules")["schedules"]


def _back(workflow_id: str) -> str:
    return url_for("ui.workflow", workflow_id=workflow_id) + "#h-schedules"


@bp.post("/workflows/<workflow_id>/schedules")
def schedule_save(workflow_id: str):
    """Add (or replace) a schedule from the page's form."""
    form = request.form
    try:
        schedule_input = json.loads(form.get("input") or "{}")
    except ValueError:
        schedule_input = form.get("input")  # the API refuses it, naming the field
    body = {"cron": form.get("cron", ""), "timezone": form.get("timezone") or "UTC", "input": schedule_input,
            "overlap": form.get("overlap", "skip"), "catchup": form.get("catchup", "none"),
            "enabled": form.get("enabled", "on") == "on"}
    schedule_id = form.get("schedule_id", "").strip() or "-"
    return _act("PUT", f"/workflows/{workflow_id}/schedules/{schedule_id}", body,
                f"Schedule {schedule_id} saved.", _back(workflow_id))


@bp.post("/workflows/<workflow_id>/schedules/<schedule_id>/<any(pause, resume, delete):action>")
def schedule_action(workflow_id: str, schedule_id: str, action: str):
    """Pause or resume a schedule (the same schedule, enabled or not), or delete it."""
    if action == "delete":
        return _act("DELETE", f"/workflows/{workflow_id}/schedules/{schedule_id}", None,
                    f"Schedule {schedule_id} deleted.", _back(workflow_id))
    found = next((s for s in schedules_of(workflow_id) if s["id"] == schedule_id), None)
    if found is None:
        flash(f"schedule {schedule_id!r} not found", "error")
        return redirect(_back(workflow_id))
    body = {key: found[key] for key in ("cron", "timezone", "input", "overlap", "catchup")}
    body["enabled"] = action == "resume"
    return _act("PUT", f"/workflows/{workflow_id}/schedules/{schedule_id}", body,
                f"Schedule {schedule_id} {'resumed' if action == 'resume' else 'paused'}.", _back(workflow_id))
