"""`switchyard api` as a real process: gunicorn in process, its worker processes, a graceful SIGTERM, and
the error when the port is taken. `switchyard api --dev` (werkzeug) is what `switchyard dev` starts: see
tests/e2e/test_dev.py."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import httpx
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from tests.integration.conftest import Processes, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, as `ps` lists them."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(word) for word in out.split()]


@pytest.fixture
def procs(settings, tmp_path):
    procs = Processes(settings, tmp_path)
    yield procs
    procs.stop_all()


def test_api_serves_with_gunicorn_workers_and_stops_on_sigterm(procs):
    port = free_port()
    proc = procs.start("api", "api", "--port", str(port), "--workers", "2", "--threads", "2")
    base = f"http://127.0.0.1:{port}/api/v1"

    def healthy():
        if proc.poll() is not None:
            pytest.fail(f"switchyard api exited during start-up:\n{procs.log_tail('api')}")
        try:
            response = httpx.get(f"{base}/healthz", timeout=1)
        except httpx.HTTPError:
            return None
        return response if response.status_code == 200 else None

    response = wait_for(healthy, 30, f"GET {base}/healthz to answer 200", interval=0.2)
    assert response.json() == {"status": "ok"}
    assert response.headers["Server"].startswith("gunicorn"), response.headers
    # The arbiter is the process we started; its two workers are its children.
    workers = wait_for(lambda: len(children(proc.pid)) == 2 and children(proc.pid), 10, "two gunicorn workers")
    assert len(workers) == 2
    log = procs.log_tail("api")
    assert f"serving the Switchyard API at http://127.0.0.1:{port}/api/v1 with gunicorn: 2 worker processes " \
           f"× 2 threads" in log, log

    started = time.monotonic()
    proc.terminate()
    assert proc.wait(timeout=15) == 0, procs.log_tail("api")
    assert time.monotonic() - started < 15
    procs.procs.pop("api")
    for pid in workers:  # the workers went with the arbiter, none left behind
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 5, f"worker {pid} to exit")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_api_says_what_to_do_when_the_port_is_taken(procs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = procs.start("taken", "api", "--port", str(port), "--workers", "1")
        assert proc.wait(timeout=30) == 1
    procs.procs.pop("taken")
    log = procs.log_tail("taken")
    assert f"port {port} on 127.0.0.1 is already in use" in log and "--port" in log, log


def test_api_help_lists_the_options():
    result = CliRunner().invoke(main, ["api", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--workers", "--threads", "--dev", "--no-reload"):
        assert option in result.output
    assert "2 × CPU cores + 1, at most 8" in " ".join(result.output.split())


@pytest.mark.parametrize("args", [["--dev", "--workers", "2"], ["--dev", "--threads", "2"], ["--no-reload"]])
def test_api_refuses_options_that_do_not_apply(args):
    result = CliRunner().invoke(main, ["api", *args])
    assert result.exit_code == 2, result.output
