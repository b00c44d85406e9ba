"""Output files: a step writes one, GET /runs/{id} lists it with a signed URL that serves it without
a token; a tampered or expired URL answers 401."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from orchestrator import artifacts
from tests.integration.conftest import publish, start, wait_run


def test_a_step_writes_a_file_served_by_its_signed_url(api, engine_processes, settings):
    workflow = publish(api, {"name": "report", "steps": [
        {"id": "write", "type": "tool", "tool": "file.write",
         "args": {"name": "report.txt", "text": "Report for {{ input.who }}"}}]})
    run = wait_run(api, start(api, workflow, {"who": "Ada"}))
    assert run["status"] == "succeeded", run
    assert run["steps"][0]["output"] == {"name": "report.txt", "size_bytes": len("Report for Ada")}
    [listed] = run["output_files"]
    assert listed["name"] == "report.txt" and listed["size_bytes"] == 14
    url = urlsplit(listed["url"])
    path = f"{url.path}?{url.query}"

    anonymous = api.client  # no Authorization header at all
    served = anonymous.get(path)
    assert served.status_code == 200 and served.data == b"Report for Ada"

    sig = url.query.split("sig=")[1]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for bad in (path.replace(sig, flipped), path.replace("report.txt", "report.txx"),
                path.replace("expires=", "expires=1"), url.path):
        answer = anonymous.get(bad)
        assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "unauthorized", bad

    # A URL signed 16 minutes ago (the clock we control is the signer's) has expired.
    old, _ = artifacts.signed_path(settings.secret_key, run["id"], "report.txt", time.time() - 16 * 60, 900)
    expired = anonymous.get(old)
    assert expired.status_code == 401 and "expired" in expired.get_json()["error"]["message"]
    # Signed right but gone: 404.
    missing, _ = artifacts.signed_path(settings.secret_key, run["id"], "nope.txt", time.time(), 900)
    assert anonymous.get(missing).status_code == 404
