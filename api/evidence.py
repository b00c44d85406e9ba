"""GET /runs/{id}/evidence: the run's whole story, its output files included, as a zip an auditor can
check offline (`switchyard evidence verify FILE`)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, stream_with_context

from api import serializers
from api.auth import principal
from api.context import services
from orchestrator import artifacts, evidence
from orchestrator.db import repository as repo
from orchestrator.errors import NotFound

bp = Blueprint("evidence", __name__)

# Event data keys that name who acted: such events are the run's audit entries.
ACTOR_KEYS = ("token_id", "triggered_by")


@bp.get("/runs/<run_id>/evidence")
def run_evidence(run_id: str):
    svc, who = services(), principal()
    with svc.sessions() as session:
        run = repo.get_run(session, who.tenant_id, run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        records, about = _contents(session, run)
    files: dict[str, bytes | Path] = {**records, **_output_files(svc.settings, run.id)}
    headers = {"Content-Disposition": f'attachment; filename="evidence-{run.id}.zip"'}
    chunks = evidence.stream_zip(files, about, svc.settings.secret_key)
    return Response(stream_with_context(chunks), mimetype="application/zip", headers=headers)


def _output_files(settings, run_id: str) -> dict[str, Path]:
    """The run's output files (file.write) as ``files/<name>``, streamed from the store into the zip."""
    store = artifacts.store(settings)
    return {f"{evidence.FILES_DIR}{stored.name}": store.path(run_id, stored.name) for stored in store.list(run_id)}


def _contents(session, run) -> tuple[dict[str, bytes], dict]:
    """Every file of the pack, read in one session so that they agree with each other."""
    steps = list(repo.run_steps(session, run.id))
    events, after = [], 0
    while batch := repo.run_events(session, run.id, after, 5000):
        events += [serializers.event_json(e) for e in batch]
        after = batch[-1].seq
    version = repo.get_version(session, run.tenant_id, run.workflow_id, run.workflow_version)
    files = {
        "run.json": serializers.full_run(session, run),
        "workflow_version.json": serializers.version_json(version),
        "steps.json": [serializers.step_json(s) for s in steps],
        "events.json": events,
        "approvals.json": [serializers.approval_json(a) for a in repo.run_approvals(session, run.id)],
        "questions.json": [serializers.question_json(q) for q in repo.run_questions(session, run.id)],
        "audit.json": _audit(run, events),
    }
    for step in steps:
        files[f"outputs/{step.step_id}.json"] = step.output
    about = {"run_id": run.id, "tenant_id": run.tenant_id, "run_status": run.status,
             "generated_at": serializers.ts(repo.now(session)), "events": len(events)}
    return {name: evidence.dumps(content) for name, content in files.items()}, about


def _audit(run, events: list[dict]) -> list[dict]:
    """Who did what to the run: its trigger, then every event a person or token caused."""
    entries = [{"at": serializers.ts(run.created_at), "action": "run_created", "step_id": None,
                "actor": {"trigger_type": run.trigger_type, "triggered_by": run.triggered_by}, "details": {}}]
    for e in events:
        if any(key in (e["data"] or {}) for key in ACTOR_KEYS):
            data = dict(e["data"])
            actor = {key: data.pop(key, None) for key in ACTOR_KEYS}
            entries.append({"at": e["created_at"], "action": e["type"], "step_id": e["step_id"], "seq": e["seq"],
                            "actor": actor, "details": data})
    return entries
