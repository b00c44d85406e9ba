"""Log lines name the run they concern: bound fields, extra fields, JSON and text formats."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from orchestrator import logs


@pytest.fixture
def capture():
    """Records of the 'switchyard.test' logger, formatted by ``formatter``."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    logger = logging.getLogger("switchyard.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def use(formatter):
        handler.setFormatter(formatter)
        return logger, lines

    yield use
    logger.removeHandler(handler)


def test_json_lines_carry_the_bound_run_and_nothing_outside_the_block(capture):
    log, lines = capture(logs.JsonFormatter())
    with logs.bound(run_id="run_1", step_id="a", attempt=2, tenant="acme"):
        log.info("attempt %s started", 2)
        with logs.bound(step_id="b"):
            log.warning("inner")
    log.info("outside")
    first, inner, outside = (json.loads(line) for line in lines)
    assert first["message"] == "attempt 2 started" and first["level"] == "info" and first["logger"] == "switchyard.test"
    assert {k: first[k] for k in logs.RUN_FIELDS} == {"tenant": "acme", "run_id": "run_1", "step_id": "a", "attempt": 2}
    assert inner["step_id"] == "b" and inner["run_id"] == "run_1"
    assert not set(logs.RUN_FIELDS) & set(outside)
    assert first["ts"].endswith("Z") and isinstance(first["pid"], int)


def test_extra_fields_win_and_exceptions_are_kept(capture):
    log, lines = capture(logs.JsonFormatter())
    with logs.bound(run_id="run_bound"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed", extra={"run_id": "run_extra", "attempt": 1})
    line = json.loads(lines[0])
    assert line["run_id"] == "run_extra" and line["attempt"] == 1
    assert "RuntimeError: boom" in line["exc"]


def test_text_lines_name_the_run(capture):
    log, lines = capture(logs.TextFormatter())
    with logs.bound(run_id="run_1", tenant="acme"):
        log.info("hello")
    log.info("plain")
    assert lines[0].endswith("switchyard.test: hello [tenant=acme run_id=run_1]")
    assert lines[1].endswith("switchyard.test: plain")


def test_threads_do_not_share_bindings(capture):
    log, lines = capture(logs.JsonFormatter())
    with logs.bound(run_id="run_main"):
        worker = threading.Thread(target=lambda: log.info("from a thread"))
        worker.start()
        worker.join()
    assert "run_id" not in json.loads(lines[0])
