"""What every remote command shares: connection options, output for people or scripts, exit codes.

Exit codes: 0 done; 1 the run failed or was cancelled, or did not end within --timeout (commands that
wait for a run); 2 usage error (click's own); 3 the API refused (its code and message on stderr) or
could not be reached.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from switchyard.cli import config
from switchyard.client import ApiError, Client, SwitchyardClientError, WaitTimeout

EXIT_RUN_FAILED = 1
EXIT_API = 3


@dataclass
class Remote:
    """A command's connection and output mode."""

    client: Client
    as_json: bool
    json_lines: bool = False  # one JSON document a line (a stream of events), not indented

    def emit(self, value: Any, people: Callable[[], None], *, ids: Iterable[str] | None = None) -> None:
        """``value`` as JSON with --json; else ``ids`` one a line (--quiet), else what ``people`` prints."""
        if ids is not None:
            for one in ids:
                click.echo(one)
        elif self.as_json:
            click.echo(json.dumps(jsonable(value), indent=None if self.json_lines else 2, default=str))
        else:
            people()


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def remote(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command --url, --token, --profile and --json, a connected ``Remote`` as its first
    argument, and the exit code 3 with the API's refusal on stderr."""

    @click.option("--url", envvar="SWITCHYARD_URL", metavar="URL",
                  help="The API server's base URL, without /api/v1 [env SWITCHYARD_URL; default: the profile's, "
                       f"else {config.DEFAULT_URL}].")
    @click.option("--token", envvar="SWITCHYARD_TOKEN", metavar="TOKEN",
                  help="Bearer token [env SWITCHYARD_TOKEN; default: the profile's].")
    @click.option("--profile", envvar="SWITCHYARD_PROFILE", metavar="NAME",
                  help="Profile of ~/.config/switchyard/config.toml [env SWITCHYARD_PROFILE; default: default].")
    @click.option("--json", "as_json", is_flag=True, help="JSON for scripts instead of tables.")
    @functools.wraps(fn)
    def command(url: str | None, token: str | None, profile: str | None, as_json: bool, **kwargs: Any) -> Any:
        try:
            target = config.resolve(url, token, profile)
            client = Client(target.url, target.token)
        except (config.ConfigError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        try:
            with client:
                return fn(Remote(client, as_json), **kwargs)
        except ApiError as exc:
            refused(exc)
        except WaitTimeout as exc:
            click.echo(f"error: {exc}\nWhat to do: it goes on; watch it with `switchyard runs watch "
                       f"{exc.run.id if exc.run else 'RUN_ID'}`", err=True)
            sys.exit(EXIT_RUN_FAILED)
        except SwitchyardClientError as exc:
            click.echo(f"error: {exc}\nWhat to do: check that the API is up at {client.url} "
                       f"(the URL comes from {target.source}).", err=True)
            sys.exit(EXIT_API)

    return command


quiet = click.option("-q", "--quiet", is_flag=True, help="Only the ids, one a line (for shell scripts).")


def refused(exc: ApiError) -> None:
    """The API's refusal on stderr, with what to do where the code says it; exit 3."""
    click.echo(f"error: {exc.code}: {exc.message}", err=True)
    if exc.details:
        click.echo(f"details: {json.dumps(exc.details, default=str)}", err=True)
    hint = HINTS.get(exc.code)
    if hint:
        click.echo(f"What to do: {hint}", err=True)
    sys.exit(EXIT_API)


HINTS = {
    "invalid_request": "fix what the message and details name, and send it again",
    "not_found": "check the id and the token's tenant (switchyard runs list, switchyard workflows list)",
    "invalid_transition": "the action does not apply to the run's status now (details: allowed_from); "
                          "switchyard runs get shows it",
    "workflow_archived": "publish a new version of the workflow to restore it",
    "unauthorized": "pass a valid token with --token or SWITCHYARD_TOKEN (switchyard token create prints one)",
    "forbidden": "use a token with a higher role (operator to act on runs, admin to publish)",
    "rate_limited": "wait and try again",
    "unavailable": "the API's database does not answer; try again shortly",
}


def json_arg(value: str | None, name: str) -> Any:
    """A JSON option: the JSON itself, or ``@path`` to a file holding it; BadParameter if not JSON."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}", param_hint=name) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc}); quote it for the shell, e.g. '{{\"key\": 1}}'",
                                 param_hint=name) from None


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table for people on stdout (rich; no colours when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    grid = Table(*columns, title=title, title_justify="left", box=None, header_style="bold")
    for row in rows:
        grid.add_row(*("-" if cell is None else str(cell) for cell in row))
    Console(soft_wrap=True).print(grid)


def short(value: Any, width: int = 60) -> str:
    """A JSON value on one line, cut to ``width``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
