"""compose.yaml and the Dockerfile agree with the code: services, commands and module paths.

No Docker here: the file is parsed with PyYAML, the `switchyard` commands are looked up in the click
group, and module paths are found with importlib without importing them (importing `api.wsgi` or
`workers.app` would build an app from the environment).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import yaml

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("postgres", "redis", "migrate", "api", "scheduler", "worker", "flower")
APP_SERVICES = ("migrate", "api", "scheduler", "worker", "flower")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def argv(command) -> list[str]:
    """A compose `command` (exec list or shell string) as a list of words."""
    return list(command) if isinstance(command, list) else shlex.split(command)


def dockerfile_cmd() -> list[str]:
    """The Dockerfile's last CMD, in exec (JSON) or shell form."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmds = [line.strip()[len("CMD"):].strip() for line in lines if line.strip().upper().startswith("CMD ")]
    assert cmds, "the Dockerfile has no CMD"
    cmd = cmds[-1]
    return json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)


def resolve(words: list[str]) -> click.Command:
    """The click command `switchyard <words>` runs, walking nested groups (e.g. `db upgrade`)."""
    command: click.Command = main
    path = ["switchyard"]
    for word in words:
        if not isinstance(command, click.Group) or word.startswith("-"):
            break
        sub = command.get_command(click.Context(command), word)
        assert sub is not None, f"`{' '.join(path)}` has no command {word!r}"
        command, path = sub, [*path, word]
    assert not isinstance(command, click.Group), f"`{' '.join(path)}` is a group, not a command"
    return command


def test_all_services_exist(services):
    assert set(SERVICES) <= set(services)


def test_app_services_share_the_settings(services):
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["SWITCHYARD_DATABASE_URL"] == "postgresql+psycopg://switchyard:switchyard@postgres:5432/switchyard"
        assert env["SWITCHYARD_BROKER_URL"] == "redis://redis:6379/0"
        # Interpolated by compose, which refuses to start without it.
        assert env["SWITCHYARD_SECRET_KEY"].startswith("${SWITCHYARD_SECRET_KEY:?")


def test_backing_services_have_healthchecks(services):
    assert "pg_isready" in " ".join(argv(services["postgres"]["healthcheck"]["test"]))
    assert "ping" in argv(services["redis"]["healthcheck"]["test"])
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")


def test_migrate_runs_once_after_postgres(services):
    migrate = services["migrate"]
    assert argv(migrate["command"]) == ["switchyard", "db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Quoted in YAML: a bare `no` would be the boolean False.
    assert migrate["restart"] == "no"


def test_api_runs_gunicorn_after_migrations(services):
    api = services["api"]
    words = argv(api["command"])
    # `switchyard api` is gunicorn in process, on every address, with its thread count known to the app.
    assert words[:2] == ["switchyard", "api"]
    assert words[words.index("--host") + 1] == "0.0.0.0" and words[words.index("--port") + 1] == "8080"
    assert int(words[words.index("--threads") + 1]) >= 1 and "--dev" not in words
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert any(str(p).endswith("8080") for p in api["ports"])


def test_scheduler_runs_switchyard_scheduler(services):
    assert argv(services["scheduler"]["command"]) == ["switchyard", "scheduler"]


def test_worker_runs_switchyard_worker_and_scales(services):
    worker = services["worker"]
    assert argv(worker["command"])[:2] == ["switchyard", "worker"]
    # A fixed container name would make `docker compose up --scale worker=N` fail.
    assert "container_name" not in worker


def test_flower_watches_the_worker_app(services):
    words = argv(services["flower"]["command"])
    assert words[0] == "celery" and "flower" in words
    app = words[words.index("--app") + 1] if "--app" in words else next(
        w.split("=", 1)[1] for w in words if w.startswith("--app=")
    )
    assert app == "workers.app"
    assert any(str(p).endswith("5555") for p in services["flower"]["ports"])


def test_every_switchyard_command_exists_in_the_cli(services):
    used = [argv(s["command"]) for s in services.values() if "command" in s]
    used.append(dockerfile_cmd())
    switchyard = [words[1:] for words in used if words and words[0] == "switchyard"]
    assert len(switchyard) >= 4  # migrate, scheduler, worker, and the image's default CMD
    for words in switchyard:
        command = resolve(words)
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in words:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in options, f"`switchyard {' '.join(words)}`: unknown option {word}"


def test_db_upgrade_is_a_nested_command():
    db = main.get_command(click.Context(main), "db")
    assert isinstance(db, click.Group)
    assert db.get_command(click.Context(db), "upgrade") is not None


@pytest.mark.parametrize("module", ["api.wsgi", "workers.app"])
def test_entry_modules_exist(module):
    assert importlib.util.find_spec(module) is not None


def test_dockerfile_runs_switchyard_as_a_user_with_flower_and_tracing():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "switchyard" in dockerfile_cmd()
    installed = re.search(r"pip install ['\"]?\.\[([a-z,]+)\]", text)
    assert installed, "the Dockerfile does not pip install the project with its extras"
    # Flower for the `flower` service; otel so tracing is one OTEL_TRACES_EXPORTER away (orchestrator/tracing.py).
    assert {"flower", "otel"} <= set(installed.group(1).split(","))
    assert any(line.strip().startswith("USER ") and "root" not in line for line in text.splitlines())


def test_flower_and_otel_extras_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(req.startswith("flower") for req in extras["flower"])
    # What orchestrator/tracing.py imports: the SDK, the OTLP exporter and each instrumentation.
    otel = {re.split(r"[<>=\[ ]", req, maxsplit=1)[0] for req in extras["otel"]}
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= otel
    assert {f"opentelemetry-instrumentation-{lib}" for lib in ("flask", "celery", "sqlalchemy", "redis", "httpx")} <= otel


def test_api_and_workers_share_the_output_files(services, compose):
    for name in ("api", "worker"):
        assert "artifacts:/var/lib/switchyard/artifacts" in services[name]["volumes"]
    assert "artifacts" in compose["volumes"]
