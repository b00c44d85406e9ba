"""Comparing runs and acting on several at once in the web UI: the compare page (GET
/api/v1/runs/{id}/compare/{other_id} side by side, the first divergence marked) and the runs list's bulk
selection (POST /api/v1/runs/bulk/{action} on the runs ticked, or the compare page for two of them).
Routes of the ``ui`` blueprint."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for

from api.ui.views import api, bp, get

# What the runs list's selection can do: the bulk actions a person takes without more fields.
BULK_ACTIONS = ("cancel", "pause", "resume", "retry", "rerun")


@bp.get("/runs/<run_id>/compare/<other_id>")
def compare(run_id: str, other_id: str):
    return render_template("compare.html", comparison=get(f"/runs/{run_id}/compare/{other_id}"))


@bp.get("/runs/<run_id>/compare")
def compare_with(run_id: str):
    """The compare page for the run named in ``?other=`` (the form on the compare page)."""
    other = request.args.get("other", "").strip()
    if not other:
        flash("Name the run to compare with.", "error")
        return redirect(url_for("ui.run", run_id=run_id))
    return redirect(url_for("ui.compare", run_id=run_id, other_id=other))


@bp.post("/runs/selected")
def bulk():
    """The runs ticked on the runs list: compare two of them, or apply one action to all."""
    picked = request.form.getlist("run_id")
    action = request.form.get("action", "")
    back = request.form.get("back") or url_for("ui.runs")
    if action == "compare":
        if len(picked) != 2:
            flash(f"Tick exactly two runs to compare them ({len(picked)} ticked).", "error")
            return redirect(back)
        return redirect(url_for("ui.compare", run_id=picked[0], other_id=picked[1]))
    if action not in BULK_ACTIONS or not picked:
        flash("Tick some runs and choose what to do with them.", "error")
        return redirect(back)
    status, answer = api("POST", f"/runs/bulk/{action}", body={"filter": {"run_ids": picked}})
    if status >= 400:
        flash(answer.get("error", {}).get("message", f"the API answered {status}"), "error")
    else:
        skipped = "; ".join(f"{s['run_id']}: {s['reason']}" for s in answer["skipped"])
        flash(f"{action}: applied to {answer['applied']} of {len(picked)}." + (f" Skipped: {skipped}" if skipped else ""),
              "ok" if not skipped else "error")
    return redirect(back)
