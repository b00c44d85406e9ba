"""Event triggers, the pure part: checks at publish and matching an event."""

from __future__ import annotations

import pytest

from orchestrator import triggers
from orchestrator.triggers import Event, Trigger, match

EVENT = Event("evt-1", "ticket.created", {"id": "T-1", "priority": "high", "n": 3}, "k-1")


def test_the_first_matching_trigger_renders_the_input_over_the_event():
    found = match([Trigger(event="other"), Trigger(event="ticket.created", when="event.payload.priority == 'low'"),
                   Trigger(event="ticket.created", when="event.payload.n > 2",
                           input={"ticket": "{{ event.payload.id }}", "key": "{{ event.correlation_key }}"})], EVENT)
    assert found.matched and found.input == {"ticket": "T-1", "key": "k-1"}


def test_without_input_the_payload_is_the_input():
    assert match([Trigger(event="ticket.created")], EVENT).input == EVENT.payload


@pytest.mark.parametrize("when", ["event.payload.priority == 'low'", "not event.payload", "0"])
def test_a_falsy_condition_does_not_match(when):
    found = match([Trigger(event="ticket.created", when=when)], EVENT)
    assert not found.matched and found.error is None


def test_a_failing_expression_is_reported_when_nothing_matches():
    found = match([Trigger(event="ticket.created", when="event.payload.n / 0")], EVENT)
    assert not found.matched and "expression" in found.error
    assert match([Trigger(event="ticket.created", when="event.payload.n / 0"),
                  Trigger(event="ticket.created")], EVENT).matched


@pytest.mark.parametrize(("trigger", "problem"), [
    (Trigger(event="e", when="event.payload.x =="), "triggers.0.when: expression syntax error"),
    (Trigger(event="e", when="input.x"), "triggers.0.when: reads ['input']"),
    (Trigger(event="e", input={"a": ["{{ run.id }}"]}), "triggers.0.input: reads ['run']"),
    (Trigger(event="e", input="{{ event.__class__ }}"), "triggers.0.input: template reaches for"),
    (Trigger(event="e", input="{{ event.payload"), "triggers.0.input: template syntax error"),
])
def test_problems_at_publish(trigger, problem):
    assert any(p.startswith(problem) for p in triggers.problems([trigger])), triggers.problems([trigger])


def test_a_good_trigger_has_no_problem():
    assert triggers.problems([Trigger(event="e", when="event.payload.n > 1 and event.name == 'e'",
                                      input={"n": "{{ event.payload.n }}"})]) == []
