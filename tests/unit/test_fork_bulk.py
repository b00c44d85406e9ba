"""Bulk actions, the pure parts: which run statuses each action is taken from (the single-run table, a
fork like a rerun), and the request's checks before any run is touched."""

from __future__ import annotations

import pytest

from orchestrator import bulk
from orchestrator.errors import InvalidRequest, NotFound
from orchestrator.states import CONTROLS, RunStatus


@pytest.mark.parametrize("action", bulk.ACTIONS)
@pytest.mark.parametrize("status", list(RunStatus))
def test_a_bulk_action_applies_from_exactly_the_statuses_the_single_action_does(action, status):
    allowed = CONTROLS["rerun" if action == "fork" else action].allowed_from
    reason = bulk.skip_reason(action, status.value)
    assert (reason is None) == (status in allowed)
    if reason:
        assert reason.startswith(f"cannot {action} a run that is {status.value}; allowed from")


@pytest.mark.parametrize(("action", "fields", "error", "words"), [
    ("explode", {}, NotFound, "actions are"),
    ("pause", {"reason": "x"}, InvalidRequest, "pause does not take ['reason']"),
    ("cancel", {"from_step": "a"}, InvalidRequest, "cancel does not take ['from_step']"),
    ("fork", {"input": {}}, InvalidRequest, "needs 'from_step'"),
])
def test_a_bulk_request_an_action_cannot_take_is_refused(action, fields, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        bulk.check_request(action, fields)


def test_the_fields_each_action_takes_are_accepted():
    for action, fields in (("cancel", {"reason": "r", "mode": "graceful"}), ("resume", {"limits": {}}),
                           ("fork", {"from_step": "a", "input_patch": {}, "steps": {}, "version": 2})):
        bulk.check_request(action, fields)
