"""The scheduler's pass over one run, decided: start it, reclaim attempts whose worker was lost, fire
what came due, dispatch the steps that are ready, park the ones that wait in the database, and settle
the run's status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import dag, steptypes, templates
from orchestrator.core import children, concurrency, items, stopping
from orchestrator.core import outcome as outcomes
from orchestrator.core.inputs import Env
from orchestrator.core.reports import WORKER_LOST, ErrorInfo, Outcome
from orchestrator.core.snapshot import RunState, StepState
from orchestrator.core.transition import NOW, Draft, DueIn, Request, Transition
from orchestrator.core.vocabulary import EventType, SkipReason, WaitsOn
from orchestrator.definitions import Definition
from orchestrator.errors import StepError
from orchestrator.states import TERMINAL_RUN, RunStatus, StepStatus


@dataclass(frozen=True)
class KeptEvent:
    """An inbound event kept for steps that start waiting on its key later."""

    id: str
    name: str | None
    payload: Any


class NeedsFacts(Exception):  # noqa: N818 - a request for more input, not an error
    """The decision needs facts the snapshot does not hold: the template context (outputs of the
    succeeded steps and the latest approval) and the kept events of ``event_keys`` ((key, name) pairs).
    Read them into the snapshot and decide again (a decision writes nothing, so deciding twice is free)."""

    def __init__(self, *, context: bool = False, event_keys: tuple[tuple[str, str | None], ...] = (),
                 children: tuple[str, ...] = (), succeeded_items: tuple[str, ...] = (),
                 concurrency: tuple[concurrency.Ask, ...] = ()):
        super().__init__("the decision needs more facts")
        self.context, self.event_keys = context, event_keys
        # The child runs of these due sub-run steps and items; the succeeded items of these for-each steps.
        self.children, self.succeeded_items = children, succeeded_items
        # The concurrency keys whose room the decision needs (read under the scheduler's concurrency lock).
        self.concurrency = concurrency


def on_advance(state: RunState, definition: Definition, env: Env, *,
               kept: Mapping[tuple[str, str | None], KeptEvent | None] | None = None) -> Transition:
    """The scheduler's pass over ``state`` (a complete, locked snapshot); raises NeedsFacts if parking
    a step needs the template context (``state.outputs``, ``state.approval``; ``state.outputs`` None
    means not read) or the events ``kept`` for the correlation keys it renders (by (key, event name),
    None where none is kept; a key absent: not read)."""
    draft = Draft(state)
    draft.run_values["has_work"] = False
    children.stop_held(draft)
    if state.status in TERMINAL_RUN:
        # An attempt a graceful cancel let run on, whose worker was lost: it is stopped as the cancel
        # would have stopped it, rather than reading `running` for ever.
        lost = [s.step_id for s in state.steps.values() if s.status is StepStatus.RUNNING and s.lease_expired]
        stopping.stop_steps(draft, cancel=lost, skip=(), message=f"the run is {state.status}; its worker was lost",
                            skip_reason=SkipReason.RUN_CANCELLED)
        draft.close_requests = False
        # Children still live when their parent ended elsewhere (a worker's failure failed it): stopped.
        children.stop(draft, [s.id for s in definition.steps if s.type == children.SUB_RUN])
        return draft.finish()
    if state.status is RunStatus.QUEUED:
        if definition.concurrency_keys and _held_by_keys(draft, definition):
            return draft.finish()
        draft.move_run(RunStatus.RUNNING)
        draft.run_values["started_at"] = NOW
        draft.event(EventType.RUN_STARTED)
    for step in state.steps.values():
        if step.status is StepStatus.RUNNING and step.lease_expired and draft.step(step.step_id) == step:
            outcomes.settle_any(draft, definition, step, WORKER_LOST, env)
            if draft.status is RunStatus.FAILED:
                return draft.finish()
    if draft.status is RunStatus.PAUSED:
        return draft.finish()
    _settle_children(draft, definition, env)
    if draft.status is RunStatus.FAILED:
        return draft.finish()
    _fire_due(draft, definition, env)
    if draft.status is not RunStatus.FAILED:
        _dispatch_and_park(draft, definition, env, kept)
        items.top_up(draft, definition)
    if draft.status not in TERMINAL_RUN:
        _settle_status(draft, definition)
    return draft.finish()


def _fire_due(draft: Draft, definition: Definition, env: Env) -> None:
    """Retries whose backoff has passed are queued again; timers fire; event waits time out."""
    due = [s for s in draft.steps.values() if s.due]
    for step in due:
        if step.status is StepStatus.RETRYING and step.type == children.SUB_RUN:
            _start_held(draft, definition, step, env)  # a new child run
        elif step.status is StepStatus.RETRYING:
            _queue(draft, definition, step, only_from=(StepStatus.RETRYING,))
        elif step.status is StepStatus.WAITING and step.waiting_on == WaitsOn.RATE_LIMIT:
            outcomes.requeue_rate_limited(draft, definition, step, queue=_queue)
    for step in due:
        if draft.status is RunStatus.FAILED:
            return
        step = draft.step(step.step_id)  # as decided so far: fail-fast may have stopped it
        if step.status is StepStatus.WAITING and step.due:
            fired = steptypes.get(step.type).on_due(definition.step(step.step_id))
            if fired is not None:
                outcomes.settle(draft, definition, step, fired, env)


def _dispatch_and_park(draft: Draft, definition: Definition, env: Env,
                       kept: Mapping[tuple[str, str | None], KeptEvent | None] | None) -> None:
    """Queue the ready worker steps and park the ready waiting ones, again while a parked step
    completed at once (an event kept from before it waited)."""
    while True:
        ready = _ready_or_skipped(draft, definition)
        settled_at_once = False
        for step_id in ready:
            if definition.step(step_id).for_each is not None or draft.step(step_id).type == children.SUB_RUN:
                settled_at_once |= _start_held(draft, definition, draft.step(step_id), env)
            elif steptypes.get(draft.step(step_id).type).waits_on is None:
                _queue(draft, definition, draft.step(step_id))
            if draft.status is RunStatus.FAILED:
                return
        park = [s for s in ready if steptypes.get(draft.step(s).type).waits_on is not None
                and draft.step(s).type != children.SUB_RUN]
        _check_facts(draft, definition, park, kept)
        for step_id in park:
            settled_at_once |= _park(draft, definition, draft.step(step_id), env, kept or {})
            if draft.status is RunStatus.FAILED:
                return
        if not settled_at_once:
            return


def _held_by_keys(draft: Draft, definition: Definition) -> bool:
    """A queued run of a workflow with concurrency keys: True if it does not start now (held, waiting
    on a key, or failed: a key did not render)."""
    try:
        keys = concurrency.run_keys(definition, draft.run.input)
    except StepError as exc:
        concurrency.fail_unrendered(draft, ErrorInfo.of(exc).as_json())
        return True
    asks = concurrency.missing(draft.run, concurrency.run_asks(definition, keys))
    if asks:
        raise NeedsFacts(concurrency=asks)
    return not concurrency.admit_run(draft, definition, keys)


def _queue(draft: Draft, definition: Definition, step: StepState,
           only_from: tuple[StepStatus, ...] = (StepStatus.PENDING,)) -> bool:
    """Queue a worker step's next attempt; under its concurrency key if it has one (core.concurrency)."""
    step_def = definition.step(step.step_id)
    if step_def.concurrency is None:
        return outcomes.queue_step(draft, definition, step, only_from=only_from)
    if draft.run.outputs is None and concurrency.reads_outputs(step_def):
        raise NeedsFacts(context=True)
    try:
        key = concurrency.step_key(draft.run.tenant_id, step_def, _context(draft))
    except StepError as exc:
        stopping.fail_run(draft, step.step_id, ErrorInfo.of(exc).as_json())
        return False
    asks = concurrency.missing(draft.run, [concurrency.Ask(concurrency.STEP, key, step_def.concurrency.limit)])
    if asks:
        raise NeedsFacts(concurrency=asks)
    return concurrency.queue_or_hold(draft, definition, step, key, only_from)


def _settle_children(draft: Draft, definition: Definition, env: Env) -> None:
    """Sub-run steps and items whose child run ended (its end made them due) take its result
    (core.children); a for-each item's is counted on its step, which may dispatch the next items."""
    woken = children.woken(draft)
    if not woken:
        return
    if draft.run.children is None:
        raise NeedsFacts(children=tuple(s.step_id for s in woken))
    for step in woken:
        ended = children.ended(draft.run.children.get(step.step_id))
        if ended is None:  # (not the child it runs now: nothing ended for it)
            draft.update(step, due_at=None)
            continue
        outcomes.settle_any(draft, definition, step, ended, env)
        if draft.status is RunStatus.FAILED:
            return


def _start_held(draft: Draft, definition: Definition, step: StepState, env: Env) -> bool:
    """Start a ready step that holds no worker: a for-each step over the list its ``for_each``
    evaluates to (core.items), or a sub-run step (or item) whose child run is asked for
    (core.children). True if that settled it at once (no items, a list it cannot run, too deep)."""
    step_def = definition.step(step.step_id)
    if step_def.for_each is None or items.parent_of(step.step_id) is not None:
        settles = children.start(draft, definition, step, env)
    elif draft.run.outputs is None:
        raise NeedsFacts(context=True)
    elif items.may_keep(step) and step.step_id not in (draft.run.succeeded_items or {}):
        raise NeedsFacts(succeeded_items=(step.step_id,))
    else:
        try:
            values = templates.evaluate(step_def.for_each, _context(draft))
        except StepError as exc:
            values = exc
        settles = items.expand(draft, definition, step, values, env,
                               succeeded=(draft.run.succeeded_items or {}).get(step.step_id))
    if settles is None:
        return False
    outcomes.settle(draft, definition, draft.step(step.step_id), settles, env)
    return True


def _ready_or_skipped(draft: Draft, definition: Definition) -> list[str]:
    """The pending steps that may run now, by their join rule and their `when`; those that never
    will are skipped (with the reason), again while a skip settles another step's needs."""
    while True:
        statuses, ready, skipped_any = draft.statuses(), [], False
        for step_id, status in statuses.items():
            if status is not StepStatus.PENDING or items.parent_of(step_id) is not None:  # (a for-each item)
                continue
            step_def = definition.step(step_id)
            verdict = dag.join_verdict(step_def.join, [statuses[n] for n in definition.needs[step_id]])
            if verdict == dag.READY and step_def.when is not None:
                verdict = _condition(draft, step_def)
            if verdict == dag.READY:
                ready.append(step_id)
            elif verdict is not None:
                _skip(draft, step_id, SkipReason(verdict))
                skipped_any = True
        if not skipped_any:
            return ready


def _condition(draft: Draft, step_def) -> str:
    """READY if the step's `when` holds; the skip reason `condition` if it does not, or cannot be
    evaluated (the event says why)."""
    if draft.run.outputs is None:
        raise NeedsFacts(context=True)
    try:
        return dag.READY if templates.evaluate(step_def.when, _context(draft)) else SkipReason.CONDITION.value
    except StepError as exc:
        draft.event(EventType.STEP_CONDITION_FAILED, step_def.id, None, error=ErrorInfo.of(exc).as_json())
        return SkipReason.CONDITION.value


def _skip(draft: Draft, step_id: str, reason: SkipReason) -> None:
    if draft.move(draft.step(step_id), StepStatus.SKIPPED, only_from=[StepStatus.PENDING], skipped_reason=reason.value,
                  completed_at=NOW):
        draft.event(EventType.STEP_COMPLETED, step_id, None, skipped=True, reason=reason.value)


def _context(draft: Draft) -> dict[str, Any]:
    """What templates and conditions see: the snapshot's outputs, with those the draft decided."""
    run = draft.run
    return templates.run_context(run.input, {**(run.outputs or {}), **draft.outputs()},
                                 {"id": run.id, "attempt": run.attempt, "workflow_id": run.workflow_id},
                                 dict(run.approval) if run.approval else None)


def _check_facts(draft: Draft, definition: Definition, park: list[str],
                 kept: Mapping[tuple[str, str | None], KeptEvent | None] | None) -> None:
    """Raise NeedsFacts if parking ``park`` needs what the snapshot does not hold."""
    types = [steptypes.get(draft.step(s).type) for s in park]
    if draft.run.outputs is None and any(t.renders_on_park for t in types):
        raise NeedsFacts(context=True)
    keys = []
    for step_id, step_type in zip(park, types, strict=True):
        step_def = definition.step(step_id)
        parking = step_type.park(step_def, _context(draft) if step_type.renders_on_park else None)
        if parking.correlation_key is not None:
            keys.append((parking.correlation_key, getattr(step_def, "event_name", None)))
    missing = tuple(k for k in keys if kept is None or k not in kept)
    if missing:
        raise NeedsFacts(event_keys=missing)


def _park(draft: Draft, definition: Definition, step: StepState, env: Env,
          kept: Mapping[tuple[str, str | None], KeptEvent | None]) -> bool:
    """Approval, question, event and timer steps wait in the database, holding no worker. True if the
    step was settled at once (its key's event was kept, or its templates failed)."""
    step_def, step_type = definition.step(step.step_id), steptypes.get(step.type)
    parking = step_type.park(step_def, _context(draft) if step_type.renders_on_park else None)
    if not draft.move(step, StepStatus.WAITING, only_from=[StepStatus.PENDING], attempt=1, queued_at=NOW,
                      started_at=NOW, due_at=DueIn(parking.due_in_s) if parking.due_in_s is not None else None,
                      correlation_key=parking.correlation_key):
        return False
    extra: dict[str, Any] = {}
    if parking.waits_on in (WaitsOn.APPROVAL, WaitsOn.QUESTION):
        prefix = "apr" if parking.waits_on == WaitsOn.APPROVAL else "q"
        request = Request(parking.waits_on, env.new_id(prefix), step.step_id,
                          parking.request[:2000] if parking.request else parking.request)
        draft.requests.append(request)
        extra[f"{parking.waits_on}_id"] = request.id
    elif parking.correlation_key is not None:
        extra["correlation_key"] = parking.correlation_key
    draft.event(EventType.STEP_WAITING, step.step_id, 1, waiting_on=parking.waits_on, **extra)
    waiting = draft.step(step.step_id)
    if parking.error is not None:
        outcomes.settle(draft, definition, waiting, Outcome(error=parking.error), env)
        return True
    event = kept.get((parking.correlation_key, getattr(step_def, "event_name", None))) \
        if parking.correlation_key is not None else None
    if event is None:
        return False
    delivered = Outcome(output={"event_id": event.id, "name": event.name, "payload": event.payload})
    outcomes.settle(draft, definition, waiting, delivered, env)
    return True


def _settle_status(draft: Draft, definition: Definition) -> None:
    """The run's status from its steps' (dag.advance): succeeded when every step did, waiting when all
    that is left waits on the outside world, running otherwise."""
    steps = [s for s in draft.steps.values() if s.step_id in definition.needs]  # not for-each items
    decision = dag.advance(definition.needs, {s.step_id: s.status for s in steps}, {s.step_id: s.type for s in steps},
                           {s.step_id: s.waiting_on for s in steps if s.waiting_on})
    if decision.run_status is RunStatus.SUCCEEDED:
        # The sinks' outputs (None for a sink that was skipped or failed), if the snapshot holds them.
        outputs = None if draft.run.outputs is None else {**draft.run.outputs, **draft.outputs()}
        succeeded = [s for s in definition.sinks if draft.step(s).status is StepStatus.SUCCEEDED]
        if outputs is not None and all(s in outputs for s in succeeded):
            stopping.succeed_run(draft, {s: outputs.get(s) for s in definition.sinks})
        else:
            stopping.succeed_run(draft, output_from=tuple(definition.sinks))
        return
    from_status, target = draft.status, decision.run_status
    if target is from_status and (target is not RunStatus.WAITING or decision.waiting_on == draft.run.waiting_on):
        return
    draft.move_run(target)
    draft.run_values["waiting_on"] = decision.waiting_on
    if target is RunStatus.WAITING:
        draft.event(EventType.RUN_WAITING, waiting_on=decision.waiting_on)
    else:
        draft.event(EventType.RUN_RESUMED if from_status is RunStatus.WAITING else EventType.RUN_RUNNING)
