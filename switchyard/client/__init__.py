"""The Python client of the Switchyard API: ``Client`` (synchronous) and ``AsyncClient`` (asyncio).

    from switchyard.client import Client

    with Client("http://127.0.0.1:8080", token) as client:
        run = client.runs.start("triage", {"ticket": "My invoice is wrong"})
        print(run.wait(timeout=60).status)

See docs/cli.md for the whole tour.
"""

from __future__ import annotations

from switchyard.client import models
from switchyard.client.aio import AsyncClient
from switchyard.client.errors import (
    ApiError,
    Forbidden,
    IdempotencyConflict,
    InternalError,
    InvalidTransition,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RuntimeNotApplicable,
    SwitchyardClientError,
    Unauthorized,
    Unavailable,
    Unreachable,
    ValidationFailed,
    WaitTimeout,
    WorkflowArchived,
)
from switchyard.client.models import TERMINAL_RUN, Event, Run, RunSummary, Step, StepError
from switchyard.client.sync import Client

__all__ = [
    "TERMINAL_RUN", "ApiError", "AsyncClient", "Client", "Event", "Forbidden", "IdempotencyConflict",
    "InternalError", "InvalidTransition", "MethodNotAllowed", "NotFound", "PayloadTooLarge", "RateLimited", "Run",
    "RunSummary", "RuntimeNotApplicable", "Step", "StepError", "SwitchyardClientError", "Unauthorized",
    "Unavailable", "Unreachable", "ValidationFailed", "WaitTimeout", "WorkflowArchived", "models",
]
