"""``switchyard workflows|approvals|questions|events|schedules …``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from switchyard.cli.common import Remote, json_arg, quiet, remote, short, table, when


@click.group()
def workflows() -> None:
    """Publish, list, read and archive workflows."""


@workflows.command("list")
@click.option("--archived", is_flag=True, help="The archived workflows instead.")
@remote
def workflows_list(remote_: Remote, archived: bool) -> None:
    """The tenant's workflows."""
    found = remote_.client.workflows.list(archived=archived)
    remote_.emit(found, lambda: table(None, ("workflow", "name", "kind", "version", "updated"), (
        (w.id, w.name, w.kind, w.version, when(w.updated_at)) for w in found)))


@workflows.command("get")
@click.argument("workflow_id")
@remote
def workflows_get(remote_: Remote, workflow_id: str) -> None:
    """A workflow: its latest definition and its versions."""
    found = remote_.client.workflows.get(workflow_id)

    def people() -> None:
        versions = ", ".join(str(v.version) for v in found.versions)
        click.echo(f"{found.id}  {found.name}  ({found.kind}; latest version {found.version}; versions {versions})")
        click.echo(json.dumps(found.definition, indent=2))

    remote_.emit(found, people)


def read_definition(path: str) -> dict[str, Any]:
    """A definition from a JSON or YAML file (``-``: standard input); BadParameter saying what is wrong."""
    import yaml

    try:
        text = click.get_text_stream("stdin").read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="-f") from None
    try:
        definition = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}",
                                 param_hint="-f") from None
    if not isinstance(definition, dict):
        raise click.BadParameter(f"{path} must hold one definition (a mapping with name and steps)", param_hint="-f")
    return definition


@workflows.command("publish")
@click.argument("workflow_id")
@click.option("-f", "--file", "path", required=True, metavar="FILE",
              help="The definition: a .json file, or YAML (any other name; - reads standard input).")
@remote
def workflows_publish(remote_: Remote, workflow_id: str, path: str) -> None:
    """Publish FILE as the next version of WORKFLOW_ID (admin)."""
    version = remote_.client.workflows.publish(workflow_id, read_definition(path))
    remote_.emit(version, lambda: click.echo(f"published {version.id} version {version.version}"))


@workflows.command("archive")
@click.argument("workflow_id")
@remote
def workflows_archive(remote_: Remote, workflow_id: str) -> None:
    """Archive a workflow (admin): it can no longer be started; its runs stay; publishing restores it."""
    remote_.client.workflows.archive(workflow_id)
    remote_.emit({"archived": workflow_id}, lambda: click.echo(f"archived {workflow_id}"))


@click.group()
def approvals() -> None:
    """The approvals inbox and decisions."""


@approvals.command("list")
@click.option("--status", default="pending", show_default=True, help="pending, decided, cancelled or all.")
@click.option("--run", "run_id", metavar="RUN_ID", help="Only this run's.")
@quiet
@remote
def approvals_list(remote_: Remote, status: str, run_id: str | None, quiet: bool) -> None:
    """Approval requests."""
    found = [a for a in remote_.client.approvals.list(status=status) if run_id in (None, a.run_id)]
    remote_.emit(found, lambda: table(None, ("run", "approval", "step", "status", "prompt", "created"), (
        (a.run_id, a.id, a.step_id, a.status, short(a.prompt or "", 50), when(a.created_at)) for a in found)),
        ids=[a.id for a in found] if quiet else None)


def _decision(name: str, doc: str):
    @click.argument("run_id")
    @click.argument("approval_id")
    @click.option("--comment", "-m", help="Recorded with the decision (request-changes: the step sees it).")
    @remote
    def command(remote_: Remote, run_id: str, approval_id: str, comment: str | None) -> None:
        run = getattr(remote_.client.approvals, name)(run_id, approval_id, comment)
        remote_.emit(run, lambda: click.echo(f"{approval_id}: {name.replace('_', ' ')}; run {run.id} is {run.status}"))

    command.__doc__ = doc
    return command


approvals.command("approve")(_decision("approve", "Approve: the run goes on."))
approvals.command("reject")(_decision("reject", "Reject: the run fails with approval_rejected."))
approvals.command("request-changes")(_decision(
    "request_changes", "Request changes: the step before the approval runs again with the comment, then asks again."))


@click.group()
def questions() -> None:
    """Questions a run asks people, and their answers."""


@questions.command("list")
@click.option("--status", help="The API's default (the ones waiting for an answer), answered, cancelled or all.")
@click.option("--run", "run_id", metavar="RUN_ID", help="Only this run's.")
@quiet
@remote
def questions_list(remote_: Remote, status: str | None, run_id: str | None, quiet: bool) -> None:
    """Questions."""
    found = [q for q in remote_.client.questions.list(status=status) if run_id in (None, q.run_id)]
    remote_.emit(found, lambda: table(None, ("run", "question", "step", "status", "text", "created"), (
        (q.run_id, q.id, q.step_id, q.status, short(q.question, 50), when(q.created_at)) for q in found)),
        ids=[q.id for q in found] if quiet else None)


@questions.command("answer")
@click.argument("run_id")
@click.argument("question_id")
@click.argument("text")
@click.option("--json-value", is_flag=True, help="TEXT is JSON: the answer is the value it holds.")
@remote
def questions_answer(remote_: Remote, run_id: str, question_id: str, text: str, json_value: bool) -> None:
    """Answer a question: the run goes on."""
    answer = json_arg(text, "TEXT") if json_value else text
    run = remote_.client.questions.answer(run_id, question_id, answer)
    remote_.emit(run, lambda: click.echo(f"{question_id}: answered; run {run.id} is {run.status}"))


@click.group()
def events() -> None:
    """Events in: to wait_event steps and event triggers."""


@events.command("send")
@click.argument("name")
@click.option("--payload", metavar="JSON|@FILE", help="The event's payload.")
@click.option("--key", metavar="K", help="The correlation key wait_event steps wait on.")
@click.option("--id", "event_id", metavar="ID", help="An id: the same event sent again starts nothing again.")
@remote
def events_send(remote_: Remote, name: str, payload: str | None, key: str | None, event_id: str | None) -> None:
    """Send the event NAME."""
    accepted = remote_.client.events.send(name, json_arg(payload, "--payload"), correlation_key=key,
                                          event_id=event_id)
    remote_.emit(accepted, lambda: click.echo(
        f"delivered to {len(accepted.delivered_to)} step(s); started {len(accepted.started_runs)} run(s)"
        + "".join(f"\n  {d.run_id} {d.step_id}" for d in accepted.delivered_to)
        + "".join(f"\n  {r}" for r in accepted.started_runs)))


@click.group()
def schedules() -> None:
    """Schedules that start runs of a workflow (cron)."""


@schedules.command("list")
@click.option("--workflow", "workflow_id", metavar="ID", help="Only this workflow's.")
@remote
def schedules_list(remote_: Remote, workflow_id: str | None) -> None:
    """Schedules, with their next fire time."""
    found = remote_.client.schedules.list(workflow_id)
    remote_.emit(found, lambda: table(None, ("workflow", "schedule", "cron", "timezone", "enabled", "next"), (
        (s.workflow_id, s.id, s.cron, s.timezone, s.enabled, when(s.next_fire_times[0] if s.next_fire_times else None))
        for s in found)))


@schedules.command("set")
@click.argument("workflow_id")
@click.argument("schedule_id")
@click.option("--cron", required=True, help='A cron expression, e.g. "*/5 * * * *".')
@click.option("--timezone", help="An IANA time zone (e.g. Europe/Berlin); default UTC.")
@click.option("--input", "input_", metavar="JSON|@FILE", help="The input of the runs it starts.")
@click.option("--overlap", type=click.Choice(["skip", "allow", "cancel_previous"]))
@click.option("--catchup", type=click.Choice(["none", "latest", "all"]))
@click.option("--enabled/--disabled", default=True, show_default=True)
@remote
def schedules_set(remote_: Remote, workflow_id: str, schedule_id: str, input_: str | None, **fields: Any) -> None:
    """Create or replace a schedule of WORKFLOW_ID (admin)."""
    found = remote_.client.schedules.set(workflow_id, schedule_id, fields.pop("cron"),
                                         input=json_arg(input_, "--input"), **fields)
    remote_.emit(found, lambda: click.echo(
        f"{found.workflow_id}/{found.id}: {found.cron}; next: "
        + (", ".join(when(t) for t in found.next_fire_times[:3]) or "-")))


@schedules.command("delete")
@click.argument("workflow_id")
@click.argument("schedule_id")
@remote
def schedules_delete(remote_: Remote, workflow_id: str, schedule_id: str) -> None:
    """Delete a schedule (admin)."""
    remote_.client.schedules.delete(workflow_id, schedule_id)
    remote_.emit({"deleted": schedule_id}, lambda: click.echo(f"deleted {workflow_id}/{schedule_id}"))
