"""Sub-runs at the edge: the child runs a scheduler's transition asked for (core.children.ChildStart)
are created in the same transaction, through the one start path (service.start_run); a child that
cannot start (its workflow unknown or archived, its input refused) fails its step at once."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from orchestrator import service, writer
from orchestrator.core import outcome as decide
from orchestrator.core.children import ChildStart
from orchestrator.core.inputs import AttemptReport, Env
from orchestrator.core.reports import ErrorInfo, Outcome
from orchestrator.core.snapshot import RunState
from orchestrator.core.transition import Transition
from orchestrator.core.vocabulary import ErrorCode
from orchestrator.db import repository as repo
from orchestrator.definitions import Definition
from orchestrator.errors import SwitchyardError
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


def start_children(session: Session, settings: Settings, transition: Transition, definition: Definition,
                   env: Env) -> writer.Written | None:
    """Create the child runs ``transition`` (applied) asked for; what failing the steps of those that
    could not start wrote, if any did not."""
    parent = transition.run
    written = None
    for child in transition.children:
        link = service.ParentLink(parent.id, child.step_id, parent.depth + 1)
        try:
            with session.begin_nested():
                service.start_run(session, settings, parent.tenant_id, child.workflow_id, child.input,
                                  version=child.version, trigger_type="workflow", triggered_by=parent.id,
                                  parent=link)
        except SwitchyardError as exc:
            log.info("run %s: the child run of step %s could not start: %s", parent.id, child.step_id, exc)
            written = _fail_step(session, parent, definition, child, str(exc), env=env)
    return written


def _fail_step(session: Session, parent: RunState, definition: Definition, child: ChildStart, reason: str, *,
               env: Env) -> writer.Written:
    """The step whose child could not start fails (not retried: starting again would fail the same way)."""
    run = repo.lock_run(session, parent.id)
    state = RunState.from_row(run, repo.steps_for_update(session, [parent.id])[parent.id])
    error = ErrorInfo(ErrorCode.CHILD_RUN_FAILED.value, f"the child run of workflow {child.workflow_id!r} could "
                      f"not start: {reason}", False)
    report = AttemptReport(parent.id, child.step_id, child.attempt, Outcome(error=error))
    return writer.apply(session, decide.on_report(state, definition, report, env))
