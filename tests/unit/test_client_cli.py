"""The command line's pure parts: where it finds the API, and `runs watch`'s board."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from switchyard.cli import config, watch
from switchyard.cli.runs import said
from switchyard.client.models import Event, Run


def test_a_flag_or_its_variable_wins_over_the_profile_which_wins_over_the_default(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[default]\nurl = "http://a:1"\ntoken = "sy_a"\n[ci]\nurl = "http://b:2"\ntoken = "sy_b"\n')
    env = {"SWITCHYARD_CONFIG": str(path)}
    default = config.resolve(None, None, None, env)
    assert (default.url, default.token) == ("http://a:1", "sy_a")
    ci = config.resolve(None, None, "ci", env)
    assert (ci.url, ci.token) == ("http://b:2", "sy_b") and "profile ci" in ci.source
    flagged = config.resolve("http://c:3", None, "ci", env)
    assert (flagged.url, flagged.token) == ("http://c:3", "sy_b")
    assert config.resolve("http://c:3", "sy_c", "ci", env).token == "sy_c"


def test_without_a_file_the_default_url_and_no_token(tmp_path):
    target = config.resolve(None, None, None, {"SWITCHYARD_CONFIG": str(tmp_path / "none.toml")})
    assert (target.url, target.token) == (config.DEFAULT_URL, None)


def test_the_file_is_found_under_xdg_config_home(tmp_path):
    assert config.config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "switchyard" / "config.toml"


@pytest.mark.parametrize(("text", "profile", "message"), [
    (None, "ci", "does not exist; create it with a [ci] table"),
    ('[default]\nurl = "x"\n', "ci", "has no profile 'ci' (profiles: default)"),
    ("not = [toml", None, "cannot read"),
    ('default = "x"\n', None, "must be a table"),
])
def test_a_profile_that_cannot_be_read_says_what_to_do(tmp_path, text, profile, message):
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config.resolve(None, None, profile, {"SWITCHYARD_CONFIG": str(path)})


def _event(seq: int, type_: str, step_id: str | None = None, attempt: int | None = None, **data) -> Event:
    return Event(seq=seq, type=type_, step_id=step_id, attempt=attempt, data=data, created_at=datetime.now(UTC))


def test_the_board_follows_the_events_of_a_run_from_its_first():
    board = watch.Board("run_1", "w v1", "queued", (watch.StepView("a", "tool"), watch.StepView("b", "tool"),
                                                     watch.StepView("c", "approval")))
    for event in [_event(1, "run_started"), _event(2, "step_queued", "a", 1), _event(3, "step_started", "a", 1),
                  _event(4, "step_retrying", "a", 1, error={"message": "flaky"}), _event(5, "step_started", "a", 2),
                  _event(6, "step_completed", "a", 2), _event(7, "step_completed", "b", None, skipped=True,
                                                               reason="condition"),
                  _event(8, "step_waiting", "c", 1, waiting_on="approval"), _event(9, "run_waiting")]:
        board = watch.apply(board, event)
    assert board.status == "waiting" and board.settled == 2
    assert [(s.id, s.status, s.attempt, s.note) for s in board.steps] == [
        ("a", "succeeded", 2, ""), ("b", "skipped", 0, "condition"), ("c", "waiting", 1, "approval")]
    board = watch.apply(board, _event(10, "steps_reopened", "c", steps=["a", "c"]))
    assert [s.status for s in board.steps] == ["pending", "skipped", "pending"]
    board = watch.apply(board, _event(11, "step_failed", "b", 1, error={"code": "boom", "message": "it broke"}))
    assert board.steps[1].status == "failed" and board.steps[1].note == "it broke"


def test_a_failed_steps_error_is_shown_by_its_message_on_the_board_and_code_and_message_in_tables():
    error = {"code": "invalid_arguments", "message": "the arguments of sleep do not fit its schema",
             "retryable": False, "details": {"field": "seconds"}}
    run = Run.model_validate({
        "id": "run_1", "workflow": {"id": "w", "version": 1}, "status": "failed", "trigger_type": "api", "attempt": 1,
        "created_at": "2026-01-01T00:00:00Z", "error": {**error, "step_id": "nap"},
        "steps": [{"id": "nap", "type": "tool", "status": "failed", "attempt": 1, "max_attempts": 3,
                   "queue": "default", "error": error}]})
    assert watch.board_from(run, replay=False).steps[0].note == "the arguments of sleep do not fit its schema"
    assert said(run.error) == "invalid_arguments: the arguments of sleep do not fit its schema"


def test_events_the_board_does_not_know_change_nothing():
    board = watch.Board("run_1", "w v1", "running", (watch.StepView("a", "tool"),))
    assert watch.apply(board, _event(1, "policy_decision", "a")) == board


def test_an_event_as_a_log_line():
    event = Event(seq=4, type="step_failed", step_id="a", attempt=2, data={"error": {"message": "it broke"}},
                  created_at=datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC))
    assert watch.line(event) == "12:00:05 #4 step_failed a (attempt 2): it broke"


def test_the_image_holds_every_package_of_the_distribution_switchyard_included():
    """The `switchyard` command imports switchyard/ (its remote commands): an image without it would not start."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "switchyard*" in packages
    copied = (root / "Dockerfile").read_text()
    assert [p for p in packages if f"COPY {p.rstrip('*')} ./{p.rstrip('*')}" not in copied] == []
