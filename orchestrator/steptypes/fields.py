"""The fields every step type's definition shares, and the scripted model replies of llm/agent steps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.retry import RetryPolicy

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySpec(StrictModel):
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_delay_s: float = Field(default=1.0, ge=0, le=3600)
    max_delay_s: float = Field(default=60.0, ge=0, le=86400)
    jitter: bool = True

    def policy(self) -> RetryPolicy:
        return RetryPolicy(**self.model_dump())


class Concurrency(StrictModel):
    """A concurrency key (docs/flow-control.md): at most ``limit`` holders of the key rendered from the
    template ``key`` at once (a workflow's: its active runs; a step's: the tenant's running attempts)."""

    key: str = Field(min_length=1, max_length=500)
    limit: int = Field(ge=1, le=100_000)


class StepFields(StrictModel):
    """What every step has; a type's model adds ``type: Literal[its name]`` and its own fields."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    needs: list[str] = []
    retry: RetrySpec | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    queue: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    description: str | None = None
    # Control flow: an expression (Jinja2, no braces) that must be truthy for the step to run; when a
    # step with needs may run; whether its failing for good fails the run or lets it go on.
    when: str | None = Field(default=None, min_length=1, max_length=2000)
    join: Literal["all_succeeded", "any_succeeded", "all_done"] = "all_succeeded"
    on_failure: Literal["fail_run", "continue"] = "fail_run"
    # For-each: an expression giving a list; the step runs once per item (``item`` and ``index`` in
    # its templates), at most ``max_parallel`` at once, and succeeds if ``min_succeeded`` did (default all).
    for_each: str | None = Field(default=None, min_length=1, max_length=2000)
    max_parallel: int | None = Field(default=None, ge=1, le=1000)
    min_succeeded: int | None = Field(default=None, ge=0)
    # Flow control: at most ``limit`` attempts of the tenant's steps with this rendered key run at once.
    concurrency: Concurrency | None = None


class ScriptedTurn(StrictModel):
    """One reply of the scripted model: text, tool calls, or both."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = []
    tokens_in: int | None = None
    tokens_out: int | None = None


ScriptEntry = str | ScriptedTurn
