"""Every SQL statement of Switchyard, as named functions over a Session (one manager of the SQL,
here one package of modules by concern: docs/architecture.md, "Conventions"). Callers use ``from orchestrator.db import repository as repo``
and ``repo.X`` whichever module holds X: this module re-exports only the names used outside the
package (``__all__``). Every other name of its modules is internal to the package: the modules share
them by importing each other's public names, never a ``_private`` one.

Status changes are guarded: ``UPDATE … WHERE status IN (allowed_from)`` with the allowed set taken
from ``orchestrator.states``; a function reports what it actually changed, and zero rows means the
change was stale or a duplicate. Callers that change a run hold its row lock (``lock_run``), taken
before any step row, so every writer locks in the same order.

One way to write SQL: named module-level statements (UPPER_CASE, each with a comment saying what it
does) built with SQLAlchemy Core, built once where they are on a step's path (building one costs
about a round trip); statements whose shape depends on the call are built once per shape and cached
(``steps``, ``run_changes``). Two hot-path statements are text, with the transition table's allowed
statuses formatted in: the worker's claim (``attempts._CLAIM_PG``, sent straight on the driver) and
the outcome writer's dispatch (``scheduling._QUEUE_WITH_OUTBOX_PG``). ORM entities are only for
reading rows the API serialises, and for the inserts that create them.

The modules:

- ``tenants``: tenants, API tokens, tenant policies, webhook secrets and the webhook replay guard;
- ``workflows``: workflows and their published versions;
- ``runs``: reading runs, their steps and their event log;
- ``starts``: creating a run with its steps, first events and outbox rows (one statement on PostgreSQL);
- ``changes``: locking a run and reading its steps under the lock (``lock_run``, ``lock_run_with_steps``,
  ``steps_for_update``, ``steps_of``): every step's path starts here;
- ``steps``: the guarded moves of a locked run's steps (``update_steps``, ``move_steps_many``) and the
  shared expressions ``NOW`` and ``NEXT_ATTEMPT``;
- ``run_changes``: the guarded update of a locked run with its events (``RunChanges``, ``StepMove``,
  ``apply_run_changes``, ``apply_many_run_changes``): every step's path ends here;
- ``children``: child runs (sub-runs): their facts for a parent's pass, waking a parent, live children;
- ``items``: a for-each step's item rows (written, dispatched, stopped and read set-based);
- ``attempts``: the worker's side of an attempt (``lock_run_and_claim``, ``send_claim``, ``extend_lease``);
- ``schedules``: cron schedules and the record of their fires (each slot's unique key);
- ``lifecycle``: event triggers and event ids seen, archived workflows, the retention sweep's deletes;
- ``scheduling``: the scheduler's pass and sweep, due times, a run's diagnosis facts and the outbox;
- ``operators``: the runs a bulk action's filter selects, the definitions forks run, current steps;
- ``people``: step checkpoints, approvals, questions and inbound events;
- ``aggregates``: the monitoring and analytics queries (GET /metrics and /analytics);
- ``events``: appending to the event log, and staging what was written for the publisher;
- ``common``: what several modules share (``LIVE_RUN``, ``now``, the tables ``RUNS``, ``STEPS``,
  ``EVENTS``, ``OUTBOX``, ``sql_list``, ``STEP_STATUSES``).
"""

from __future__ import annotations

from orchestrator.db.repository.aggregates import (
    TIMESERIES,
    Histogram,
    advance_step_rollups,
    count_runs_by_status,
    count_step_errors,
    lease_heartbeats,
    live_step_queues,
    runs_of_tenant,
    step_histograms,
    step_queue_rates,
    sum_run_usage,
    timeseries,
)
from orchestrator.db.repository.attempts import (
    CLAIMABLE_RUN,
    Claimed,
    extend_lease,
    lock_run_and_claim,
    send_claim,
)
from orchestrator.db.repository.changes import lock_run, lock_run_with_steps, steps_for_update, steps_of
from orchestrator.db.repository.children import child_facts, child_run_ids, flag_run, live_children
from orchestrator.db.repository.common import LIVE_RUN, now
from orchestrator.db.repository.events import WRITTEN_EVENTS
from orchestrator.db.repository.items import list_items
from orchestrator.db.repository.lifecycle import (
    add_purged,
    archive_workflow,
    delete_runs,
    lock_expired_runs,
    prune_old_records,
    purged_rows,
    record_event_id,
    retention_targets,
    set_workflow_lifecycle,
    workflows_on_event,
)
from orchestrator.db.repository.operators import (
    RunFilter,
    count_matching_runs,
    current_steps,
    matching_runs,
    store_fork_definition,
)
from orchestrator.db.repository.people import (
    answer_question,
    close_open_requests,
    decide_approval,
    get_approval,
    get_question,
    insert_approval,
    insert_inbound_event,
    insert_question,
    kept_event,
    latest_approval_decision,
    list_approvals,
    list_questions,
    pending_approvals,
    run_approvals,
    run_questions,
    runs_waiting_on_key,
    step_checkpoint,
    step_fields,
)
from orchestrator.db.repository.run_changes import (
    RunChanges,
    StaleRunState,
    StepMove,
    apply_many_run_changes,
    apply_run_changes,
    run_statement,
)
from orchestrator.db.repository.runs import (
    find_run_by_idempotency_key,
    get_run,
    insert_run,
    list_runs,
    run_events,
    run_status,
    run_status_events,
    run_step,
    run_steps,
    succeeded_outputs,
)
from orchestrator.db.repository.schedules import (
    advance_schedule,
    delete_schedule,
    get_schedule,
    insert_fire,
    list_schedules,
    lock_due_schedules,
    mark_fire_failed,
    next_fire_at,
    put_schedule,
    set_fire_run,
)
from orchestrator.db.repository.scheduling import (
    HeldRow,
    delete_outbox,
    diagnosis_facts,
    flag_runs_with_due_steps,
    insert_held_outbox,
    insert_outbox,
    lock_runs_with_work,
    outputs_if_others_succeeded,
    queue_steps_with_outbox,
    queued_steps,
    seconds_until_next_due,
    send_queue_steps_with_outbox,
    stale_outbox,
    step_outputs,
)
from orchestrator.db.repository.starts import NewRun, insert_new_run, read_workflow
from orchestrator.db.repository.steps import NEXT_ATTEMPT, NOW, move_steps_many, update_steps
from orchestrator.db.repository.tenants import (
    create_token,
    expire_webhook_secrets,
    find_token,
    get_token,
    insert_webhook_secret,
    list_tokens,
    list_webhook_secrets,
    live_webhook_secrets,
    record_webhook_delivery,
    revoke_token,
    set_tenant_policy,
    tenant_policy,
)
from orchestrator.db.repository.workflows import (
    get_definitions,
    get_version,
    get_workflow,
    list_versions,
    list_workflows,
    publish_workflow,
)

# The names used outside the package, as ``repo.X``.
__all__ = [
    # aggregates
    "TIMESERIES", "Histogram", "advance_step_rollups", "count_runs_by_status", "count_step_errors", "lease_heartbeats",
    "live_step_queues", "runs_of_tenant", "step_histograms", "step_queue_rates", "sum_run_usage", "timeseries",
    # attempts
    "CLAIMABLE_RUN", "Claimed", "extend_lease", "lock_run_and_claim", "send_claim",
    # changes
    "lock_run", "lock_run_with_steps", "steps_for_update", "steps_of",
    # common
    "LIVE_RUN", "now",
    # events
    "WRITTEN_EVENTS",
    # operators
    "RunFilter", "count_matching_runs", "current_steps", "matching_runs", "store_fork_definition",
    # people
    "answer_question", "close_open_requests", "decide_approval", "get_approval", "get_question",
    "insert_approval", "insert_inbound_event", "insert_question", "kept_event", "latest_approval_decision",
    "list_approvals", "list_questions", "pending_approvals", "run_approvals", "run_questions",
    "runs_waiting_on_key", "step_checkpoint", "step_fields",
    # run_changes
    "RunChanges", "StaleRunState", "StepMove", "apply_many_run_changes", "apply_run_changes", "run_statement",
    # runs
    "NewRun", "insert_new_run", "read_workflow",
    "find_run_by_idempotency_key", "get_run", "insert_run", "list_runs", "run_events", "run_status",
    "run_status_events", "run_step", "run_steps", "succeeded_outputs",
    # items
    "list_items",
    # children
    "child_facts", "child_run_ids", "flag_run", "live_children",
    # lifecycle
    "add_purged", "archive_workflow", "delete_runs", "lock_expired_runs", "prune_old_records", "purged_rows",
    "record_event_id", "retention_targets", "set_workflow_lifecycle", "workflows_on_event",
    # schedules
    "advance_schedule", "delete_schedule", "get_schedule", "insert_fire", "list_schedules", "lock_due_schedules", "mark_fire_failed",
    "next_fire_at", "put_schedule", "set_fire_run",
    # scheduling
    "delete_outbox", "diagnosis_facts", "flag_runs_with_due_steps", "insert_held_outbox", "insert_outbox", "HeldRow", "lock_runs_with_work",
    "outputs_if_others_succeeded", "queue_steps_with_outbox", "send_queue_steps_with_outbox", "queued_steps", "seconds_until_next_due",
    "stale_outbox", "step_outputs",
    # steps
    "NEXT_ATTEMPT", "NOW", "move_steps_many", "update_steps",
    # tenants
    "create_token", "expire_webhook_secrets", "find_token", "get_token", "insert_webhook_secret", "list_tokens",
    "list_webhook_secrets", "live_webhook_secrets", "record_webhook_delivery", "revoke_token",
    "set_tenant_policy", "tenant_policy",
    # workflows
    "get_definitions", "get_version", "get_workflow", "list_versions", "list_workflows", "publish_workflow",
]
