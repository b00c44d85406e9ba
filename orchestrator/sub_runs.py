"""Sub-runs at the edge: what a scheduler's pass over a run asks of its child runs, done in the pass's
transaction (the parent's lock held).

- The child runs its transition asked for (core.children.ChildStart), and those of the for-each items
  of maps over child runs the writer started (``Written.started``), are created through the one start
  path (service.start_run, with the child's first pass when it is plain: its first steps' messages go
  out with the pass's), each input rendered from its step's templates (``item`` and ``index`` for an
  item), and each named on its step's row. A child that cannot start (its workflow unknown or
  archived, its input refused, its templates failing) fails its step or item at once, as an attempt's
  outcome would (core.outcome): an item's failure may start the next items, whose children follow.
- The live children of the steps it stopped (``Transition.stop_children``: a cancel, fail-fast, a
  k-of-n step that can no longer succeed) are cancelled, each through the same decision as an
  operator's cancel (core.controls), and theirs in turn. A child another transaction holds is skipped
  (the pass never waits for a child: a child's end waits for its parent's lock); its stopped step (or
  item) is made due and the parent flagged, so the parent's next pass (the next ring's, or the
  sweep's) asks again, live parent or ended, until the child is reached (core.children.stop_held).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import service, states, templates, writer
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core import controls, items
from orchestrator.core import outcome as decide
from orchestrator.core.children import ChildStart
from orchestrator.core.inputs import Actor, AttemptReport, Control, Env
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.core.snapshot import RunState
from orchestrator.core.transition import Transition
from orchestrator.core.vocabulary import ErrorCode
from orchestrator.db import repository as repo
from orchestrator.db.repository import children as child_rows
from orchestrator.db.repository import items as item_rows
from orchestrator.definitions import Definition
from orchestrator.errors import StepError, SwitchyardError
from orchestrator.messages import StepMessage
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class FollowUp:
    """What following a pass's transition up did: messages to publish and tasks to revoke after the
    commit; ``ring``: runs were left with work (children created, a child left to stop)."""

    messages: list[StepMessage] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    ring: bool = False

    def add(self, written: writer.Written) -> None:
        self.messages += written.messages
        self.revoke += written.revoke
        self.ring |= written.wakes_scheduler


def follow_up(session: Session, settings: Settings, catalog: DefinitionCatalog, transition: Transition,
              written: writer.Written, *, definition: Definition, env: Env) -> FollowUp:
    """Create the child runs the applied ``transition`` (``written``) asked for, and cancel the live
    children of the steps it stopped."""
    done = FollowUp()
    parent = transition.run
    starts = [*transition.children, *_item_starts(definition, written.started.get(parent.id, ()))]
    if starts:
        _start(session, settings, parent, starts, done, definition=definition, env=env)
    if transition.stop_children:
        _stop(session, catalog, parent.id, transition.stop_children, done)
    return done


def _item_starts(definition: Definition, started: Sequence[tuple[str, int]]) -> list[ChildStart]:
    """The child runs of the for-each items the writer started."""
    found = []
    for item_id, attempt in started:
        step_def = definition.step(item_id)
        found.append(ChildStart(item_id, attempt, step_def.workflow_id, step_def.version))
    return found


def _start(session: Session, settings: Settings, parent: RunState, starts: list[ChildStart], done: FollowUp, *,
           definition: Definition, env: Env) -> None:
    """Create the children of ``starts`` (more may follow: a failed item's outcome starts the next ones)."""
    inputs = _Inputs(session, parent, definition)
    inputs.read_values(starts)
    links: dict[str, str] = {}
    while starts:
        child, starts = starts[0], starts[1:]
        link = service.ParentLink(parent.id, child.step_id, parent.depth + 1)
        try:
            child_input = inputs.render(child)
            with session.begin_nested():
                started = service.start_run(session, settings, parent.tenant_id, child.workflow_id, child_input,
                                            version=child.version, trigger_type="workflow", triggered_by=parent.id,
                                            parent=link, first_pass=True)
        except SwitchyardError as exc:
            log.info("run %s: the child run of step %s could not start: %s", parent.id, child.step_id, exc)
            written = _fail_step(session, parent, definition, child, _refusal(child, exc), env=env)
            done.add(written)
            more = _item_starts(definition, written.started.get(parent.id, ()))
            inputs.read_values(more)
            starts += more
            continue
        links[child.step_id] = started.run.id
        done.messages += started.messages
        done.ring = True  # the child's first pass, unless it was taken with its start
    child_rows.link_children(session, parent.id, links)


class _Inputs:
    """Renders children's inputs: the step's ``input`` over the parent's template context (its
    steps' outputs and latest approval read once, if a template names them), with ``item`` and
    ``index`` for a for-each item."""

    def __init__(self, session: Session, parent: RunState, definition: Definition):
        self.session, self.parent, self.definition = session, parent, definition
        self.context: dict[str, Any] | None = None
        self.values: dict[str, Any] = {}

    def render(self, child: ChildStart) -> Any:
        step_id = items.parent_of(child.step_id) or child.step_id
        context = dict(self._context(step_id), attempt=child.attempt)
        index = items.index_of(child.step_id)
        if index is not None:
            context.update(item=self.values.get(child.step_id), index=index)
        return templates.render(self.definition.step(step_id).input, context)

    def read_values(self, starts: Sequence[ChildStart]) -> None:
        """Read the values of the for-each items among ``starts``, in one statement."""
        wanted = [c.step_id for c in starts if items.parent_of(c.step_id) is not None]
        self.values.update(item_rows.item_values(self.session, self.parent.id, wanted))

    def _context(self, step_id: str) -> dict[str, Any]:
        if self.context is None:
            names, run = self.definition.template_names(step_id), self.parent
            self.context = templates.run_context(
                run.input, repo.succeeded_outputs(self.session, run.id) if "steps" in names else {},
                {"id": run.id, "attempt": run.attempt, "workflow_id": run.workflow_id},
                repo.latest_approval_decision(self.session, run.id) if "approval" in names else None)
        return self.context


def _refusal(child: ChildStart, exc: SwitchyardError) -> ErrorInfo:
    """Why the child could not start, as its step's error: a template's own error, or child_run_failed."""
    if isinstance(exc, StepError):
        return ErrorInfo.of(exc)
    return ErrorInfo(ErrorCode.CHILD_RUN_FAILED.value, f"the child run of workflow {child.workflow_id!r} could "
                     f"not start: {exc}", False)


def _fail_step(session: Session, parent: RunState, definition: Definition, child: ChildStart, error: ErrorInfo, *,
               env: Env) -> writer.Written:
    """The step (or item) whose child could not start fails, as an attempt's outcome (not retried:
    starting again would fail the same way)."""
    run = repo.lock_run(session, parent.id)
    steps = repo.steps_for_update(session, [parent.id])[parent.id]
    if items.parent_of(child.step_id) is not None:  # an item: not among the steps read for a pass
        steps += repo.steps_of(session, parent.id, [child.step_id])
    state = RunState.from_row(run, steps)
    report = AttemptReport(parent.id, child.step_id, child.attempt, Outcome(error=error))
    return writer.apply(session, decide.on_report(state, definition, report, env))


def _stop(session: Session, catalog: DefinitionCatalog, parent_id: str, step_ids: Sequence[str],
          done: FollowUp) -> None:
    """Cancel the live children of the parent's steps or items ``step_ids`` (a step's: its items' too),
    and theirs; those another transaction holds are left to the parent's next pass (stop_later)."""
    found, held = child_rows.lock_live_children(session, parent_id, step_ids)
    actor = Actor("scheduler", f"run:{parent_id}")
    for row in found:
        definition = catalog.get(session, (row.tenant_id, row.workflow_id, row.workflow_version))
        state = RunState.from_row(row, repo.steps_for_update(session, [row.id])[row.id])
        try:
            states.apply_control("cancel", state.status)
        except states.InvalidTransition:
            continue
        cancel = Control("cancel", actor, {"mode": "immediate",
                                           "reason": f"step {row.parent_step_id!r} of its parent run was stopped"})
        transition = controls.on_control(state, definition, cancel)
        done.add(writer.apply(session, transition))
        if transition.stop_children:
            _stop(session, catalog, row.id, transition.stop_children, done)
    if held:
        # No ring: a pass now would most likely find the child still held; the next ring's or the sweep's will not.
        child_rows.stop_later(session, parent_id, held)
