"""The API's resources as methods, shared by ``Client`` and ``AsyncClient``.

Each method describes its request (a ``Call``) and hands it to the client: ``Client`` answers the
model, ``AsyncClient`` an awaitable of it; iterating methods (``runs.list``, ``runs.events``,
``runs.follow``) answer an iterator, or an async iterator. Annotations name the synchronous answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from switchyard.client import calls, models
from switchyard.client.calls import Call, seg


class Resource:
    def __init__(self, client: Any):
        self._client = client

    def _send(self, call: Call) -> Any:
        return self._client._send(call)


class Workflows(Resource):
    def list(self, *, archived: bool = False) -> list[models.WorkflowSummary]:
        """The tenant's workflows (the archived ones instead, with ``archived=True``)."""
        return self._send(Call("GET", "/workflows", {"archived": True if archived else None},
                               model=models.WorkflowList, key="workflows"))

    def get(self, workflow_id: str) -> models.Workflow:
        """The latest definition and every version."""
        return self._send(Call("GET", f"/workflows/{seg(workflow_id)}", model=models.Workflow))

    def version(self, workflow_id: str, version: int) -> models.WorkflowVersion:
        return self._send(Call("GET", f"/workflows/{seg(workflow_id)}/versions/{seg(version)}",
                               model=models.WorkflowVersion))

    def publish(self, workflow_id: str, definition: dict[str, Any]) -> models.WorkflowVersion:
        """Publish a new version (admin); ValidationFailed names every problem of a refused definition."""
        return self._send(Call("PUT", f"/workflows/{seg(workflow_id)}", body=definition,
                               model=models.WorkflowVersion))

    def archive(self, workflow_id: str) -> None:
        """Archive the workflow (admin): starting it answers WorkflowArchived; publishing restores it."""
        return self._send(Call("DELETE", f"/workflows/{seg(workflow_id)}"))


class Runs(Resource):
    def start(self, workflow_id: str, input: Any = None, *, version: int | None = None,
              priority: int | None = None, idempotency_key: str | None = None) -> models.Run:
        """Start a run (operator); the same ``idempotency_key`` and body answer the first run again."""
        body: dict[str, Any] = {"workflow_id": workflow_id, "input": {} if input is None else input}
        body.update({k: v for k, v in (("version", version), ("priority", priority)) if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._send(Call("POST", "/runs", body=body, model=models.Run, headers=headers))

    def get(self, run_id: str) -> models.Run:
        return self._send(Call("GET", f"/runs/{seg(run_id)}", model=models.Run))

    def page(self, *, status: str | None = None, workflow_id: str | None = None, limit: int = 50,
             cursor: str | None = None, parent_run_id: str | None = None) -> models.RunPage:
        """One page of runs, newest first; pass its ``next_cursor`` back for the next."""
        return self._send(_runs_call(status, workflow_id, limit, cursor, parent_run_id))

    def list(self, *, status: str | None = None, workflow_id: str | None = None, page_size: int = 50,
             parent_run_id: str | None = None) -> Iterator[models.RunSummary]:
        """Every matching run (a parent's children with ``parent_run_id``), newest first, reading page
        after page as the iteration goes."""
        call = _runs_call(status, workflow_id, page_size, None, parent_run_id)
        return self._client._paginate(call, calls.runs_advance)

    def events(self, run_id: str, *, after: int = 0, page_size: int = 1000) -> Iterator[models.Event]:
        """The run's event log after ``after`` (every page), as it is now."""
        call = Call("GET", f"/runs/{seg(run_id)}/events", {"after": after, "limit": page_size},
                    model=models.EventPage)
        return self._client._paginate(call, calls.events_advance)

    def items(self, run_id: str, step_id: str, *, status: str | None = None,
              page_size: int = 50) -> Iterator[models.Item]:
        """A for-each step's items in index order (every page)."""
        call = Call("GET", f"/runs/{seg(run_id)}/steps/{seg(step_id)}/items",
                    {"status": status, "limit": page_size}, model=models.ItemPage)
        return self._client._paginate(call, calls.items_advance)

    def follow(self, run_id: str, *, after: int = 0) -> Iterator[models.Event]:
        """The run's events from the live stream, from ``after`` on; ends when the run has ended.
        A dropped connection is resumed where it stopped."""
        return self._client._follow(run_id, after)

    def wait(self, run_id: str, *, timeout: float | None = None, interval: float = 0.5,
             until: Iterable[str] = ()) -> models.Run:
        """The run once it has ended (succeeded, failed or cancelled) or reached a status of ``until``
        (e.g. ``("waiting",)``), read every ``interval`` seconds at most; WaitTimeout after ``timeout`` s."""
        return self._client._wait(run_id, timeout, interval, frozenset(until) | models.TERMINAL_RUN)

    def context(self, run_id: str) -> models.RunContext:
        return self._send(Call("GET", f"/runs/{seg(run_id)}/context", model=models.RunContext))

    def diagnosis(self, run_id: str) -> models.Diagnosis:
        """Why the run is not moving, and what would move it."""
        return self._send(Call("GET", f"/runs/{seg(run_id)}/diagnosis", model=models.Diagnosis))

    def pause(self, run_id: str, *, triggered_by: str | None = None) -> models.Run:
        return self._control(run_id, "pause", None, triggered_by)

    def resume(self, run_id: str, *, limits: dict[str, Any] | None = None,
               triggered_by: str | None = None) -> models.Run:
        return self._control(run_id, "resume", {"limits": limits} if limits else None, triggered_by)

    def cancel(self, run_id: str, *, reason: str | None = None, mode: str = "immediate",
               triggered_by: str | None = None) -> models.Run:
        """Cancel the run: ``immediate`` stops steps in flight, ``graceful`` lets them finish."""
        body = {"mode": mode, **({"reason": reason} if reason else {})}
        return self._control(run_id, "cancel", body, triggered_by)

    def retry(self, run_id: str, *, triggered_by: str | None = None) -> models.Run:
        return self._control(run_id, "retry", None, triggered_by)

    def rerun(self, run_id: str, *, triggered_by: str | None = None) -> models.Run:
        """A new run with the same workflow version and input (the answer is the new run)."""
        return self._control(run_id, "rerun", None, triggered_by)

    def fork(self, run_id: str, from_step: str, *, input: Any = None, input_patch: Any = None,
             steps: dict[str, dict[str, Any]] | None = None, version: int | None = None) -> models.Run:
        """A new run from ``from_step`` of an ended run: what that step does not depend on is reused."""
        body = {"from_step": from_step, "input": input, "input_patch": input_patch, "steps": steps,
                "version": version}
        return self._send(Call("POST", f"/runs/{seg(run_id)}/fork", model=models.Run,
                               body={k: v for k, v in body.items() if v is not None}))

    def compare(self, run_id: str, other_id: str) -> models.Comparison:
        """Two runs step by step: status, attempts, duration, usage, output diffs, the first divergence."""
        return self._send(Call("GET", f"/runs/{seg(run_id)}/compare/{seg(other_id)}", model=models.Comparison))

    def bulk(self, action: str, *, dry_run: bool = False, limit: int | None = None, status: Any = None,
             workflow_id: str | None = None, error_code: str | None = None, run_ids: list[str] | None = None,
             created_after: str | None = None, created_before: str | None = None,
             **fields: Any) -> models.BulkResult:
        """``action`` (cancel, pause, resume, retry, rerun, fork) on every run the filter selects, each
        through the run's state machine; ``fields`` are the action's own (reason, mode, from_step, …)."""
        where = {"status": status, "workflow_id": workflow_id, "error_code": error_code, "run_ids": run_ids,
                 "created_after": created_after, "created_before": created_before}
        body = {"filter": {k: v for k, v in where.items() if v is not None}, "dry_run": dry_run, "limit": limit,
                **fields}
        return self._send(Call("POST", f"/runs/bulk/{seg(action)}", model=models.BulkResult,
                               body={k: v for k, v in body.items() if v is not None}))

    def _control(self, run_id: str, action: str, body: Any, triggered_by: str | None) -> models.Run:
        return self._send(Call("POST", f"/runs/{seg(run_id)}/{action}", {"triggered_by": triggered_by},
                               body=body, model=models.Run))


def _runs_call(status: str | None, workflow_id: str | None, limit: int, cursor: str | None,
               parent_run_id: str | None) -> Call:
    params = {"status": status, "workflow_id": workflow_id, "limit": limit, "cursor": cursor,
              "parent_run_id": parent_run_id}
    return Call("GET", "/runs", params, model=models.RunPage)


class Approvals(Resource):
    def list(self, *, status: str = "pending", limit: int = 100) -> list[models.Approval]:
        """The tenant's approval requests (``status``: pending, the default, … or ``all``)."""
        return self._send(Call("GET", "/approvals", {"status": status, "limit": limit},
                               model=models.ApprovalList, key="approvals"))

    def approve(self, run_id: str, approval_id: str, comment: str | None = None) -> models.Run:
        return self._decide(run_id, approval_id, "approve", comment)

    def reject(self, run_id: str, approval_id: str, comment: str | None = None) -> models.Run:
        return self._decide(run_id, approval_id, "reject", comment)

    def request_changes(self, run_id: str, approval_id: str, comment: str | None = None) -> models.Run:
        """Run the approval's upstream step again with ``comment`` in its context, then ask again."""
        return self._decide(run_id, approval_id, "request_changes", comment)

    def _decide(self, run_id: str, approval_id: str, decision: str, comment: str | None) -> models.Run:
        return self._send(Call("POST", f"/runs/{seg(run_id)}/approvals/{seg(approval_id)}/{decision}",
                               body={"comment": comment} if comment is not None else {}, model=models.Run))


class Questions(Resource):
    def list(self, *, status: str | None = None, limit: int = 100) -> list[models.Question]:
        """The tenant's questions (the open ones by default; ``status="all"`` for every one)."""
        return self._send(Call("GET", "/questions", {"status": status, "limit": limit},
                               model=models.QuestionList, key="questions"))

    def answer(self, run_id: str, question_id: str, answer: Any) -> models.Run:
        return self._send(Call("POST", f"/runs/{seg(run_id)}/questions/{seg(question_id)}/answer",
                               body={"answer": answer}, model=models.Run))


class Events(Resource):
    def send(self, name: str | None, payload: Any = None, *, correlation_key: str | None = None,
             event_id: str | None = None) -> models.EventAccepted:
        """Deliver an event (to ``wait_event`` steps on ``correlation_key``, and to event triggers)."""
        body = {"name": name, "payload": payload, "correlation_key": correlation_key, "id": event_id}
        return self._send(Call("POST", "/events", body={k: v for k, v in body.items() if v is not None},
                               model=models.EventAccepted))


class Schedules(Resource):
    def list(self, workflow_id: str | None = None) -> list[models.Schedule]:
        """The tenant's schedules, or one workflow's."""
        path = f"/workflows/{seg(workflow_id)}/schedules" if workflow_id else "/schedules"
        return self._send(Call("GET", path, model=models.ScheduleList, key="schedules"))

    def set(self, workflow_id: str, schedule_id: str, cron: str, **fields: Any) -> models.Schedule:
        """Create or replace a schedule (admin): ``timezone``, ``input``, ``overlap``, ``catchup``, ``enabled``."""
        body = {"cron": cron, **{k: v for k, v in fields.items() if v is not None}}
        return self._send(Call("PUT", f"/workflows/{seg(workflow_id)}/schedules/{seg(schedule_id)}", body=body,
                               model=models.Schedule))

    def delete(self, workflow_id: str, schedule_id: str) -> None:
        return self._send(Call("DELETE", f"/workflows/{seg(workflow_id)}/schedules/{seg(schedule_id)}"))
