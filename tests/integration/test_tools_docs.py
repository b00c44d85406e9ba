"""The example of docs/tools.md, read from the document and run: the package `weather_tools` is built from
its blocks (the module, and the entry point of its pyproject.toml as installed metadata), its own tests
run, the API refuses its wrong literal arguments at publish, and its workflow runs on a worker of its own
that has the package, where an agent's model is offered the tool as the page shows."""

from __future__ import annotations

import json
import re
import socket
import sys
import tomllib

import pytest

from orchestrator import registry
from tests.integration.conftest import ROOT, by_id, publish, start, unique, wait_for, wait_run

DOC = (ROOT / "docs" / "tools.md").read_text()


def block(kind: str) -> str:
    """The one code block of the page whose info string is ``kind`` (```python tool, ```toml, …)."""
    (found,) = re.findall(rf"^```{kind}\n(.*?)^```", DOC, re.S | re.M)
    return found


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """weather_tools on a folder of its own: the module, and the entry points of its pyproject.toml in a
    dist-info, as `pip install` would leave them; this process sees it until the module ends."""
    folder = tmp_path_factory.mktemp("weather")
    (folder / "weather_tools").mkdir()
    (folder / "weather_tools" / "__init__.py").write_text(block("python tool"))
    project = tomllib.loads(block("toml"))["project"]
    info = folder / f"weather_tools-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = project["entry-points"]["switchyard.tools"]
    (info / "entry_points.txt").write_text("[switchyard.tools]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    sys.path.insert(0, str(folder))
    _forget_tools()
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("weather_tools", None)
    _forget_tools()


def _forget_tools() -> None:
    """The registry reads the entry points once per process: make it read them again."""
    for cached in (registry.project_tool_names, registry.project_tool, registry._entry_points):
        cached.cache_clear()


def test_the_pages_own_tests_pass(package):
    tests: dict = {}
    exec(compile(block("python test"), "docs/tools.md", "exec"), tests)  # noqa: S102 - the page's own example
    ran = [name for name in tests if name.startswith("test_")]
    for name in ran:
        tests[name]()
    assert len(ran) == 3


def test_wrong_literal_arguments_are_refused_at_publish_as_the_page_says(api, package):
    definition = {"name": "t", "steps": [
        {"id": "w", "type": "tool", "tool": "weather.forecast", "args": {"city": "Berlin", "days": "three"}}]}
    answer = api.put(f"/workflows/{unique('wf')}", json=definition)
    assert answer.status_code == 400, answer.get_json()
    problem = ("steps.0.args.days: the tool 'weather.forecast' takes an integer here, got \"three\"; fix the value, "
               "or make it a template (checked when the step runs)")
    assert answer.get_json()["error"]["details"]["problems"] == [problem]
    assert " ".join(problem.split()) in " ".join(DOC.split())


@pytest.fixture
def weather_worker(engine_processes, settings, package):
    """A worker that has the package, on a queue of its own."""
    from orchestrator.broker import make_celery

    queue = unique("weather")
    worker = engine_processes.start("weather-worker", "worker", "--pool", "solo", "--queues", queue,
                                    env={"PYTHONPATH": f"{ROOT}:{package}"})
    name = f"switchyard-{worker.pid}@{socket.gethostname()}"
    celery = make_celery(settings)
    try:
        wait_for(lambda: worker.poll() is None and celery.control.ping(destination=[name], timeout=0.5), 120,
                 f"the weather worker to answer ping (its log: {engine_processes.folder}/weather-worker.log)")
        yield queue
    finally:
        engine_processes.stop("weather-worker")


def test_the_pages_workflow_runs_and_its_agent_sees_the_tool(api, weather_worker, fake_llm):
    definition = json.loads(block("json workflow"))
    for step in definition["steps"]:
        step["queue"] = weather_worker
    workflow = publish(api, definition)
    seen = len(fake_llm.requests)
    run = wait_run(api, start(api, workflow, {"city": "Berlin"}), timeout=90)
    assert run["status"] == "succeeded", run
    steps = by_id(run)
    assert steps["weather"]["output"] == {"city": "berlin", "days": ["sunny", "cloudy", "rain"]}

    # The model was offered the tool as the page shows; its call without a city came back as the error
    # invalid_arguments, and the agent went on.
    offered = fake_llm.requests[seen]["body"]["tools"]
    assert offered == [json.loads(block("json agent-sees"))]
    (call,) = steps["advice"]["output"]["tool_calls"]
    assert call["result"]["code"] == "invalid_arguments" and "city" in call["result"]["error"], call

    failed = wait_run(api, start(api, workflow, {"city": "Atlantis"}), timeout=90)
    assert (failed["status"], failed["error"]["code"]) == ("failed", "unknown_city"), failed
    assert by_id(failed)["weather"]["attempt"] == 1
