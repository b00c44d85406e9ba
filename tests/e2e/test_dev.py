"""`switchyard dev` — what `make run` starts — on embedded defaults: SQLite and the filesystem broker.

Runs the command as a user would, in an empty directory, then runs the curl line it prints and
follows the run to `succeeded`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dev(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "dev", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    yield proc, lines, ready, tmp_path
    exited = proc.poll()
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    # Shown by pytest for a failed test only: what `switchyard dev` and its processes printed.
    print(f"switchyard dev {'exited with ' + str(exited) if exited is not None else 'was running'} at the end; "
          f"its output:\n{''.join(lines)}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl to run the printed command")
def test_dev_serves_health_within_60s_and_its_curl_line_runs_the_sample_to_success(dev):
    proc, lines, ready, folder = dev
    started = time.monotonic()
    assert ready.wait(60), "switchyard dev did not come up within 60 s:\n" + "".join(lines)
    assert time.monotonic() - started < 60
    output = "".join(lines)
    base = re.search(r"Switchyard is up at (\S+)", output).group(1)
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert (folder / ".switchyard" / "switchyard.db").exists()

    curl = next(line.strip() for line in lines if line.strip().startswith("curl -s -X POST"))
    created = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True).stdout)
    token = re.search(r"token: (\S+)", output).group(1)

    deadline = time.monotonic() + 60
    while True:
        run = httpx.get(f"{base}/runs/{created['id']}", headers={"Authorization": f"Bearer {token}"}).json()
        if run["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert run["status"] == "succeeded", run
    assert {s["status"] for s in run["steps"]} == {"succeeded"}
    assert run["usage"]["llm_calls"] >= 1

    # The live stream works without Redis too: each stream polls the database (embedded broker).
    headers = {"Authorization": f"Bearer {token}"}
    again = httpx.post(f"{base}/runs", headers=headers, json={"workflow_id": "triage", "input": {"ticket": "x"}}).json()
    seen = []
    with httpx.stream("GET", f"{base}/runs/{again['id']}/events/stream", headers=headers, timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("id: "):
                seen.append(int(line[4:]))
    logged = httpx.get(f"{base}/runs/{again['id']}/events", headers=headers).json()["events"]
    assert seen == [e["seq"] for e in logged] and logged[-1]["type"] == "run_succeeded"


def test_dev_stops_everything_and_says_which_process_exited_when_one_does(dev):
    proc, lines, ready, folder = dev
    assert ready.wait(60), "switchyard dev did not come up within 60 s:\n" + "".join(lines)
    found = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "orchestrator.cli scheduler"],
                           capture_output=True, text=True)
    [scheduler] = found.stdout.split()
    os.kill(int(scheduler), 9)
    assert proc.wait(timeout=30) == 1
    deadline = time.monotonic() + 10
    while not any("exited with code" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)  # the reader thread may still be taking the last lines
    output = "".join(lines)
    assert "`scheduler` exited with code -9" in output and "the others were stopped" in output, output
