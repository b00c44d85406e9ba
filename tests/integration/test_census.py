"""The hot path's round trips, as `make bench` counts them (tests/bench/census.py): a refactor or a
feature that adds a round trip to a step's path fails here, not only in a benchmark nobody reads."""

from __future__ import annotations

from orchestrator.broker import make_celery
from orchestrator.db import migrate
from tests.bench import census
from tests.integration.conftest import fresh_database


def test_a_step_costs_five_round_trips_an_eager_one_three_and_a_runs_last_step_three(settings):
    # A database of its own: the session's scheduler must not advance the census' run in between.
    with fresh_database("switchyard_census") as url:
        settings = settings.model_copy(update={"database_url": url})
        migrate.upgrade(settings)
        phases = census.measure(settings, make_celery(settings), "census")
    totals = census.totals(phases)
    queues_next, last = totals[census.STEP_THAT_QUEUES_THE_NEXT], totals[census.RUNS_LAST_STEP]
    # The outcome is a transaction written out on the worker's autocommit connection: its BEGIN goes with
    # the run's lock, the next step's queueing with the run's statement, and its COMMIT is a statement.
    assert (queues_next["db round trips"], queues_next["transactions"], queues_next["redis requests"]) == (5, 0, 1), phases
    # A worker that runs the next step itself (eager): no publish, no outbox row, and the next step's claim
    # goes in the outcome's transaction, with the next step's queueing and the run's statement.
    eager = totals[census.EAGER_STEP]
    assert (eager["db round trips"], eager["transactions"], eager["redis requests"]) == (3, 0, 0), phases
    assert (last["db round trips"], last["transactions"], last["redis requests"]) == (3, 0, 0), phases


def test_a_for_each_items_outcome_costs_the_same_with_ten_items_or_a_thousand(settings):
    with fresh_database("switchyard_census_items") as url:
        settings = settings.model_copy(update={"database_url": url})
        migrate.upgrade(settings)
        celery = make_celery(settings)
        few, many = (census.item_outcome(settings, celery, "census", n) for n in (10, 1000))
    assert few == many, (few, many)
    # Lock the run with the item, read its step (after the lock), move the item, write the step's counts,
    # queue the next item with its outbox row (one statement), and the run's update with the events; then
    # COMMIT (the transaction is written out: its BEGIN goes with the lock, in one round trip).
    assert (few["sql statements"], few["transactions"], few["db round trips"]) == (7, 0, 7), few


def test_a_start_through_the_api_costs_two_statements(settings):
    """POST /runs of a one-step workflow, warm: the token's lookup and the start's one statement (the run,
    its step, its first events and its first step's outbox row, in autocommit), and the rate limit's one
    Redis request. After the answer, on the API's broker thread: the queue's window checked
    (orchestrator/admission.py), the first step published, its outbox row deleted."""
    with fresh_database("switchyard_census_start") as url:
        trips = census.start(settings.model_copy(update={"database_url": url}))
    assert (trips["sql statements"], trips["transactions"], trips["redis requests"]) == (2, 0, 1), trips
    assert (trips["sql off the path"], trips["redis off the path"]) == (2, 1), trips
