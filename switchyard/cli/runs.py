"""``switchyard runs …``: start, list, read, watch and control runs."""

from __future__ import annotations

import sys
from typing import Any

import click

from switchyard.cli import watch as board
from switchyard.cli.common import EXIT_RUN_FAILED, Remote, json_arg, quiet, remote, short, table, when
from switchyard.client.models import Run, RunSummary, StepError

RUN_STATUSES = ("queued", "running", "waiting", "paused", "succeeded", "failed", "cancelled")


@click.group()
def runs() -> None:
    """Start, list, read, watch and control runs."""


def show_run(remote_: Remote, run: Run, *, only_id: bool = False) -> None:
    """The run for people: its line, then its steps (``only_id``: its id alone)."""
    def people() -> None:
        error = f"  error: {said(run.error)}" if run.error else ""
        click.echo(f"{run.id}  {run.workflow.id} v{run.workflow.version}  {run.status}"
                   f"{f' (waiting on {run.waiting_on})' if run.waiting_on else ''}{error}")
        if run.steps:
            table(None, ("step", "type", "status", "attempt", "output / error"),
                  ((s.id, s.type, s.status, f"{s.attempt}/{s.max_attempts}", _result(s)) for s in run.steps))
        if run.status == "succeeded" and run.output is not None:
            click.echo(f"output: {short(run.output, 200)}")

    remote_.emit(run, people, ids=[run.id] if only_id else None)


def said(error: StepError) -> str:
    """A step's (or run's) error on one line: its code and message."""
    return f"{error.code}: {error.message}"


def _result(step: Any) -> str | None:
    """A step's error, else its output, else why it was skipped or what it waits on (None: nothing yet)."""
    if step.error:
        return short(said(step.error))
    if step.output is not None:
        return short(step.output)
    return step.skipped_reason or (f"waiting on {step.waiting_on}" if step.waiting_on else None)


def finish(run: Run) -> None:
    """Exit 1 unless the run succeeded (for the commands that wait for it)."""
    if run.status != "succeeded":
        sys.exit(EXIT_RUN_FAILED)


@runs.command("start")
@click.argument("workflow")
@click.option("--input", "input_", metavar="JSON|@FILE", help="The run's input: JSON, or @file.json.")
@click.option("--version", type=click.IntRange(min=1), help="A version of the workflow (default: the latest).")
@click.option("--priority", type=click.IntRange(1, 9), help="1 (first) to 9 (default: the workflow's, else 5).")
@click.option("--idempotency-key", metavar="KEY", help="The same key and input answer the first run again.")
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit 1 unless it succeeded.")
@click.option("--follow", is_flag=True, help="Print the run's events as they happen; exit 1 unless it succeeded.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds (exit 1).")
@quiet
@remote
def start(remote_: Remote, workflow: str, input_: str | None, version: int | None, priority: int | None,
          idempotency_key: str | None, wait: bool, follow: bool, timeout: float | None, quiet: bool) -> None:
    """Start a run of WORKFLOW."""
    if wait and follow:
        raise click.UsageError("--wait and --follow exclude each other: --follow waits too, printing events")
    run = remote_.client.runs.start(workflow, json_arg(input_, "--input"), version=version, priority=priority,
                                    idempotency_key=idempotency_key)
    if follow:
        _follow(remote_, run.id)
        run = remote_.client.runs.get(run.id)
    elif wait:
        if not remote_.as_json:
            click.echo(f"started {run.id}; waiting for it to end", err=True)
        run = remote_.client.runs.wait(run.id, timeout=timeout)
    show_run(remote_, run, only_id=quiet)
    if wait or follow:
        finish(run)


def _follow(remote_: Remote, run_id: str) -> None:
    """The run's events as they happen: a line each (with --json, JSON lines; so is what follows)."""
    remote_.json_lines = True
    for event in remote_.client.runs.follow(run_id):
        remote_.emit(event, lambda e=event: click.echo(board.line(e)))


@runs.command("wait")
@click.argument("run_id")
@click.option("--until", "until", type=click.Choice(["ended", "waiting", "paused", "running"]), default="ended",
              show_default=True, help="Wait for the run to end, or to reach this status (or end).")
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@remote
def wait_(remote_: Remote, run_id: str, until: str, timeout: float | None) -> None:
    """Wait for a run to end (exit 0 if it succeeded, else 1) or to reach a status (exit 0)."""
    run = remote_.client.runs.wait(run_id, timeout=timeout, until=() if until == "ended" else (until,))
    show_run(remote_, run)
    if run.status != until:
        finish(run)


@runs.command("list")
@click.option("--status", type=click.Choice(RUN_STATUSES))
@click.option("--workflow", "workflow_id", metavar="ID", help="Only runs of this workflow.")
@click.option("--parent", "parent_run_id", metavar="RUN_ID", help="Only the child runs of this run.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="At most this many runs (read page after page).")
@quiet
@remote
def list_(remote_: Remote, status: str | None, workflow_id: str | None, parent_run_id: str | None, limit: int,
          quiet: bool) -> None:
    """The tenant's runs, newest first."""
    found: list[RunSummary] = []
    for run in remote_.client.runs.list(status=status, workflow_id=workflow_id, parent_run_id=parent_run_id,
                                        page_size=min(limit, 500)):
        found.append(run)
        if len(found) >= limit:
            break
    remote_.emit(found, lambda: table(None, ("run", "workflow", "status", "current step", "created"), (
        (r.id, f"{r.workflow.id} v{r.workflow.version}", r.status + (f" ({r.waiting_on})" if r.waiting_on else ""),
         r.current_step, when(r.created_at)) for r in found)), ids=[r.id for r in found] if quiet else None)


@runs.command("get")
@click.argument("run_id")
@remote
def get(remote_: Remote, run_id: str) -> None:
    """A run with its steps."""
    show_run(remote_, remote_.client.runs.get(run_id))


@runs.command("events")
@click.argument("run_id")
@click.option("--after", default=0, show_default=True, type=click.IntRange(min=0), help="Events after this seq.")
@remote
def events(remote_: Remote, run_id: str, after: int) -> None:
    """A run's event log."""
    found = list(remote_.client.runs.events(run_id, after=after))
    remote_.emit(found, lambda: table(None, ("seq", "time", "type", "step", "attempt", "data"), (
        (e.seq, when(e.created_at), e.type, e.step_id, e.attempt, short(e.data) if e.data else None)
        for e in found)))


@runs.command("watch")
@click.argument("run_id")
@remote
def watch_(remote_: Remote, run_id: str) -> None:
    """A run's steps, redrawn live from its event stream until it ends; exit 1 unless it succeeded."""
    client = remote_.client
    run = client.runs.get(run_id)
    if remote_.as_json:
        _follow(remote_, run_id)
    elif sys.stdout.isatty():
        _live(client, run)
    else:
        for event in client.runs.follow(run_id):
            click.echo(board.line(event))
    run = client.runs.get(run_id)
    if not remote_.as_json:
        from rich.console import Console

        Console().print(board.render(board.board_from(run, replay=False)))
    finish(run)


def _live(client: Any, run: Run) -> None:
    from rich.live import Live

    view = board.board_from(run, replay=True)
    with Live(board.render(view), refresh_per_second=8, transient=True) as live:
        for event in client.runs.follow(run.id):
            view = board.apply(view, event)
            live.update(board.render(view))


def _control(action: str, doc: str):
    @click.argument("run_id")
    @remote
    def command(remote_: Remote, run_id: str, **options: Any) -> None:
        run = getattr(remote_.client.runs, action)(run_id, **options)
        remote_.emit(run, lambda: click.echo(f"{run.id}: {run.status}"
                                             + (f" (a new run of {run_id})" if run.id != run_id else "")))

    command.__doc__ = doc
    command.__name__ = action
    return command


runs.command("pause")(_control("pause", "Pause a running or waiting run: nothing new is dispatched."))
runs.command("resume")(_control("resume", "Resume a paused run."))
runs.command("retry")(_control("retry", "Continue a failed or cancelled run from its failed steps."))
runs.command("rerun")(_control("rerun", "Start a new run with the same workflow version and input."))
runs.command("cancel")(click.option("--reason", help="Recorded on the run.")(
    click.option("--mode", type=click.Choice(["immediate", "graceful"]), default="immediate", show_default=True,
                 help="immediate stops steps in flight; graceful lets them finish.")(
        _control("cancel", "Cancel a run."))))


@runs.command("fork")
@click.argument("run_id")
@click.option("--from", "from_step", required=True, metavar="STEP", help="The first step to run anew.")
@click.option("--input-patch", metavar="JSON|@FILE", help="A JSON merge patch (RFC 7396) of the run's input.")
@click.option("--input", "input_", metavar="JSON|@FILE", help="A new input instead of the original one.")
@click.option("--wait", is_flag=True, help="Wait for the new run to end; exit 1 unless it succeeded.")
@quiet
@remote
def fork(remote_: Remote, run_id: str, from_step: str, input_patch: str | None, input_: str | None,
         wait: bool, quiet: bool) -> None:
    """A new run from STEP of an ended run; the steps STEP does not depend on keep their outputs."""
    run = remote_.client.runs.fork(run_id, from_step, input=json_arg(input_, "--input"),
                                   input_patch=json_arg(input_patch, "--input-patch"))
    if wait:
        run = remote_.client.runs.wait(run.id)
    show_run(remote_, run, only_id=quiet)
    if wait:
        finish(run)


@runs.command("compare")
@click.argument("run_id")
@click.argument("other_id")
@remote
def compare(remote_: Remote, run_id: str, other_id: str) -> None:
    """Two runs step by step (e.g. a fork and its original), and the first step that diverges."""
    found = remote_.client.runs.compare(run_id, other_id)

    def side(step: Any) -> str:
        if step is None:
            return "-"
        return f"{step.status} (reused)" if step.reused else f"{step.status} ×{step.attempts}"

    def people() -> None:
        click.echo(f"{found.run.id} ({found.run.status}) against {found.other.id} ({found.other.status}); "
                   f"first divergence: {found.first_divergence or 'none'}")
        table(None, ("step", run_id, other_id, "input", "output"), (
            (s.step_id, side(s.run), side(s.other), "changed" if s.input_changed else "same",
             short(s.output_diff) if s.output_changed else "same") for s in found.steps))

    remote_.emit(found, people)


@runs.command("bulk")
@click.argument("action", type=click.Choice(["cancel", "pause", "resume", "retry", "rerun", "fork"]))
@click.option("--status", multiple=True, type=click.Choice(RUN_STATUSES), help="Runs in this status (repeatable).")
@click.option("--workflow", "workflow_id", metavar="ID", help="Runs of this workflow.")
@click.option("--error-code", metavar="CODE", help="Runs whose error has this code.")
@click.option("--run", "run_ids", multiple=True, metavar="RUN_ID", help="This run (repeatable).")
@click.option("--limit", type=click.IntRange(1, 1000), help="At most this many runs, newest first (API default 100).")
@click.option("--dry-run", is_flag=True, help="Only say what would be done.")
@click.option("--from", "from_step", metavar="STEP", help="fork: the first step to run anew.")
@click.option("--input-patch", metavar="JSON|@FILE", help="fork: a JSON merge patch of each run's input.")
@click.option("--reason", help="cancel: recorded on each run.")
@remote
def bulk(remote_: Remote, action: str, status: tuple[str, ...], run_ids: tuple[str, ...], input_patch: str | None,
         **fields: Any) -> None:
    """ACTION on every run the filter selects (at least one of --status, --workflow, --error-code, --run)."""
    result = remote_.client.runs.bulk(action, status=list(status) or None, run_ids=list(run_ids) or None,
                                      input_patch=json_arg(input_patch, "--input-patch"), **fields)

    def people() -> None:
        done = f"would apply to {len(result.runs)}" if fields["dry_run"] else f"applied to {result.applied}"
        click.echo(f"{action}: {result.matched} matched, {done}, skipped {len(result.skipped)}")
        for run_id in result.runs:
            click.echo(f"  {run_id}")
        for skip in result.skipped:
            click.echo(f"  skipped {skip.run_id}: {skip.reason}")

    remote_.emit(result, people)


@runs.command("items")
@click.argument("run_id")
@click.argument("step_id")
@click.option("--status", type=click.Choice(["pending", "queued", "running", "retrying", "succeeded", "failed",
                                             "cancelled"]))
@remote
def items(remote_: Remote, run_id: str, step_id: str, status: str | None) -> None:
    """A for-each step's items, in index order."""
    found = list(remote_.client.runs.items(run_id, step_id, status=status))
    remote_.emit(found, lambda: table(None, ("index", "status", "attempt", "output / error"), (
        (i.index, i.status, i.attempt, short(said(i.error) if i.error else i.output)) for i in found)))
