"""A step attempt's message: what the broker carries to a worker.

Everything in it is rebuilt from the database (the step's row, or its outbox row) whenever it must be
published again, so losing a message loses no work: the database is the truth, the broker only
carries work (docs/architecture.md, section 2).
"""

from __future__ import annotations

from dataclasses import dataclass


def task_id(run_id: str, step_id: str, attempt: int) -> str:
    """The Celery task id of one attempt: derived, so cancel can revoke it without storing it."""
    return f"{run_id}.{step_id}.{attempt}"


@dataclass(frozen=True, slots=True)
class StepMessage:
    run_id: str
    step_id: str
    attempt: int
    queue: str
    soft_time_limit: float  # the step's timeout; the hard limit adds the cancel grace
    outbox_id: int | None = None  # the outbox row to delete once published, where there is one

    @property
    def task_id(self) -> str:
        return task_id(self.run_id, self.step_id, self.attempt)

    def outbox_row(self) -> dict:
        """The values of its outbox row (the row's id is the database's)."""
        return dict(run_id=self.run_id, step_id=self.step_id, attempt=self.attempt, queue=self.queue,
                    soft_time_limit=self.soft_time_limit)
