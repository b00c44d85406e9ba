"""The workflow editor of the web UI: paste or edit a definition (JSON or YAML), checked as you type
by the API itself (``PUT /workflows/{id}?dry_run=true``: the same 400s a publish would get), the
graph previewed from the draft, the changes from the latest version shown, and published as a new
version. Also a diff between any two published versions. Routes of the ``ui`` blueprint."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import flash, redirect, render_template, request, url_for

from api.ui import drafts, graph
from api.ui.views import api, bp, get

STARTER = {"name": "New workflow", "steps": [
    {"id": "first", "type": "tool", "tool": "echo", "args": {"text": "{{ input.text }}"}},
]}


@dataclass
class Check:
    """What the editor shows beside the text: the API's verdict, the graph and the changes."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    version: int | None = None  # the version a publish would make
    layout: graph.Layout | None = None
    changes: list[drafts.Line] = field(default_factory=list)
    base: int | None = None  # the published version the changes are from


def _latest(workflow_id: str) -> dict | None:
    """The latest published version of the workflow (None for a new one)."""
    status, workflow = api("GET", f"/workflows/{workflow_id}")
    if status != 200:
        return None
    return get(f"/workflows/{workflow_id}/versions/{workflow['version']}")


def check(workflow_id: str, text: str, fmt: str, latest: dict | None) -> Check:
    """Read the draft, ask the API to check it without storing it, and draw what can be drawn."""
    parsed = drafts.parse(text, fmt)
    if parsed.problem:
        return Check(False, [parsed.problem])
    status, body = api("PUT", f"/workflows/{workflow_id}", query={"dry_run": "true"}, body=parsed.value)
    result = Check(status == 200, version=body.get("version"))
    if status != 200:
        error = body.get("error", {})
        result.problems = (error.get("details") or {}).get("problems") or [
            error.get("message", f"the API answered {status}")]
    draft = body["definition"] if result.ok else parsed.value
    steps = drafts.drawable_steps(draft)
    result.layout = graph.layout(steps) if steps else None
    if latest is not None:
        result.base = latest["version"]
        result.changes = drafts.diff(latest["definition"], draft, old_name=f"v{latest['version']}", new_name="draft")
    return result


def _format() -> str:
    chosen = request.values.get("format", "json")
    return chosen if chosen in drafts.FORMATS else "json"


@bp.get("/workflows/<workflow_id>/edit")
def editor(workflow_id: str):
    fmt, latest = _format(), _latest(workflow_id)
    text = drafts.dump(latest["definition"] if latest else STARTER, fmt)
    return render_template("editor.html", workflow_id=workflow_id, text=text, fmt=fmt, latest=latest,
                           check=check(workflow_id, text, fmt, latest))


@bp.post("/workflows/<workflow_id>/edit/check")
def editor_check(workflow_id: str):
    """The editor's check as you type: the verdict and the fragment that shows it."""
    sent = request.get_json(silent=True) or {}
    fmt = sent.get("format") if sent.get("format") in drafts.FORMATS else "json"
    result = check(workflow_id, str(sent.get("text", "")), fmt, _latest(workflow_id))
    return {"ok": result.ok, "problems": result.problems,
            "html": render_template("_editor_check.html", check=result, workflow_id=workflow_id)}


@bp.post("/workflows/<workflow_id>/edit")
def editor_publish(workflow_id: str):
    text, fmt = request.form.get("definition", ""), _format()
    parsed = drafts.parse(text, fmt)
    if parsed.problem is None:
        status, body = api("PUT", f"/workflows/{workflow_id}", body=parsed.value)
        if status == 201:
            flash(f"Published version {body['version']}.", "ok")
            return redirect(url_for("ui.workflow", workflow_id=workflow_id, version=body["version"]))
    latest = _latest(workflow_id)
    page = render_template("editor.html", workflow_id=workflow_id, text=text, fmt=fmt, latest=latest,
                           check=check(workflow_id, text, fmt, latest), refused=True)
    return page, 400


@bp.get("/workflows/new")
def new_workflow():
    """The workflows page's "new workflow" form: the editor of the id typed."""
    workflow_id = request.args.get("id", "").strip()
    if not workflow_id or "/" in workflow_id:
        flash("Name the new workflow: letters, digits, '_', '.' and '-'.", "error")
        return redirect(url_for("ui.workflows"))
    return redirect(url_for("ui.editor", workflow_id=workflow_id, format=_format()))


@bp.get("/workflows/<workflow_id>/diff")
def versions_diff(workflow_id: str):
    workflow = get(f"/workflows/{workflow_id}")
    newer = request.args.get("to", type=int) or workflow["version"]
    older = request.args.get("from", type=int) or max(newer - 1, 1)
    before, after = (get(f"/workflows/{workflow_id}/versions/{n}") for n in (older, newer))
    lines = drafts.diff(before["definition"], after["definition"], old_name=f"v{older}", new_name=f"v{newer}")
    return render_template("diff.html", workflow=workflow, older=older, newer=newer, lines=lines)
