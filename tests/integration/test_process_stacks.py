"""The integration harness's diagnosis of a process that does not stop in time (Processes.stop): its
threads' stacks, read by py-spy from the live process, in a file beside its log."""

from __future__ import annotations

import sys

from tests.integration.conftest import Processes, wait_for


def test_a_live_processs_stacks_are_written_beside_its_log(settings, artifacts):
    procs = Processes(settings, artifacts)
    proc = procs.start("stacks-http", "--bind", "127.0.0.1", "0", module="http.server")
    try:
        wait_for(lambda: "Serving HTTP" in procs.log_tail("stacks-http"), 30, "the server to listen")
        path = procs.dump_stacks("stacks-http", proc.pid)
    finally:
        procs.stop("stacks-http", kill=True)
    assert path is not None, f"py-spy is not installed beside {sys.executable}: `make install` installs it"
    stacks = path.read_text()
    assert f"--- pid {proc.pid}" in stacks and "serve_forever" in stacks, stacks
