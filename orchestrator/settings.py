"""One typed settings object, read once from ``SWITCHYARD_*`` environment variables.

Nothing else in the code base reads the environment (docs/architecture.md, "Conventions"): every factory takes a
``Settings`` and passes it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "switchyard-dev-secret-change-me"


class ModelPrices(BaseModel):
    """Credits per token for one model (or provider), overriding the table's defaults."""

    model_config = ConfigDict(extra="forbid")
    tokens_in: float | None = Field(default=None, ge=0)
    tokens_out: float | None = Field(default=None, ge=0)
    llm_calls: float | None = Field(default=None, ge=0)


class PriceTable(BaseModel):
    """Credits per unit of usage: per step finished, tool call, LLM call and token in/out.

    ``models`` overrides the LLM prices per model name (``openai/gpt-4o``) or provider (``openai``).
    """

    model_config = ConfigDict(extra="forbid")
    steps: float = Field(default=0.0, ge=0)
    tool_calls: float = Field(default=0.0, ge=0)
    llm_calls: float = Field(default=0.0, ge=0)
    tokens_in: float = Field(default=0.0, ge=0)
    tokens_out: float = Field(default=0.0, ge=0)
    models: dict[str, ModelPrices] = Field(default_factory=dict)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    data_dir: Path = Field(default=Path(".switchyard"), description="Where the embedded defaults keep files.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means a SQLite file in data_dir.")
    broker_url: str = Field(default="", description="Celery broker URL; empty means the embedded filesystem broker.")
    secret_key: str = DEV_SECRET_KEY

    default_queue: str = "steps"
    wake_queue: str = "switchyard.wake"

    # Leases and sweeps. The lease is extended by the worker's heartbeat every lease_s / 3.
    lease_s: float = 30.0
    sweep_interval_s: float = 5.0
    outbox_republish_after_s: float = 10.0
    # A step message a worker took this long ago without claiming its step was held by a worker that
    # died: the sweep publishes it again (far above a claim's retry delays while the database is down).
    stranded_after_s: float = 30.0
    cancel_grace_s: float = 5.0
    # A worker whose step succeeded queues and publishes the steps that success made ready (where that
    # is plain: see orchestrator.core.outcome.ready_reads) instead of waking the scheduler for them.
    worker_dispatch: bool = True
    # A worker writes an attempt's outcome on a thread after its Celery task returned, so the process
    # takes its next message meanwhile; it waits for the write before its next claim (see
    # workers.tasks._OutcomesBehind). Off, the task returns after the outcome committed.
    worker_record_behind: bool = True
    # A worker whose step's success queued the next step of its run on the same queue runs that step
    # itself (claimed from the database, no broker message) while its Celery task has run for less than
    # this many seconds; then the next one goes through the broker, behind the queue's other work. Each
    # step message's soft time limit carries this much slack, so a step run this way keeps its own. 0:
    # every step goes through the broker. PostgreSQL only (docs/architecture.md, "Eager steps").
    worker_eager_s: float = Field(default=2.0, ge=0, le=60)

    # How long POST /events keeps an event for steps that start waiting on its key later.
    event_keep_s: float = 3600.0

    # Triggers and old data (docs/triggers.md). catchup "all" fires at most max_catchup missed slots.
    max_catchup: int = Field(default=100, ge=0, le=10000)
    # Terminal runs older than this are deleted by the retention sweep (0: kept forever); a workflow's
    # retention_days overrides it. With archive_dir set, each run's evidence pack is written there first.
    retention_days: int = Field(default=30, ge=0)
    archive_dir: Path | None = None
    # The sweep deletes retention_batch runs per transaction, pausing retention_pause_s between
    # batches, and looks for more every retention_interval_s once none is left.
    retention_batch: int = Field(default=200, ge=1, le=10000)
    retention_pause_s: float = Field(default=0.05, ge=0)
    retention_interval_s: float = Field(default=300.0, gt=0)

    # Metering: credits per unit of usage, as JSON in SWITCHYARD_PRICES (see PriceTable).
    prices: PriceTable = Field(default_factory=PriceTable)

    # Monitoring. GET /metrics needs a viewer token unless metrics_public is on.
    metrics_public: bool = False
    # The workers' own metrics (prometheus multiprocess mode): the directory the prefork children
    # write to (off when unset) and where the worker's main process serves them (0: not served).
    metrics_dir: Path | None = None
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"
    # How long the worker monitor's background inspect round waits for the workers' answers (GET /queues
    # and GET /workers answer from the monitor's memory and never wait for them).
    inspect_timeout_s: float = 1.0
    # Celery's task-sent event: one more Redis write per step message, for Flower's "sent" state only
    # (the workers' received, started and succeeded events are always on).
    task_sent_events: bool = False
    # Live streams: a comment line this often keeps proxies from closing an idle stream; with the
    # embedded broker (no pub/sub) each stream polls the database every stream_poll_s instead.
    stream_keepalive_s: float = 15.0
    stream_poll_s: float = 0.5

    # "json": one JSON object per line, with tenant, run_id, step_id and attempt where a line concerns a run.
    log_format: Literal["text", "json"] = "text"

    # Limits of the API (docs/api.md, "Errors": 413, 429). A rate limit of 0 turns it off.
    max_body_bytes: int = 1024 * 1024
    max_input_bytes: int = 256 * 1024
    max_steps_per_definition: int = 1000
    # The most items one for-each step may run; more fail the step with too_many_items.
    max_for_each_items: int = 1000
    # The deepest a child run (a `workflow` step's sub-run) may be; deeper fails the step with max_depth_exceeded.
    max_run_depth: int = 10
    rate_limit_per_min: int = 6000
    # Seconds an API process may reuse a token's lookup (0: it reads the token for every request). A
    # revoked token keeps working for up to this long in each API process that looked it up.
    token_cache_s: float = Field(default=0.0, ge=0)

    # Flow control (docs/flow-control.md). The broker holds at most this many step messages per queue,
    # counting the steps running from it (about 2x the concurrency of the workers that consume it);
    # `queue_windows` sets it per queue ({"llm": 16}). The rest wait in the database, admitted fairly
    # across tenants (weights `tenant_weights`, default 1) by the scheduler, which looks for room at most
    # this often while a queue has a backlog.
    dispatch_window: int = Field(default=32, ge=1)
    queue_windows: dict[str, int] = Field(default_factory=dict)
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    admit_interval_s: float = Field(default=0.02, gt=0)
    # While every window with held messages is full, the look for room backs off up to this (the
    # longest a freed place stays empty); a busy window is filled about half of it at a time. Also the
    # longest between two looks at every queue (in between, known backlogs are admitted without one).
    admit_max_wait_s: float = Field(default=0.25, gt=0)
    # While a queue has a backlog, the scheduler stretches its window to what the queue's workers drain
    # in this many seconds (0: never), up to `window_max` places: a newcomer then waits behind about as
    # long on a queue of fast steps as on one of slow steps, and a fast queue's flood is admitted in
    # fewer, larger looks (core.admission.stretched). A queue's own window (`queue_windows`) is never stretched.
    window_seconds: float = Field(default=0.25, ge=0)
    window_max: int = Field(default=256, ge=1)
    # LLM rate limits for the whole installation, by provider or provider/model:
    # {"openai/gpt-4o-mini": {"requests_per_min": 500, "tokens_per_min": 200000}}.
    rate_limits: dict[str, dict[str, int]] = Field(default_factory=dict)
    # A provider's 429 with Retry-After suspends its step this long at most, then it is llm_unavailable.
    max_rate_limit_wait_s: float = Field(default=600.0, ge=0)
    # The length of the rate limits' sliding window: 60 s as the limits are per minute. For tests
    # only, which shorten it to see a window's worth of calls quickly; the limits then hold per window.
    rate_limit_window_s: float = Field(default=60.0, gt=0)

    # Webhooks in: how far a signature's timestamp may be from now, and how long a rotated secret
    # stays valid beside the new one.
    webhook_tolerance_s: int = 300
    webhook_rotation_overlap_s: float = 86400.0

    # Output files: where they are kept (default data_dir/artifacts) and how long a signed URL lives.
    artifacts_dir: Path | None = None
    file_url_ttl_s: int = 900

    # The web UI's session cookie: Secure (sent over https only) when the UI is served over https,
    # and how long a sign-in lasts.
    ui_secure_cookies: bool = False
    ui_session_s: int = Field(default=12 * 3600, ge=60)

    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = ""
    openai_model: str = "gpt-4o-mini"
    # The models a definition may name (JSON list, e.g. ["openai/gpt-4o-mini", "openai/gpt-4o"]): with a
    # list, another openai model is refused at publish; without one, any model of a known provider passes.
    models: list[str] = Field(default_factory=list)
    openai_timeout_s: float = 60.0

    def window_of(self, queue: str) -> int:
        """The dispatch window of ``queue``: the most step messages the broker holds for it (with the
        steps running from it)."""
        return self.queue_windows.get(queue, self.dispatch_window)

    def weight_of(self, tenant_id: str) -> float:
        """The tenant's weight in the fair share of every queue's window (SWITCHYARD_TENANT_WEIGHTS)."""
        return self.tenant_weights.get(tenant_id, 1.0)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'switchyard.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()


def load() -> Settings:
    """Read the settings from the environment (and nothing else)."""
    return Settings()
