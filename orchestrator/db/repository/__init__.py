"""Every SQL statement of Switchyard, as named functions over a Session (STYLE.md: one manager module,
here one package of modules by concern; every public name is re-exported here, so callers use
``from orchestrator.db import repository as repo`` and ``repo.X`` whichever module holds X).

Status changes are guarded: ``UPDATE … WHERE status IN (allowed_from)`` with the allowed set taken
from ``orchestrator.states``; a function reports what it actually changed, and zero rows means the
change was stale or a duplicate. Callers that change a run hold its row lock (``lock_run``), taken
before any step row, so every writer locks in the same order.

The modules:

- ``tenants``: tenants, API tokens, tenant policies, webhook secrets and the webhook replay guard;
- ``workflows``: workflows and their published versions;
- ``runs``: creating a run, and reading runs, their steps and their event log;
- ``changes``: locking a run and the guarded writes of its steps and itself with their events (every
  step's path: ``lock_run``, ``lock_run_with_step``, ``steps_for_update``, ``update_steps``,
  ``move_steps_many``, ``apply_run_changes``, ``apply_many_run_changes``; the statements built once);
- ``attempts``: the worker's side of an attempt (``lock_run_and_claim``, ``extend_lease``);
- ``scheduling``: the scheduler's pass and sweep, due times, a run's diagnosis facts and the outbox;
- ``people``: step checkpoints, approvals, questions and inbound events;
- ``aggregates``: the monitoring and analytics queries (GET /metrics and /analytics);
- ``events``: appending to the event log, and staging what was written for the publisher;
- ``common``: what several modules share (``LIVE_RUN``, ``now``, the tables ``RUNS``, ``STEPS``, ``EVENTS``).
"""

from __future__ import annotations

from orchestrator.db.repository.aggregates import (
    DISPATCHED_TYPES,
    EPOCH,
    FINISHED_STEP,
    ROLLUP_WATERMARK,
    STEP_SERIES,
    TIMESERIES,
    USAGE_FIELDS,
    Histogram,
    advance_step_rollups,
    count_runs_by_status,
    count_step_errors,
    le_label,
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
    claim_step,
    extend_lease,
    lock_run_and_claim,
)
from orchestrator.db.repository.changes import (
    NEXT_ATTEMPT,
    NOW,
    RunChanges,
    RunRow,
    StaleRunState,
    StepMove,
    apply_many_run_changes,
    apply_run_changes,
    lock_run,
    lock_run_with_steps,
    move_steps_many,
    steps_for_update,
    steps_of,
    update_steps,
)
from orchestrator.db.repository.common import (
    EVENTS,
    LIVE_RUN,
    RUNS,
    STEPS,
    now,
)
from orchestrator.db.repository.events import (
    WRITTEN_EVENTS,
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
    set_checkpoint,
    step_checkpoint,
    step_fields,
)
from orchestrator.db.repository.runs import (
    RUN_STATUS_EVENTS,
    find_run_by_idempotency_key,
    get_run,
    insert_run,
    list_runs,
    run_events,
    run_status,
    run_status_events,
    run_steps,
    succeeded_outputs,
)
from orchestrator.db.repository.scheduling import (
    FIRING_RUN,
    delete_outbox,
    diagnosis_facts,
    flag_runs_with_due_steps,
    insert_outbox,
    lock_runs_with_work,
    outputs_if_others_succeeded,
    queue_steps_with_outbox,
    queued_steps,
    seconds_until_next_due,
    stale_outbox,
    step_outputs,
    step_statuses,
)
from orchestrator.db.repository.tenants import (
    create_token,
    ensure_tenant,
    expire_webhook_secrets,
    find_token,
    get_token,
    hash_token,
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

# Every public name of the modules, as ``repo.X``.
__all__ = [
    # aggregates
    "DISPATCHED_TYPES", "EPOCH", "FINISHED_STEP", "ROLLUP_WATERMARK", "STEP_SERIES", "TIMESERIES",
    "USAGE_FIELDS", "Histogram", "advance_step_rollups", "count_runs_by_status", "count_step_errors",
    "le_label", "lease_heartbeats", "live_step_queues", "runs_of_tenant", "step_histograms",
    "step_queue_rates", "sum_run_usage", "timeseries",
    # attempts
    "CLAIMABLE_RUN", "Claimed", "claim_step", "extend_lease", "lock_run_and_claim",
    # changes
    "NEXT_ATTEMPT", "NOW", "RunChanges", "RunRow", "StaleRunState", "StepMove",
    "apply_many_run_changes", "apply_run_changes", "lock_run", "lock_run_with_steps", "move_steps_many",
    "steps_for_update", "steps_of", "update_steps",
    # common
    "EVENTS", "LIVE_RUN", "RUNS", "STEPS", "now",
    # events
    "WRITTEN_EVENTS",
    # people
    "answer_question", "close_open_requests", "decide_approval", "get_approval", "get_question",
    "insert_approval", "insert_inbound_event", "insert_question", "kept_event", "latest_approval_decision",
    "list_approvals", "list_questions", "pending_approvals", "run_approvals", "run_questions",
    "runs_waiting_on_key", "set_checkpoint", "step_checkpoint", "step_fields",
    # runs
    "RUN_STATUS_EVENTS", "find_run_by_idempotency_key", "get_run", "insert_run", "list_runs", "run_events",
    "run_status", "run_status_events", "run_steps", "succeeded_outputs",
    # scheduling
    "FIRING_RUN", "delete_outbox", "diagnosis_facts", "flag_runs_with_due_steps", "insert_outbox",
    "lock_runs_with_work", "outputs_if_others_succeeded", "queue_steps_with_outbox", "queued_steps",
    "seconds_until_next_due", "stale_outbox", "step_outputs", "step_statuses",
    # tenants
    "create_token", "ensure_tenant", "expire_webhook_secrets", "find_token", "get_token", "hash_token",
    "insert_webhook_secret", "list_tokens", "list_webhook_secrets", "live_webhook_secrets",
    "record_webhook_delivery", "revoke_token", "set_tenant_policy", "tenant_policy",
    # workflows
    "get_definitions", "get_version", "get_workflow", "list_versions", "list_workflows", "publish_workflow",
]
