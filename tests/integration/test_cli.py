"""The `switchyard` command line as a user runs it: a subprocess against the real API (served over
HTTP) and real workers. Exit codes: 0 done, 1 the run failed, 2 usage, 3 the API refused."""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchyard.client import Client
from tests.integration.conftest import ROOT, served, unique, wait_for, wait_no_task_of

pytestmark = pytest.mark.usefixtures("engine_processes")

YAML_DEFINITION = """\
name: CLI chain
input_schema:
  type: object
  required: [text]
  properties:
    text: {type: string}
steps:
  - id: first
    type: tool
    tool: echo
    args: {text: "{{ input.text }}"}
  - id: second
    type: tool
    tool: echo
    needs: [first]
    args: {text: "{{ steps.first.output.text }}!"}
"""
FAILING = {"name": "CLI failing", "steps": [
    {"id": "boom", "type": "tool", "tool": "fail", "args": {"message": "it broke"}, "retry": {"max_attempts": 1}}]}
REVIEWED = {"name": "CLI reviewed", "steps": [
    {"id": "draft", "type": "tool", "tool": "echo", "args": {"text": "draft"}},
    {"id": "review", "type": "approval", "needs": ["draft"], "prompt": "Ship it?"},
    {"id": "ship", "type": "tool", "tool": "echo", "needs": ["review"], "args": {"text": "shipped"}},
]}


@pytest.fixture(scope="module")
def url(settings) -> Iterator[str]:
    from api import create_app

    with served(create_app(settings.model_copy(update={"stream_keepalive_s": 0.5}))) as base:
        yield base


@pytest.fixture
def switchyard(url, tokens, tmp_path):
    """Run `switchyard ARGS` with SWITCHYARD_URL and SWITCHYARD_TOKEN set (an empty profile file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(SWITCHYARD_URL=url, SWITCHYARD_TOKEN=tokens["admin"], SWITCHYARD_CONFIG=str(tmp_path / "none.toml"),
               PYTHONPATH=str(ROOT), COLUMNS="200")

    def run(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env={**env, **(extra_env or {})},
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    return run


def test_publish_from_yaml_then_start_with_wait_succeeds_and_a_failing_run_exits_1(switchyard, tmp_path):
    workflow_id = unique("cli")
    (tmp_path / "chain.yaml").write_text(YAML_DEFINITION)
    published = switchyard("workflows", "publish", workflow_id, "-f", "chain.yaml")
    assert published.returncode == 0, published.stderr
    assert f"published {workflow_id} version 1" in published.stdout

    done = switchyard("runs", "start", workflow_id, "--input", '{"text": "hi"}', "--wait", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded" and run["steps"][1]["output"] == {"text": "hi!"}

    (tmp_path / "input.json").write_text('{"text": "from a file"}')
    people = switchyard("runs", "start", workflow_id, "--input", "@input.json", "--wait")
    assert people.returncode == 0 and "succeeded" in people.stdout and "from a file!" in people.stdout

    failing = unique("cli")
    (tmp_path / "failing.json").write_text(json.dumps(FAILING))
    assert switchyard("workflows", "publish", failing, "-f", "failing.json").returncode == 0
    failed = switchyard("runs", "start", failing, "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stdout and "it broke" in failed.stdout

    listed = switchyard("runs", "list", "--workflow", workflow_id, "--json")
    assert listed.returncode == 0
    runs = json.loads(listed.stdout)
    assert [r["id"] for r in runs] == [people_id(people), run["id"]]
    assert {r["status"] for r in runs} == {"succeeded"}
    assert json.loads(switchyard("runs", "list", "--status", "failed", "--json").stdout)[0]["workflow"]["id"] == failing


def people_id(result: subprocess.CompletedProcess) -> str:
    """The run id at the start of `runs start --wait`'s first line for people."""
    return result.stdout.split()[0]


def test_approve_from_the_command_line_and_watch_the_run_to_its_end(switchyard, url, tokens, tmp_path):
    workflow_id = unique("cli")
    (tmp_path / "reviewed.json").write_text(json.dumps(REVIEWED))
    assert switchyard("workflows", "publish", workflow_id, "-f", "reviewed.json").returncode == 0
    started = switchyard("runs", "start", workflow_id, "--json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["id"]

    with Client(url, tokens["admin"]) as client:
        wait_for(lambda: client.runs.get(run_id).waiting_on == "approval", 30, "the run to wait on its approval")
    inbox = json.loads(switchyard("approvals", "list", "--json").stdout)
    approval = next(a for a in inbox if a["run_id"] == run_id)
    assert approval["prompt"] == "Ship it?" and approval["step_id"] == "review"

    # The watch starts while the run waits, and follows it to its end once the approval lands.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(SWITCHYARD_URL=url, SWITCHYARD_TOKEN=tokens["viewer"], PYTHONPATH=str(ROOT), COLUMNS="200",
               SWITCHYARD_CONFIG=str(tmp_path / "none.toml"))
    watch = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "runs", "watch", run_id], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        approved = switchyard("approvals", "approve", run_id, approval["id"], "--comment", "ship it",
                              extra_env={"SWITCHYARD_TOKEN": tokens["operator"]})
        assert approved.returncode == 0, approved.stderr
        assert f"{approval['id']}: approve" in approved.stdout
        out, err = watch.communicate(timeout=90)
    finally:
        watch.kill()
    assert watch.returncode == 0, out + err
    assert "step_started ship" in out and "run_succeeded" in out
    last = out.splitlines()
    assert any(run_id in line and "succeeded" in line and "3/3 steps settled" in line for line in last)
    assert any(line.split()[:3] == ["ship", "tool", "succeeded"] for line in last)


ASKING = {"name": "CLI asking", "steps": [
    {"id": "ask", "type": "question", "question": "Which region?"},
    {"id": "paid", "type": "wait_event", "needs": ["ask"], "correlation_key": "order-{{ run.id }}", "timeout_s": 60},
    {"id": "use", "type": "tool", "tool": "echo", "needs": ["paid"],
     "args": {"region": "{{ steps.ask.output.answer }}"}},
]}


def test_answer_a_question_and_send_the_event_a_run_waits_for(switchyard, tmp_path):
    workflow_id = unique("cli")
    (tmp_path / "asking.json").write_text(json.dumps(ASKING))
    assert switchyard("workflows", "publish", workflow_id, "-f", "asking.json").returncode == 0
    run_id = switchyard("runs", "start", workflow_id, "-q").stdout.strip()
    waiting = switchyard("runs", "wait", run_id, "--until", "waiting", "--timeout", "30", "--json")
    assert waiting.returncode == 0 and json.loads(waiting.stdout)["waiting_on"] == "question"
    question_id = switchyard("questions", "list", "--run", run_id, "-q").stdout.strip()
    assert question_id.startswith("q_")
    answered = switchyard("questions", "answer", run_id, question_id, "eu-west")
    assert answered.returncode == 0 and f"{question_id}: answered" in answered.stdout

    def waits_on_the_event():
        run = json.loads(switchyard("runs", "get", run_id, "--json").stdout)
        return run["waiting_on"] == "event"

    wait_for(waits_on_the_event, 30, "the run to wait on its event")
    sent = switchyard("events", "send", "payment.received", "--payload", '{"amount": 5}', "--key", f"order-{run_id}")
    assert sent.returncode == 0 and "delivered to 1 step(s)" in sent.stdout and f"{run_id} paid" in sent.stdout
    done = switchyard("runs", "wait", run_id, "--timeout", "60", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["output"] == {"use": {"region": "eu-west"}}


def test_refusals_exit_3_with_the_code_on_stderr_and_usage_errors_exit_2(switchyard, tokens, tmp_path):
    missing = switchyard("runs", "get", "run_nope")
    assert missing.returncode == 3 and missing.stderr.startswith("error: not_found: run 'run_nope' not found")
    assert missing.stdout == ""

    empty = switchyard("workflows", "publish", unique("cli"), "-f", "-")
    assert empty.returncode == 2 and "must hold one definition" in empty.stderr  # empty standard input
    forbidden = switchyard("runs", "start", "whatever", extra_env={"SWITCHYARD_TOKEN": tokens["viewer"]})
    assert forbidden.returncode == 3 and "error: forbidden" in forbidden.stderr and "What to do" in forbidden.stderr

    archived = unique("cli")
    (tmp_path / "failing.json").write_text(json.dumps(FAILING))
    assert switchyard("workflows", "publish", archived, "-f", "failing.json").returncode == 0
    assert switchyard("workflows", "archive", archived).stdout == f"archived {archived}\n"
    refused = switchyard("runs", "start", archived)
    assert refused.returncode == 3 and refused.stderr.startswith("error: workflow_archived: ")
    assert archived in [w["id"] for w in json.loads(switchyard("workflows", "list", "--archived", "--json").stdout)]

    bad_input = switchyard("runs", "start", "whatever", "--input", "{not json")
    assert bad_input.returncode == 2 and "--input" in bad_input.stderr
    assert switchyard("runs", "start").returncode == 2
    assert switchyard("runs", "start", "x", "--wait", "--follow").returncode == 2
    nowhere = switchyard("workflows", "list", extra_env={"SWITCHYARD_URL": "http://127.0.0.1:9"})
    assert nowhere.returncode == 3 and "http://127.0.0.1:9/api/v1" in nowhere.stderr


def test_a_profile_file_supplies_url_and_token(switchyard, url, tokens, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[ci]\nurl = "{url}"\ntoken = "{tokens["viewer"]}"\n')
    env = {"SWITCHYARD_URL": "", "SWITCHYARD_TOKEN": "", "SWITCHYARD_CONFIG": str(config)}
    listed = switchyard("workflows", "list", "--profile", "ci", "--json", extra_env=env)
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)
    unknown = switchyard("workflows", "list", "--profile", "nope", extra_env=env)
    assert unknown.returncode == 2 and "no profile 'nope' (profiles: ci)" in unknown.stderr


def test_version_and_the_remote_commands_in_help(switchyard):
    version = switchyard("--version")
    assert version.returncode == 0 and version.stdout.startswith("switchyard, version ")
    help_text = switchyard("--help").stdout
    for group in ("workflows", "runs", "approvals", "questions", "events", "schedules"):
        assert f"  {group} " in help_text
    runs_help = switchyard("runs", "--help").stdout
    for command in ("start", "list", "get", "watch", "events", "pause", "resume", "cancel", "retry", "rerun", "fork"):
        assert f"  {command} " in runs_help




def test_a_step_cancelled_on_a_thread_pool_worker_stops_without_a_traceback(engine_processes, url, tokens, settings):
    """`switchyard dev` runs its worker with --pool threads: a cancel there used to log Celery's
    NotImplementedError (kill_job) with a traceback; the step stops at its cooperative flag."""
    from orchestrator.broker import make_celery

    queue = unique("threads")
    worker = engine_processes.start("threads-worker", "worker", "--pool", "threads", "--queues", queue,
                                    "--concurrency", "2")
    name = f"switchyard-{worker.pid}@{socket.gethostname()}"
    celery = make_celery(settings)
    try:
        wait_for(lambda: worker.poll() is None and celery.control.ping(destination=[name], timeout=0.5), 120,
                 f"the threads worker to answer ping (its log: {engine_processes.folder}/threads-worker.log)")
        with Client(url, tokens["admin"]) as client:
            workflow_id = unique("cli")
            client.workflows.publish(workflow_id, {"name": "nap", "steps": [
                {"id": "nap", "type": "tool", "tool": "sleep", "args": {"seconds": 30}, "queue": queue}]})
            run = client.runs.start(workflow_id)
            wait_for(lambda: client.runs.get(run.id).step("nap").status == "running", 60, "the nap to run")
            assert client.runs.cancel(run.id).status == "cancelled"
            wait_no_task_of(settings, run.id, 30, "the thread pool to let the cancelled nap go")
            assert client.runs.get(run.id).step("nap").status == "cancelled"
    finally:
        engine_processes.stop("threads-worker")
    log = engine_processes.log_tail("threads-worker", 400)
    assert "NotImplementedError" not in log and "kill_job" not in log, log[-3000:]


# --- docs/cli.md: every example runs ------------------------------------------------------------------

def doc_blocks(language: str) -> list[str]:
    """The code blocks of ``language`` in docs/cli.md, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", (ROOT / "docs" / "cli.md").read_text(), re.S | re.M)


def test_the_examples_of_docs_cli_md_run_as_shown(url, tokens, tmp_path):
    from switchyard.cli import config

    (profiles,) = doc_blocks("toml")
    (tmp_path / "config.toml").write_text(profiles)
    target = config.resolve(None, None, "staging", {"SWITCHYARD_CONFIG": str(tmp_path / "config.toml")})
    assert (target.url, target.token) == ("https://switchyard.staging.example.com", "sy_a-staging-operator-token")

    (definition,) = doc_blocks("yaml")
    (tmp_path / "hello.yaml").write_text(definition)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(SWITCHYARD_URL=url, SWITCHYARD_TOKEN=tokens["admin"], SWITCHYARD_CONFIG=str(tmp_path / "none.toml"),
               PYTHONPATH=str(ROOT), COLUMNS="200", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    outputs = []
    for block in doc_blocks("sh"):
        done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{block}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{block}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    published, decided, failing, controlled, forked, events_and_schedules, scripted = outputs
    assert "published hello version" in published and "Send the greeting?" in published  # workflows get
    assert "run_succeeded" in decided and ": approve; run " in decided and "Hello Ada, sent" in decided
    assert "no luck" in failing and "the run failed: exit 1" in failing
    actions = [line.split(": ", 1)[1] for line in controlled.splitlines() if re.match(r"run_\S+: ", line)]
    assert actions[0] == "paused" and actions[1] in ("running", "waiting")
    assert actions[2:5] == ["cancelled", "queued", "cancelled"] and "(a new run of run_" in actions[5]
    assert re.search(r"greet +succeeded ×1 +succeeded \(reused\)", forked), forked
    assert re.search(r"send +succeeded ×1 +succeeded ×1 ", forked) and "first divergence: none" in forked
    assert "retry: 1 matched, would apply to 1, skipped 0" in forked
    assert "delivered to 0 step(s)" in events_and_schedules and "hello/nightly: 0 3 * * *" in events_and_schedules
    assert isinstance(json.loads(scripted), list)

    sync_example, async_example = doc_blocks("python")
    printed = subprocess.run([sys.executable, "-c", sync_example], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == "succeeded {'text': 'Hello Linus, sent'}"
    assert lines[1] == "invalid_transition succeeded ['running', 'waiting']"
    newest = ast.literal_eval(lines[2])  # Ada's, Grace's, its rerun and Linus's runs at least, five at most
    assert 4 <= len(newest) <= 5 and len(set(newest)) == len(newest) and all(r.startswith("run_") for r in newest)
    printed = subprocess.run([sys.executable, "-c", async_example], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split() == ["failed", "no", "luck", "run_failed"]


def test_switchyard_dev_keeps_one_admin_token_across_restarts(tmp_path):
    """`switchyard dev` makes its admin token once and prints the same one at every start while it
    is live; revoked (or for another tenant), it makes a new one."""
    from orchestrator import cli
    from orchestrator.db import migrate
    from orchestrator.db import repository as repo
    from orchestrator.db.session import make_engine, make_sessionmaker, transaction
    from orchestrator.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    migrate.upgrade(settings)
    first, reused = cli._dev_token(settings, "demo")
    assert not reused and (tmp_path / "data" / "dev-token").read_text().strip() == first
    assert oct((tmp_path / "data" / "dev-token").stat().st_mode & 0o777) == "0o600"
    assert cli._dev_token(settings, "demo") == (first, True)
    other, reused = cli._dev_token(settings, "another-tenant")
    assert other != first and not reused
    with transaction(make_sessionmaker(make_engine(settings))) as session:
        repo.revoke_token(session, None, repo.find_token(session, other).id)
    again, reused = cli._dev_token(settings, "another-tenant")
    assert again not in (first, other) and not reused
