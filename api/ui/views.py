"""The web UI: server-rendered pages over the run API, signed in with an API token.

Signing in checks the pasted token once; Flask's signed session cookie (HttpOnly, SameSite=Lax,
Secure with SWITCHYARD_UI_SECURE_COOKIES) then keeps the token's id and tenant, never the token
itself, and each request looks the token up again, so a revoked token ends its sessions. Every page
reads and acts through the API itself, called in-process as that token's principal, so the UI can
never do more than the token's tenant and role allow: the API checks each call again. Every POST
carries the session's CSRF token.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from urllib.parse import urlencode

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup, escape

from api import auth, evidence, live
from api.auth import Principal
from api.context import services
from api.ui import charts, forms, graph, timeline, times
from orchestrator.db import repository as repo
from orchestrator.db.repository import ui_reads
from orchestrator.errors import Forbidden
from orchestrator.states import CONTROLS, TERMINAL_RUN, RunStatus

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")

# Pages a visitor without a session may see (everything else sends them to sign in).
OPEN = {"ui.sign_in", "ui.static"}
ACTIVE = ("running", "waiting", "paused", "queued")


# -- session, CSRF and the in-process API ---------------------------------------------------------

@bp.before_app_request
def _session_guard():
    if request.blueprint != "ui":
        return None
    if request.method == "POST" and not _csrf_ok():
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")
    if request.endpoint in OPEN:
        return None
    found = None
    if session.get("token_id") and session.get("tenant"):
        with services().sessions() as db:
            found = repo.get_token(db, session["tenant"], session["token_id"])
    if found is None or found.revoked_at is not None:
        session.pop("token_id", None)
        return redirect(url_for("ui.sign_in", next=request.full_path if request.method == "GET" else None))
    g.principal = Principal(found.id, found.tenant_id, found.role)
    return None


def _csrf_ok() -> bool:
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    return bool(expected) and secrets.compare_digest(sent, expected)


@bp.app_context_processor
def _template_globals():
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    who = g.get("principal") if request.blueprint == "ui" else None
    return {"csrf_token": session["csrf"], "who": who, "legend_statuses": graph.LEGEND,
            "can_operate": bool(who and who.has("operator")), "can_publish": bool(who and who.has("admin")),
            "status_label": graph.label}


@bp.app_template_filter("clock")
def _clock(value) -> str:
    return times.clock(value)


@bp.app_template_filter("timetag")
def _timetag(iso) -> Markup:
    """A <time datetime> with its UTC fallback (ui.js makes it local and relative); — without a time."""
    if not iso:
        return Markup("—")
    text = escape(times.iso(iso))
    return Markup(f'<time datetime="{text}" title="{text}">{times.clock(iso)}</time>')


@bp.app_template_filter("took")
def _took(start, end=None) -> str:
    """How long from ``start`` to ``end`` (to now while it goes on)."""
    return times.between(start, end)


@bp.app_template_filter("pretty")
def _pretty(value) -> str:
    """JSON for people: indented, non-ASCII and quotes as themselves (Jinja escapes it for HTML)."""
    return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=False, default=str)


def api(method: str, path: str, *, query: dict | None = None, body: dict | None = None):
    """Call the run API in-process as the session's principal; (status code, JSON body)."""
    client, who = current_app.test_client(), g.principal
    # A fresh app context: the nested request would otherwise share this request's `g` (Flask reuses an
    # active context of the same app), and its teardown would undo what this request's hooks set up.
    with current_app.app_context():
        response = client.open(f"/api/v1{path}", method=method, query_string=query, json=body,
                               environ_base={auth.IN_PROCESS: who})
    return response.status_code, response.get_json(silent=True) or {}


def get(path: str, **query):
    status, body = api("GET", path, query={k: v for k, v in query.items() if v not in (None, "")})
    if status == 404:
        abort(404)
    if status >= 400:
        raise Forbidden(body.get("error", {}).get("message", f"the API answered {status}"))
    return body


def _act(method: str, path: str, body: dict | None, done: str, back: str):
    """POST to the API, flash what happened, and go back."""
    status, answer = api(method, path, body=body)
    if status < 400:
        flash(done, "ok")
    else:
        flash(answer.get("error", {}).get("message", f"the API answered {status}"), "error")
    return redirect(back)


# -- sign in and out ------------------------------------------------------------------------------

@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    if request.method == "POST":
        token = request.form.get("token", "").strip()
        with services().sessions() as db:
            found = repo.find_token(db, token) if token else None
        if found is None:
            flash("That token is unknown or revoked.", "error")
            return render_template("sign_in.html"), 401
        session.clear()
        session.update(token_id=found.id, tenant=found.tenant_id, csrf=secrets.token_urlsafe(32))
        session.permanent = True
        target = request.form.get("next") or ""
        return redirect(target if _local(target) else url_for("ui.command"))
    return render_template("sign_in.html")


def _local(target: str) -> bool:
    """Whether ``target`` is a path of this site (never another host: no open redirect)."""
    return target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target


@bp.post("/sign-out")
def sign_out():
    session.clear()
    return redirect(url_for("ui.sign_in"))


# -- Command Center -------------------------------------------------------------------------------

@bp.get("/")
def command():
    return render_template("command.html", **_command_data())


@bp.get("/command/panels")
def command_panels():
    return render_template("_command_panels.html", **_command_data())


def _command_data() -> dict:
    active = [r for status in ACTIVE for r in get("/runs", status=status, limit=20)["runs"]]
    _with_current_steps(active)
    return {
        "approvals": get("/approvals")["approvals"],
        "questions": get("/questions")["questions"],
        "active": sorted(active, key=lambda r: r["created_at"], reverse=True),
        "failures": get("/runs", status="failed", limit=10)["runs"],
    }


@bp.post("/runs/<run_id>/approvals/<approval_id>/<any(approve, reject, request_changes):decision>")
def decide(run_id: str, approval_id: str, decision: str):
    comment = request.form.get("comment") or None
    return _act("POST", f"/runs/{run_id}/approvals/{approval_id}/{decision}", {"comment": comment},
                f"Approval {decision.replace('_', ' ')}d." if decision != "request_changes"
                else "Changes requested.", url_for("ui.command"))


@bp.post("/runs/<run_id>/questions/<question_id>/answer")
def answer(run_id: str, question_id: str):
    raw = request.form.get("answer", "")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # plain text is an answer too
    return _act("POST", f"/runs/{run_id}/questions/{question_id}/answer", {"answer": value},
                "Answer sent.", url_for("ui.command"))


# -- runs -----------------------------------------------------------------------------------------

@bp.get("/runs")
def runs():
    found = request.args.get("q", "").strip()
    if found:
        status, _ = api("GET", f"/runs/{found}")
        if status == 200:
            return redirect(url_for("ui.run", run_id=found))
        flash(f"No run {found!r} in this tenant.", "error")
    args = {k: request.args.get(k) for k in ("status", "workflow_id", "cursor")}
    page = get("/runs", limit=25, **args)
    _with_current_steps(page["runs"])
    more = None
    if page["next_cursor"]:
        more = url_for("ui.runs") + "?" + urlencode({**{k: v for k, v in args.items() if v}, "cursor": page["next_cursor"]})
    return render_template("runs.html", runs=page["runs"], more=more, args=args,
                           statuses=[s.value for s in RunStatus], workflows=get("/workflows")["workflows"])


def _with_current_steps(runs: list[dict]) -> None:
    """Fill each run's ``current_step`` (lists of the API leave it out), in one query for the page.
    The ids come from the API's answer for this principal, so they are this tenant's."""
    with services().sessions() as db:
        holding = ui_reads.current_steps(db, [r["id"] for r in runs])
    for r in runs:
        r["current_step"] = r.get("current_step") or holding.get(r["id"])


@bp.get("/runs/<run_id>")
def run(run_id: str):
    body = get(f"/runs/{run_id}")
    with services().sessions() as db:  # the API's answer above checked the run is this tenant's
        events = ui_reads.run_events(db, run_id, LOG_MAX)
    attempts = [e for e in events if e["type"] in ui_reads.TIMELINE_EVENTS]
    return render_template("run.html", **_run_data(body, attempts), **_log_data(events, body["status"]))


@bp.get("/runs/<run_id>/body")
def run_body(run_id: str):
    """The live part of the run page: re-rendered on each event of the run's stream."""
    body = get(f"/runs/{run_id}")
    with services().sessions() as db:  # the API's answer above checked the run is this tenant's
        attempts = ui_reads.timeline_events(db, run_id)
    return render_template("_run_body.html", **_run_data(body, attempts))


def _run_data(body: dict, attempts: list[dict]) -> dict:
    statuses = {s["id"]: s["status"] for s in body["steps"]}
    status = RunStatus(body["status"])
    controls = [name for name, control in CONTROLS.items() if status in control.allowed_from]
    diagnosis = get(f"/runs/{body['id']}/diagnosis") if status not in TERMINAL_RUN else None
    drawn = graph.with_statuses(_version_layout(body["workflow"]["id"], body["workflow"]["version"]), statuses,
                                {s["id"]: s for s in body["steps"]}, _node_links(body))
    return {"run": body, "layout": drawn, "controls": controls, "diagnosis": diagnosis,
            "timeline": timeline.build(body, attempts, datetime.now(UTC), frozenset(request.args.getlist("items")))}


def _node_links(body: dict) -> dict[str, str]:
    """Where a run's graph nodes lead: a for-each step to its items, a sub-run step to its newest child."""
    links = {s["id"]: url_for("ui.step_items", run_id=body["id"], step_id=s["id"])
             for s in body["steps"] if s.get("items")}
    if body.get("children"):
        for child in get("/runs", parent_run_id=body["id"], limit=500)["runs"][::-1]:  # oldest first: newest wins
            links[child["parent_step_id"]] = url_for("ui.run", run_id=child["id"])
    return links


@bp.get("/runs/<run_id>/steps/<step_id>/items")
def step_items(run_id: str, step_id: str):
    """A for-each step's items, a page at a time."""
    page = get(f"/runs/{run_id}/steps/{step_id}/items", limit=100, status=request.args.get("status"),
               cursor=request.args.get("cursor"))
    return render_template("items.html", run_id=run_id, step_id=step_id, page=page,
                           status=request.args.get("status") or "")


LAYOUTS_KEPT = 256


def _version_layout(workflow_id: str, version: int) -> graph.Layout:
    """The step graph of a workflow version, laid out once per app (a version never changes)."""
    kept = current_app.extensions.setdefault("switchyard_ui_layouts", {})
    key = (g.principal.tenant_id, workflow_id, version)
    if key not in kept:
        if len(kept) >= LAYOUTS_KEPT:
            kept.clear()
        kept[key] = graph.layout(get(f"/workflows/{workflow_id}/versions/{version}")["definition"]["steps"])
    return kept[key]


LOG_MAX = 20_000  # the events one run page reads at most


def _log_data(events: list[dict], run_status: str) -> dict:
    """The event log's window (api/ui/timeline.log_window), the whole log's size and its last seq."""
    shown, first_failure = timeline.log_window(events, failed=run_status == RunStatus.FAILED,
                                               show_all=request.args.get("log") == "all")
    return {"events": shown, "first_failure": first_failure, "event_count": len(events),
            "last_seq": events[-1]["seq"] if events else 0}


@bp.post("/runs/<run_id>/<any(pause, resume, cancel, retry, rerun):action>")
def control(run_id: str, action: str):
    body = None
    if action == "cancel":
        body = {"mode": request.form.get("mode") or "immediate", "reason": request.form.get("reason") or None}
    status, answer = api("POST", f"/runs/{run_id}/{action}", body=body)
    if status >= 400:
        flash(answer.get("error", {}).get("message", f"the API answered {status}"), "error")
    else:
        flash(f"{action.capitalize()}: done.", "ok")
        if action == "rerun":
            return redirect(url_for("ui.run", run_id=answer["id"]))
    return redirect(url_for("ui.run", run_id=run_id))


@bp.get("/runs/<run_id>/evidence")
def run_evidence(run_id: str):
    return evidence.run_evidence(run_id)


@bp.get("/runs/<run_id>/stream")
def run_stream(run_id: str):
    return live.follow_run(run_id, typed=False)


@bp.get("/stream")
def tenant_stream():
    return live.tenant_stream()


# -- workflows ------------------------------------------------------------------------------------

@bp.get("/workflows")
def workflows():
    return render_template("workflows.html", workflows=get("/workflows")["workflows"])


@bp.get("/workflows/<workflow_id>")
def workflow(workflow_id: str):
    return _workflow_page(workflow_id, request.args.get("version", type=int))


def _workflow_page(workflow_id: str, number: int | None, *, values=None, errors: dict | None = None):
    """The workflow page; after a refused start, the form again with what was typed and every error."""
    latest = get(f"/workflows/{workflow_id}")
    version = get(f"/workflows/{workflow_id}/versions/{number or latest['version']}")
    definition = version["definition"]
    page = render_template("workflow.html", workflow=latest, version=version, definition=definition,
                           layout=graph.layout(definition["steps"]),
                           fields=forms.fields(definition.get("input_schema") or {}),
                           values=values or {}, errors=errors or {})
    return page, 400 if errors else 200


@bp.post("/workflows/<workflow_id>/start")
def start(workflow_id: str):
    number = request.form.get("version", type=int)
    definition = get(f"/workflows/{workflow_id}/versions/{number}")["definition"]
    try:
        values = forms.parse(definition.get("input_schema") or {}, request.form)
    except forms.FormErrors as exc:
        return _workflow_page(workflow_id, number, values=request.form, errors=exc.errors)
    status, body = api("POST", "/runs", body={"workflow_id": workflow_id, "version": number, "input": values})
    if status >= 400:
        error = body.get("error", {})
        errors = forms.api_errors((error.get("details") or {}).get("problems") or [],
                                  error.get("message", f"the API answered {status}"))
        return _workflow_page(workflow_id, number, values=request.form, errors=errors)
    flash("Run started.", "ok")
    return redirect(url_for("ui.run", run_id=body["id"]))


# -- queues, workers, analytics -------------------------------------------------------------------

@bp.get("/queues")
def queues():
    return render_template("queues.html", queues=get("/queues")["queues"], workers=get("/workers")["workers"])


@bp.get("/analytics")
def analytics():
    chosen = request.args.get("range") if request.args.get("range") in charts.RANGES else charts.DEFAULT_RANGE
    _, since, bucket = charts.RANGES[chosen]
    points = {metric: get("/analytics/timeseries", metric=metric, bucket=bucket, since=since)["points"]
              for metric in ("runs_started", "runs_succeeded", "runs_failed", "steps", "credits")}
    ended = (points["runs_succeeded"], points["runs_failed"])
    shown = [charts.series("Success rate", charts.success_rate(*ended), percent=True),
             charts.series("Runs started", points["runs_started"], unit="runs"),
             charts.series("Steps finished", points["steps"], unit="steps"),
             charts.series("Credits", points["credits"], unit="credits")]
    return render_template("analytics.html", summary=get("/analytics/summary", since=since), bucket=bucket,
                           ranges=charts.RANGES, chosen=chosen, rate=charts.overall_rate(*ended), charts=shown)


# The editor's routes live in their own module, on this blueprint (it imports this one).
from api.ui import (  # noqa: E402 - after bp, to which these modules add their routes
    compare,  # noqa: F401 - the compare page and the runs list's bulk actions
    editor,  # noqa: F401
)
