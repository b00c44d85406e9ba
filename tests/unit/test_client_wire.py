"""switchyard.client's pure parts: errors from answers (and its table of codes against the API's), step
errors, Server-Sent Events, pagination, calls."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from switchyard.client import calls, errors, models
from switchyard.client.calls import Call, SseParser


@pytest.mark.parametrize(("status", "code", "cls"), [
    (400, "invalid_request", errors.ValidationFailed),
    (400, "runtime_not_applicable", errors.RuntimeNotApplicable),
    (401, "unauthorized", errors.Unauthorized),
    (403, "forbidden", errors.Forbidden),
    (404, "not_found", errors.NotFound),
    (409, "invalid_transition", errors.InvalidTransition),
    (409, "idempotency_conflict", errors.IdempotencyConflict),
    (409, "workflow_archived", errors.WorkflowArchived),
    (413, "payload_too_large", errors.PayloadTooLarge),
    (429, "rate_limited", errors.RateLimited),
    (503, "unavailable", errors.Unavailable),
    (418, "something_new", errors.ApiError),
])
def test_each_error_code_is_its_own_exception_carrying_what_the_api_said(status, code, cls):
    body = {"error": {"code": code, "message": "said so", "details": {"status": "succeeded"}}}
    exc = errors.error_for(status, body, "7")
    assert type(exc) is cls and isinstance(exc, errors.ApiError)
    assert (exc.code, exc.message, exc.details, exc.status, exc.retry_after) == (
        code, "said so", {"status": "succeeded"}, status, 7.0)
    assert str(exc) == f"{code}: said so"


def api_error_codes() -> set[str]:
    """Every code an error answer of the API can carry, read from the code that answers: the domain
    errors' (orchestrator/errors.py; a step's errors are a run's state, never an answer), api/errors.py's
    for HTTP errors werkzeug raises, and each code an api module writes into an answer itself."""
    from api import errors as answers
    from orchestrator import errors as domain

    def tree(cls: type) -> list[type]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in tree(child))]

    codes = {cls.code for cls in tree(domain.SwitchyardError) if not issubclass(cls, domain.StepError)}
    codes |= set(answers.HTTP_CODES.values())
    for module in (Path(__file__).parents[2] / "api").rglob("*.py"):
        text = module.read_text()
        codes |= set(re.findall(r'error_response\(\s*\w+,\s*"(\w+)"', text))
        codes |= set(re.findall(r'HTTP_CODES\.get\(\w+, "(\w+)"\)', text))
    return codes


def test_the_clients_exceptions_are_the_codes_the_api_answers():
    """One exception per code the API can answer, and none for a code it never answers (invalid_arguments
    is a step's error code, in a run's step, never an answer's). Two codes are left to ApiError: conflict,
    only the base of the 409 codes, and http_error, an HTTP error the API has no code of its own for."""
    answered = api_error_codes()
    assert {"invalid_request", "not_found", "invalid_transition", "unavailable", "internal"} <= answered
    assert set(errors.ERRORS) <= answered, set(errors.ERRORS) - answered
    assert answered - set(errors.ERRORS) == {"conflict", "http_error"}
    assert "invalid_arguments" not in errors.ERRORS and not hasattr(errors, "InvalidArguments")


def test_a_steps_error_is_a_model_with_its_details_and_a_runs_names_its_step():
    details = {"tool": "sleep", "field": "seconds", "problems": ["seconds: the tool 'sleep' takes a number here"]}
    error = {"code": "invalid_arguments", "message": "the arguments of sleep do not fit", "retryable": False,
             "details": details}
    step = models.Step.model_validate({"id": "nap", "type": "tool", "status": "failed", "attempt": 1,
                                       "max_attempts": 3, "queue": "default", "error": error})
    assert isinstance(step.error, models.StepError)
    assert (step.error.code, step.error.retryable, step.error.details) == ("invalid_arguments", False, details)
    run = models.Run.model_validate({**_run("a"), "status": "failed", "error": {**error, "step_id": "nap"},
                                     "steps": [step.model_dump(mode="json")]})
    assert run.error.step_id == "nap" and run.error.details == details and run.step("nap").error == step.error
    assert models.StepError.model_validate({"code": "cancelled", "message": "stop"}).details == {}


@pytest.mark.parametrize("body", [None, "oops", {"detail": "not ours"}, {"error": "flat"}])
def test_an_answer_not_in_the_error_shape_is_still_an_api_error_with_its_status(body):
    exc = errors.error_for(502, body)
    assert type(exc) is errors.ApiError and exc.code == "http_502" and exc.status == 502


def test_read_answer_returns_the_model_or_its_field_and_raises_for_errors():
    call = Call("GET", "/approvals", model=models.ApprovalList, key="approvals")
    assert calls.read_answer(call, httpx.Response(200, json={"approvals": []})) == []
    assert calls.read_answer(Call("DELETE", "/x"), httpx.Response(204)) is None
    with pytest.raises(errors.NotFound):
        calls.read_answer(call, httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}}))
    with pytest.raises(errors.ApiError, match="http_500"):
        calls.read_answer(call, httpx.Response(500, text="<html>"))


def test_query_leaves_out_unset_parameters_and_spells_booleans_as_the_api_does():
    call = Call("GET", "/workflows", {"archived": True, "status": None, "limit": 5})
    assert call.query() == {"archived": "true", "limit": 5}
    assert calls.seg("a/b c") == "a%2Fb%20c"


def test_sse_messages_are_assembled_line_by_line_and_comments_ignored():
    parser = SseParser()
    lines = ["retry: 1000", "", ": keepalive", "", "id: 3", "event: step_started", 'data: {"seq": 3,',
             'data: "type": "step_started"}', ""]
    messages = [m for line in lines if (m := parser.feed(line))]
    assert messages == [("step_started", '{"seq": 3,\n"type": "step_started"}', "3")]
    assert parser.retry_ms == 1000


def test_a_stream_message_becomes_an_event_when_it_is_one():
    event = calls.stream_event(("step_started", '{"seq": 3, "type": "step_started", "step_id": "a", '
                                                '"created_at": "2026-01-01T00:00:00Z"}', "3"))
    assert (event.seq, event.type, event.step_id) == (3, "step_started", "a")
    assert calls.stream_event(("message", "not json", None)) is None
    assert calls.stream_event(("message", '{"run_id": "x"}', None)) is None


def _run(run_id: str) -> dict:
    return {"id": run_id, "workflow": {"id": "w", "version": 1, "name": None}, "status": "succeeded",
            "trigger_type": "api", "attempt": 1, "created_at": "2026-01-01T00:00:00Z"}


def test_runs_are_paged_by_cursor_until_there_is_none():
    first = Call("GET", "/runs", {"limit": 2, "cursor": None}, model=models.RunPage)
    page = models.RunPage.model_validate({"runs": [_run("a"), _run("b")], "next_cursor": "c1"})
    items, after = calls.runs_advance(first, page)
    assert [r.id for r in items] == ["a", "b"] and after.params["cursor"] == "c1" and after.params["limit"] == 2
    last = models.RunPage.model_validate({"runs": [_run("c")], "next_cursor": None})
    assert calls.runs_advance(after, last)[1] is None


def test_events_are_paged_by_after_and_a_short_page_is_the_last():
    call = Call("GET", "/runs/r/events", {"after": 0, "limit": 2}, model=models.EventPage)
    event = {"seq": 1, "type": "run_created", "created_at": "2026-01-01T00:00:00Z"}
    full = models.EventPage.model_validate({"events": [event, {**event, "seq": 2}], "next_after": 2})
    assert calls.events_advance(call, full)[1].params["after"] == 2
    short = models.EventPage.model_validate({"events": [event], "next_after": 1})
    assert calls.events_advance(call, short)[1] is None


def test_a_run_counts_its_pending_approvals_from_an_api_that_listed_them():
    assert models.RunSummary.model_validate({**_run("a"), "pending_approvals": [{}, {}]}).pending_approvals == 2
    assert models.RunSummary.model_validate({**_run("a"), "pending_approvals": 1}).pending_approvals == 1


def test_a_run_not_read_through_a_client_says_how_to_wait_for_it():
    with pytest.raises(RuntimeError, match="client.runs.wait"):
        models.Run.model_validate(_run("a")).wait()


def test_wait_backs_off_to_its_interval_and_stops_where_it_was_asked():
    poll = calls.Poll("a", frozenset({"waiting", "succeeded"}), None, 0.3)
    running = models.Run.model_validate({**_run("a"), "status": "running"})
    assert [poll.pause_after(running) for _ in range(4)] == [0.05, 0.1, 0.2, 0.3]
    assert poll.pause_after(models.Run.model_validate({**_run("a"), "status": "waiting"})) is None
    assert poll.run.status == "waiting"


def test_wait_gives_up_at_its_deadline_with_the_run_it_read_last():
    running = models.Run.model_validate({**_run("a"), "status": "running"})
    with pytest.raises(errors.WaitTimeout, match="run a is still running after 0 s") as late:
        calls.Poll("a", frozenset({"succeeded"}), 0, 1.0).pause_after(running)
    assert late.value.run is running


def test_a_stream_that_keeps_failing_is_given_up_with_what_failed():
    assert [calls.reconnect_delay("r", n, OSError("x")) for n in (1, 2, 5)] == [0.4, 0.8, 5.0]
    with pytest.raises(errors.Unreachable, match="the event stream of r keeps failing: refused"):
        calls.reconnect_delay("r", calls.STREAM_RECONNECTS + 1, OSError("refused"))
