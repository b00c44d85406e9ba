"""The one writer: applies a Transition, guarded, in the caller's transaction, and answers whether it
was applied. It alone chooses how to write it:

- a snapshot that was not read under the run's lock (what a claim left) is written only in one
  statement that also checks the run's ``last_seq`` is unchanged since: the step's move, the run's
  update and its events (PostgreSQL; a success as claimed, in autocommit, with no BEGIN or COMMIT);
- a report whose only required move is its own step's (succeeded, retrying, cancelled) folds that move
  into the run's statement, after queueing the steps its success made ready with their outbox rows in
  one statement that checks the step is still at its attempt (a worker's outcome sends the two together,
  in one round trip: ``apply(together=True)``, with the claim of the next step if its worker runs it
  itself: ``ClaimNext``);
- anything else is written move by move (moves of one shape in one statement), then its approvals and
  questions, then the run's update with its events;
- the scheduler's batch (``apply_batch``) writes the moves and run updates of many runs together, a
  statement per shape of change, and checks that every guard matched. Steps it queues on a queue the
  scheduler saw a backlog in are written held for their window (``Holding``), as a publisher's check
  would hold them: two updates per step fewer than queueing them and holding them after.

Writes to a for-each step's items (``Transition.items``) and a for-each step's output (its items'
outputs, read when it is written) take the move-by-move path. The items of a map over child runs it
starts are answered (``Written.started``): their child runs are the scheduler's to create
(orchestrator/sub_runs.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.core import children, items
from orchestrator.core.transition import ITEM_OUTPUTS, DueIn, Event, Marker, StepMove, Transition
from orchestrator.core.vocabulary import ErrorCode, EventType
from orchestrator.db import repository as repo
from orchestrator.db.repository import children as child_rows
from orchestrator.db.repository import items as item_rows
from orchestrator.db.session import sent_together
from orchestrator.db.types import db_now
from orchestrator.messages import StepMessage, task_id
from orchestrator.states import StepStatus


@dataclass(frozen=True)
class Written:
    """What applying a transition did: ``applied`` False if it was stale and wrote nothing; the
    messages of the steps it queued (with their outbox rows) and the tasks to revoke, for after the
    commit; ``wakes_scheduler`` if the run is left flagged with work; ``started``: the for-each items
    of maps over child runs it started, (item id, attempt) by run id, whose children are to create."""

    applied: bool
    messages: list[StepMessage] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    wakes_scheduler: bool = False
    started: Mapping[str, list[tuple[str, int]]] = field(default_factory=dict)
    held: int = 0  # steps queued held for their windows' room (apply_batch's Holding): no message to publish
    # The one step queued that the same transaction claimed for the writing worker (ClaimNext): its
    # message (no outbox row) is in ``messages``, not to publish.
    claimed: repo.Claimed | None = None


@dataclass(frozen=True)
class ClaimNext:
    """A worker that runs the one next step its outcome queues on its own queue (an eager step): the
    step is claimed in the outcome's transaction (``apply(together=True)``), in the same round trip as
    its queueing and the run's statement, with no outbox row, if ``accepts`` its message."""

    worker: str
    lease_s: float
    queue: str
    accepts: Callable[[StepMessage], bool]


@dataclass(frozen=True)
class Holding:
    """Queues whose windows have held messages waiting, as the scheduler last saw them: a step the
    batch queues on one of them is written held (``steps.held``, and its outbox row with its run's
    tenant and priority), as a publisher's check (admission.checked) would hold it behind the messages
    already waiting. Holding is always safe (it only gives places back); a queue whose backlog has
    drained since costs its steps one admission, which the scheduler makes next."""

    queues: frozenset[str]
    priorities: Mapping[str, int]  # the runs' priorities, by run id


STALE = Written(False)

# Moves after which a report writes nothing of its own before the run's statement (a failed step may
# fail its run, a waiting one opens a question or an approval): they can share that statement.
_FOLDABLE = frozenset({StepStatus.SUCCEEDED, StepStatus.RETRYING, StepStatus.CANCELLED})
_MARKERS = {Marker.NOW: repo.NOW, Marker.NEXT_ATTEMPT: repo.NEXT_ATTEMPT}


class NotAsDecided(Exception):
    """Steps queued together with the run's statement (``apply(together=True)``) got other attempts
    than decided, which the run's events name: the caller undoes its transaction and writes the
    transition again without ``together``. It would take step rows read with the run's lock that were
    stale (the lock's read may predate it), which no step's writer leaves as its own outcome does.
    Raised too if the step claimed with them (``ClaimNext``) was not: written again, it is published."""


def apply(session: Session, transition: Transition | None, *, together: bool = False,
          claim_next: ClaimNext | None = None) -> Written:
    """Write ``transition`` (None: a stale input, nothing to write). Returns STALE, having written
    nothing, if its first move's guard matched nothing or, for a snapshot not read under the run's
    lock, if the run changed since or the transition is more than one statement. Raises
    repo.StaleRunState if a later guard matched nothing (under the run's lock it cannot: the caller's
    transaction is undone whole).

    ``together``: a reported step's success that queues steps sends the queueing and the run's
    statement in one round trip (PostgreSQL), its events naming the attempts decided; raises
    NotAsDecided if the database queued others. With ``claim_next``, the one step it queues on that
    queue is claimed in the same round trip (``Written.claimed``)."""
    if transition is None:
        return STALE
    if not transition.run.locked:
        return _apply_as_seen(session, transition)
    required = [m for m in transition.moves if not m.optional]
    if _writes_items(transition):
        transition = _with_item_outputs(session, transition)
        return _apply_direct(session, transition, [m for m in transition.moves if not m.optional])
    if _foldable(transition, required):
        return _apply_folded(session, transition, required[0], together, claim_next)
    return _apply_direct(session, transition, required)


def one_statement(transition: Transition) -> bool:
    """Whether the transition can be written in one statement: one required move of a reported step,
    and nothing else but the run's update and its events."""
    moves = transition.moves
    return (len(moves) == 1 and not moves[0].optional and moves[0].attempt is not None
            and not transition.requests and not transition.close_requests and not transition.output_from
            and not _writes_items(transition))


def _writes_items(transition: Transition) -> bool:
    """Whether the transition writes for-each items or a for-each step's output, or wakes a parent run
    or asks for child runs (core.children): written move by move."""
    return (bool(transition.items) or bool(transition.children) or transition.wake_run is not None
            or any(m.values.get("output") is ITEM_OUTPUTS for m in transition.moves))


def _with_item_outputs(session: Session, transition: Transition) -> Transition:
    """A for-each step that succeeded (output ITEM_OUTPUTS): its items' outputs, read now, in its move
    and its event."""
    done = {m.step_id for m in transition.moves if m.values.get("output") is ITEM_OUTPUTS}
    if not done:
        return transition
    totals = {step_id: items.ItemCounts.of(transition.after.steps[step_id].item_counts).total for step_id in done}
    outputs = {step_id: item_rows.item_outputs(session, transition.run.id, step_id, totals[step_id])
               for step_id in done}
    for move in transition.moves:  # the item whose success this is: written with this transition, after the read
        if move.target is StepStatus.SUCCEEDED and items.parent_of(move.step_id) in done:
            outputs[items.parent_of(move.step_id)][items.index_of(move.step_id)] = move.values.get("output")
    moves = tuple(
        dataclasses.replace(m, values=MappingProxyType({**m.values, "output": outputs[m.step_id]}))
        if m.values.get("output") is ITEM_OUTPUTS else m for m in transition.moves)
    events = tuple(
        dataclasses.replace(e, data={**e.data, "output": outputs[e.step_id]})
        if e.step_id in done and e.data.get("output") is ITEM_OUTPUTS else e for e in transition.events)
    return dataclasses.replace(transition, moves=moves, events=events)


def _write_items(session: Session, transition: Transition) -> tuple[list[StepMessage], list[str], list[Event],
                                                                   list[tuple[str, int]]]:
    """The for-each item writes, after the moves: the messages of the items queued (with their outbox
    rows), the tasks of the items stopped, their events, and the items of maps over child runs started."""
    run_id = transition.run.id
    messages: list[StepMessage] = []
    revoke: list[str] = []
    events: list[Event] = []
    started: list[tuple[str, int]] = []
    for write in transition.items:
        if write.kind == "expand":
            item_rows.write_items(session, run_id, write.step_id, write.values, write.keep)
        if write.kind in ("expand", "queue") and write.queue_first and write.child_workflow is not None:
            begun = item_rows.start_items(session, run_id, write.step_id, write.queue_first)
            started += begun
            events += [Event(EventType.STEP_STARTED, item_id, attempt, {"workflow_id": write.child_workflow})
                       for item_id, attempt in begun]
        elif write.kind in ("expand", "queue") and write.queue_first:
            queued = item_rows.queue_items(session, run_id, write.step_id, write.queue_first, write.soft_time_limit)
            messages += queued
            events += [Event(EventType.STEP_QUEUED, m.step_id, m.attempt) for m in queued]
        if write.kind == "stop":
            for item_id, attempt, type_ in item_rows.stop_items(session, run_id, write.step_id,
                                                                dict(write.error or {})):
                if type_ != children.SUB_RUN:  # an item running a child run has no task (its child is stopped)
                    revoke.append(task_id(run_id, item_id, attempt))
                events.append(Event(EventType.STEP_CANCELLED, item_id, attempt,
                                    {"reason": ErrorCode.RUN_STOPPED.value}))
    return messages, revoke, events, started


def _apply_as_seen(session: Session, transition: Transition) -> Written:
    if not one_statement(transition) or session.get_bind().dialect.name != "postgresql":
        return STALE
    changes = _run_changes(transition, transition.events, unchanged_since=transition.run.last_seq)
    changes.step_move = _repo_move(transition.moves[0])
    if not repo.apply_run_changes(session, changes):
        return STALE
    return _written(transition, [])


def _foldable(transition: Transition, required: list[StepMove]) -> bool:
    return (len(required) == 1 and required[0].attempt is not None and required[0].target in _FOLDABLE
            and not transition.requests and not transition.close_requests and not transition.output_from
            and all(m.message is not None for m in transition.moves if m.optional))


def _apply_folded(session: Session, transition: Transition, reported: StepMove, together: bool = False,
                  claim_next: ClaimNext | None = None) -> Written:
    """The reported step's move in the run's statement, after the steps its success made ready."""
    queued = [m for m in transition.moves if m.optional]
    if queued and together:
        written = _folded_together(session, transition, reported, queued, claim_next)
        if written is not None:
            return written
    messages = repo.queue_steps_with_outbox(
        session, transition.run.id, {m.step_id: m.message.soft_time_limit for m in queued}, reported.step_id,
        reported.attempt,
    ) if queued else []
    attempts = {m.step_id: m.attempt for m in messages}
    changes = _run_changes(transition, _events_of(transition.events, attempts))
    changes.step_move = _repo_move(reported)
    if not repo.apply_run_changes(session, changes):
        if messages:
            # Cannot happen: the queueing statement checked the step's guard under the run's lock.
            raise repo.StaleRunState(f"step {reported.step_id} of run {transition.run.id} moved under its run's lock")
        return STALE
    return _written(transition, messages)


def _folded_together(session: Session, transition: Transition, reported: StepMove, queued: list[StepMove],
                     claim_next: ClaimNext | None = None) -> Written | None:
    """_apply_folded's two statements sent together, in one round trip: the steps queued and the run's
    statement, whose events name the attempts decided (each step's next, as read with the run's lock),
    and the claim of the step ``claim_next`` takes, if it takes the one queued (the claim is the
    transaction's last statement: its ``step_started`` follows the run's events). None, having sent
    nothing, if the run's statement is not one sent on the driver."""
    decided = {m.step_id: m.message.attempt for m in queued}
    changes = _run_changes(transition, _events_of(transition.events, decided))
    changes.step_move = _repo_move(reported)
    statement = repo.run_statement(session, changes)
    if statement is None:
        return None
    claiming = _claimed_next(transition, queued, claim_next)
    with sent_together(session):
        queueing = repo.send_queue_steps_with_outbox(
            session, transition.run.id, {m.step_id: m.message.soft_time_limit for m in queued}, reported.step_id,
            reported.attempt, outbox=claiming is None)
        written = statement.send(session)
        if claiming is not None:
            claim = repo.send_claim(session, transition.run.id, claiming.step_id, claiming.attempt,
                                    worker=claim_next.worker, lease_s=claim_next.lease_s)
    messages = queueing()
    if {m.step_id: m.attempt for m in messages} != decided:
        raise NotAsDecided(f"run {transition.run.id}: queued {sorted((m.step_id, m.attempt) for m in messages)}, "
                           f"decided {sorted(decided.items())}")
    if not written():
        # Cannot happen: the queueing statement checked the step's guard under the run's lock.
        raise repo.StaleRunState(f"step {reported.step_id} of run {transition.run.id} moved under its run's lock")
    if claiming is None:
        return _written(transition, messages)
    claimed = claim()
    if claimed is None or not claimed.claimed:
        # Its step would be left queued with no outbox row: written again without the claim.
        raise NotAsDecided(f"run {transition.run.id}: {claiming.step_id} attempt {claiming.attempt} queued "
                           "but not claimed")
    return dataclasses.replace(_written(transition, messages), claimed=claimed)


def _claimed_next(transition: Transition, queued: list[StepMove], claim_next: ClaimNext | None) -> StepMessage | None:
    """The message of the step ``claim_next`` claims: the one step queued, on its queue, if it accepts it
    and the run is left where a step may be claimed (a paused run's step is put back by its claim)."""
    after = transition.after
    if claim_next is None or len(queued) != 1 or after is None or after.status not in repo.CLAIMABLE_RUN:
        return None
    message = queued[0].message
    return message if message.queue == claim_next.queue and claim_next.accepts(message) else None


def _apply_direct(session: Session, transition: Transition, required: list[StepMove]) -> Written:
    run_id, written_any = transition.run.id, False
    for group in _consecutive_groups(required):
        moved = repo.update_steps(session, run_id, [m.step_id for m in group], group[0].target,
                                  only_from=group[0].from_, at_attempt=group[0].attempt,
                                  **_sql_values(group[0].values))
        if len(moved) != len(group):
            if not written_any:
                return STALE
            raise repo.StaleRunState(f"steps {[m.step_id for m in group]} of run {run_id} moved under its lock")
        written_any = True
    attempts = {}
    for move in (m for m in transition.moves if m.optional):
        if repo.update_steps(session, run_id, [move.step_id], move.target, only_from=move.from_,
                             **_sql_values(move.values)):
            attempts[move.step_id] = move.message.attempt if move.message else None
    item_messages, item_revoke, item_events, started = _write_items(session, transition)
    _write_requests(session, transition)
    changes = _run_changes(transition, [*_events_of(transition.events, attempts), *item_events])
    if transition.output_from:
        outputs = repo.step_outputs(session, [(run_id, s) for s in transition.output_from])
        changes.run_values["output"] = {s: outputs.get((run_id, s)) for s in transition.output_from}
    repo.apply_run_changes(session, changes)
    if transition.wake_run is not None:
        child_rows.wake_parent(session, transition.wake_run, run_id)
    queued = [m.message for m in required if m.message is not None]
    queued += [m.message for m in transition.moves if m.optional and m.step_id in attempts and m.message]
    return Written(True, repo.insert_outbox(session, queued) + item_messages, transition.revoke + item_revoke,
                   transition.wakes_scheduler, {run_id: started} if started else {})


def apply_batch(session: Session, transitions: Sequence[Transition], holding: Holding | None = None) -> Written:
    """Write the transitions of many locked runs (the scheduler's pass): the moves of one shape in one
    statement, the run updates of one shape in one executemany, every event in one statement, the
    outbox rows of every queued step in one (those ``holding`` holds in another). Returns the queued
    steps' messages (not the held ones'), the tasks to revoke, and whether any run (or a parent run
    woken by its child's end) is left flagged with work. Raises repo.StaleRunState if any guard
    matched nothing, for the caller to undo the batch and redo it run by run."""
    groups: dict[tuple, list[tuple[str, StepMove]]] = {}
    many, queued, revoke, held = [], [], [], []
    wakes, started = False, {}
    for transition in transitions:
        if _moves_a_step_twice(transition) or _writes_items(transition):
            # Its moves must be written in order: on their own, not in the shared statements.
            written = apply(session, transition)
            queued += written.messages
            revoke += written.revoke
            wakes |= written.wakes_scheduler
            started.update(written.started)
            continue
        wakes |= transition.wakes_scheduler
        revoke += transition.revoke
        for move in transition.moves:
            if move.message is not None and holding is not None and move.message.queue in holding.queues:
                move = dataclasses.replace(move, values={**move.values, "held": True})
                held.append(repo.HeldRow(move.message, transition.run.tenant_id,
                                         holding.priorities[transition.run.id]))
            elif move.message is not None:
                queued.append(move.message)
            groups.setdefault(_shape_key(move), []).append((transition.run.id, move))
        _write_requests(session, transition)
        many.append((transition, _run_changes(transition, transition.events)))
    for moves in groups.values():
        first = moves[0][1]
        keys = [(run_id, m.step_id) for run_id, m in moves]
        moved = repo.move_steps_many(session, keys, first.target, only_from=first.from_, at_attempt=first.attempt,
                                     **_sql_values(first.values))
        if len(moved) != len(keys):
            raise repo.StaleRunState(f"steps {sorted(set(keys) - moved)} changed under their runs' locks")
    _read_outputs(session, many)
    repo.apply_many_run_changes(session, [changes for _, changes in many])
    messages = repo.insert_outbox(session, [m for m in queued if m.outbox_id is None]) + [
        m for m in queued if m.outbox_id is not None]
    repo.insert_held_outbox(session, held)
    return Written(True, messages, revoke, wakes, started, held=len(held))


def _moves_a_step_twice(transition: Transition) -> bool:
    ids = [m.step_id for m in transition.moves]
    return len(ids) != len(set(ids))


def _shape_key(move: StepMove) -> tuple:
    """Moves that can share a statement: the same target, guard and values."""
    values = json.dumps({k: _key_value(v) for k, v in sorted(move.values.items())}, default=str, sort_keys=True)
    return move.target, move.from_, move.attempt, values


def _key_value(value: Any) -> Any:
    if isinstance(value, Marker):
        return f"<{value.value}>"
    if isinstance(value, DueIn):
        return f"<due in {value.seconds}>"
    return value


def _read_outputs(session: Session, many: list) -> None:
    keys = [(t.run.id, s) for t, _ in many for s in t.output_from]
    if not keys:
        return
    outputs = repo.step_outputs(session, keys)
    for transition, changes in many:
        if transition.output_from:
            changes.run_values["output"] = {s: outputs.get((transition.run.id, s)) for s in transition.output_from}


def _consecutive_groups(moves: list[StepMove]) -> list[list[StepMove]]:
    """Runs of consecutive moves of one shape: each run is one statement."""
    groups: list[list[StepMove]] = []
    for move in moves:
        if groups and _shape_key(groups[-1][0]) == _shape_key(move):
            groups[-1].append(move)
        else:
            groups.append([move])
    return groups


def _write_requests(session: Session, transition: Transition) -> None:
    run = transition.run
    for request in transition.requests:
        if request.kind == "approval":
            repo.insert_approval(session, approval_id=request.id, tenant_id=run.tenant_id, run_id=run.id,
                                 step_id=request.step_id, prompt=request.text,
                                 call=dict(request.call) if request.call is not None else None)
        else:
            repo.insert_question(session, question_id=request.id, tenant_id=run.tenant_id, run_id=run.id,
                                 step_id=request.step_id, question=request.text or "?")
    if transition.close_requests:
        repo.close_open_requests(session, run.id)


def _events_of(events: Sequence[Event], moved: dict[str, int | None]) -> list[Event]:
    """The events to write: those tied to an optional move only if it matched (with the attempt it wrote)."""
    kept = []
    for event in events:
        if not event.if_moved:
            kept.append(event)
        elif event.step_id in moved:
            attempt = moved[event.step_id]
            kept.append(Event(event.type, event.step_id, attempt if attempt is not None else event.attempt,
                              event.data))
    return kept


def _run_changes(transition: Transition, events: Sequence[Event], unchanged_since: int | None = None
                 ) -> repo.RunChanges:
    changes = repo.RunChanges(transition.run, run_values=_sql_values(transition.run_values),
                              run_target=transition.run_to, unchanged_since=unchanged_since)
    changes.events.extend(e.row() for e in events)
    return changes


def _repo_move(move: StepMove) -> repo.StepMove:
    return repo.StepMove(move.step_id, move.target, move.from_, move.attempt, _sql_values(move.values))


def _sql_values(values) -> dict[str, Any]:
    """Markers as the SQL expressions the database fills in."""
    result = {}
    for key, value in values.items():
        if isinstance(value, Marker):
            value = _MARKERS[value]
        elif isinstance(value, DueIn):
            value = db_now(value.seconds)
        result[key] = value
    return result


def _written(transition: Transition, messages: list[StepMessage]) -> Written:
    return Written(True, messages, transition.revoke, transition.wakes_scheduler)
