"""The retention sweep: terminal runs past their retention are deleted, in small batches, in the background.

A run expires ``retention_days`` (the workflow's, else SWITCHYARD_RETENTION_DAYS; 0 keeps forever) after
it ended. Each scheduler process runs a sweeper thread: every SWITCHYARD_RETENTION_INTERVAL_S it deletes
what expired, SWITCHYARD_RETENTION_BATCH runs per transaction with a short pause between batches, so no
transaction holds many locks or runs long, and the scheduler's own loop is never held up by it. A
batch locks its runs with ``FOR UPDATE SKIP LOCKED`` and only while terminal: several sweepers share the
work, and a run being retried at that moment is left alone.

With SWITCHYARD_ARCHIVE_DIR set, each run's evidence pack is written there (``<tenant>/<run_id>.zip``)
in the batch's transaction, before its rows go: a pack that cannot be written leaves the run in place.
The pack holds the run's rows as stored and its output files, with the manifest and HMAC of every
evidence pack (``switchyard evidence verify`` checks it).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import artifacts, evidence
from orchestrator.db import repository as repo
from orchestrator.db.session import transaction
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Totals:
    """What a sweep deleted: runs, rows per table, batches (transactions), and how long it took."""

    runs: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0

    def add(self, runs: int, counts: dict[str, int]) -> None:
        self.runs += runs
        self.batches += 1
        for name, n in counts.items():
            self.rows[name] = self.rows.get(name, 0) + n

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def sweep(sessions: sessionmaker[Session], settings: Settings, *, now: datetime | None = None,
          stopping: threading.Event | None = None) -> Totals:
    """Delete every run expired at ``now`` (default: the database's clock), a batch per transaction."""
    stopping = stopping or threading.Event()
    started, totals = time.monotonic(), Totals()
    with sessions() as session:
        now = now or repo.now(session)
        targets = repo.retention_targets(session, settings.retention_days)
    for tenant_id, workflow_id, days in targets:
        cutoff, after = now - timedelta(days=days), None
        while not stopping.is_set():
            batch_started = time.monotonic()
            runs, counts, after = purge_batch(sessions, settings, (tenant_id, workflow_id), cutoff, after)
            if runs:
                totals.add(runs, counts)
            if runs < settings.retention_batch:
                break
            # At least as long as the batch took: the sweep never takes more than half of a database
            # connection's time, however slow a busy database makes its batches (the hot path's share).
            stopping.wait(max(settings.retention_pause_s, time.monotonic() - batch_started))
    if settings.retention_days > 0:
        _prune_records(sessions, now - timedelta(days=settings.retention_days), settings.retention_batch)
    totals.seconds = time.monotonic() - started
    return totals


def purge_batch(sessions: sessionmaker[Session], settings: Settings, target: tuple[str, str], cutoff: datetime,
                after: datetime | None = None) -> tuple[int, dict[str, int], datetime | None]:
    """Delete (archiving first, if set) up to a batch of the workflow's runs that ended before ``cutoff``
    (created at or after ``after``), in one transaction: the runs deleted, the rows deleted per table,
    and where the next batch starts."""
    with transaction(sessions) as session:
        found = repo.lock_expired_runs(session, target, cutoff, settings.retention_batch, after)
        if not found:
            return 0, {}, after
        run_ids = [run_id for run_id, _ in found]
        if settings.archive_dir is not None:
            for run_id in run_ids:
                archive(session, settings, target[0], run_id)
        counts = repo.delete_runs(session, run_ids)
        repo.add_purged(session, target[0], counts)
    store = artifacts.store(settings)
    for run_id in run_ids:  # after the commit: a failed delete leaves a run's files, never files without a run
        shutil.rmtree(store.root / run_id, ignore_errors=True)
    return len(run_ids), counts, found[-1][1]


def _prune_records(sessions: sessionmaker[Session], cutoff: datetime, batch: int) -> None:
    """Event receipts and schedule fires older than the retention: nothing reads them any more."""
    while True:
        with transaction(sessions) as session:
            if repo.prune_old_records(session, cutoff, batch) < batch:
                return


def archive(session: Session, settings: Settings, tenant_id: str, run_id: str) -> Path:
    """Write the run's evidence pack to SWITCHYARD_ARCHIVE_DIR/<tenant>/<run_id>.zip (whole, by rename)."""
    run = repo.get_run(session, tenant_id, run_id)
    folder = Path(settings.archive_dir) / tenant_id
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{run_id}.zip"
    files: dict[str, bytes | Path] = {name: evidence.dumps(content) for name, content in _records(session, run).items()}
    store = artifacts.store(settings)
    files |= {f"{evidence.FILES_DIR}{f.name}": store.path(run_id, f.name) for f in store.list(run_id)}
    about = {"run_id": run_id, "tenant_id": run.tenant_id, "run_status": run.status, "archived": True,
             "generated_at": repo.now(session).isoformat()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "wb") as out:
        for chunk in evidence.stream_zip(files, about, settings.secret_key):
            out.write(chunk)
    os.replace(tmp, target)
    return target


def _records(session: Session, run) -> dict[str, Any]:
    """The run's rows as stored: the run, its workflow version, steps, events, approvals and questions."""
    events, after = [], 0
    while batch := repo.run_events(session, run.id, after, 5000):
        events += [_row(e) for e in batch]
        after = batch[-1].seq
    version = repo.get_version(session, run.tenant_id, run.workflow_id, run.workflow_version)
    return {"run.json": _row(run), "workflow_version.json": _row(version),
            "steps.json": [_row(s) for s in repo.run_steps(session, run.id)], "events.json": events,
            "approvals.json": [_row(a) for a in repo.run_approvals(session, run.id)],
            "questions.json": [_row(q) for q in repo.run_questions(session, run.id)]}


def _row(entity) -> dict[str, Any]:
    return {attr.key: getattr(entity, attr.key) for attr in inspect(entity).mapper.column_attrs}


class Sweeper(threading.Thread):
    """The scheduler process's retention thread: a sweep every SWITCHYARD_RETENTION_INTERVAL_S until stopped."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], stopping: threading.Event):
        super().__init__(name="retention", daemon=True)
        self.settings, self.sessions, self.stopping = settings, sessions, stopping

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                totals = sweep(self.sessions, self.settings, stopping=self.stopping)
            except Exception:  # noqa: BLE001 - an outage or a full archive disk: try again next time
                log.exception("the retention sweep failed; it tries again in %.0fs", self.settings.retention_interval_s)
            else:
                if totals.runs:
                    log.info("retention sweep deleted %d runs (%d rows) in %d batches, %.0f rows/s", totals.runs,
                             totals.total_rows, totals.batches, totals.total_rows / max(totals.seconds, 1e-6))
            self.stopping.wait(self.settings.retention_interval_s)


def start_sweeper(settings: Settings, sessions: sessionmaker[Session], stopping: threading.Event) -> Sweeper:
    """Start the retention thread (always: a workflow's retention_days may apply even when
    SWITCHYARD_RETENTION_DAYS is 0; a sweep with nothing to do is two queries)."""
    sweeper = Sweeper(settings, sessions, stopping)
    sweeper.start()
    return sweeper
