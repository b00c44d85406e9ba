"""Counts the round trips of one step on the hot path, in process, on the bench's database and broker.

A two-step run (``a`` then ``b``) on a queue no worker reads goes through what the processes do for a
step: the scheduler's pass that dispatches ``a`` (outside the count), the worker's claim (in autocommit,
as the worker does it), its outcome write, which queues ``b``, and the worker's publish of ``b``'s
message and deletion of its outbox row (in autocommit too); then ``b``, the run's last step: its claim
and its success written as claimed (one statement in autocommit, which finishes the run).

SQL statements are counted where psycopg sends them (the claim goes to the driver, past SQLAlchemy; the
statements of a psycopg pipeline, sent together, count as one), transactions with SQLAlchemy's
``commit``/``rollback`` (each a BEGIN and a COMMIT on the wire; none in autocommit; a transaction the
worker writes out on its autocommit connection, as it does an outcome's, sends its BEGIN in the pipeline
of its first statement and its COMMIT as a statement, counted as such), and Redis requests
by the commands redis-py sends (a pipeline is one request). Celery's own
traffic around a task (BRPOP, the late ack, the task events) is the same as the raw baseline's and is
not counted here.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager

import psycopg
import redis.connection
from sqlalchemy import event, text


@contextmanager
def _counting(engine):
    counts: Counter = Counter()

    sent = psycopg.Cursor.execute, psycopg.Cursor.executemany

    # Statements of the process's own threads (an API's broker calls after a commit) are off the path.
    path = threading.current_thread()

    def sql_key() -> str:
        return "sql" if threading.current_thread() is path else "sql off the path"

    # The statements of a psycopg pipeline go in one round trip (its sync): the pipeline is counted as one.
    pipelines = threading.local()

    def counted(method):
        def statement(*args, **kwargs):
            counts["pipelined statements" if getattr(pipelines, "depth", 0) else sql_key()] += 1
            return method(*args, **kwargs)
        return statement

    original_pipeline = psycopg.Connection.pipeline

    @contextmanager
    def pipeline(self):
        counts[sql_key()] += 1
        pipelines.depth = getattr(pipelines, "depth", 0) + 1
        try:
            with original_pipeline(self) as opened:
                yield opened
        finally:
            pipelines.depth -= 1

    def commit(conn, *_args):
        if not conn.connection.driver_connection.autocommit:  # in autocommit there is no BEGIN or COMMIT
            counts["transactions"] += 1

    original = redis.connection.AbstractConnection.send_packed_command

    def send(self, command, check_health=True):
        # The live streams' publisher sends from a thread of its own, off the step's path; so do an API's
        # broker calls after a commit (its Courier: a new run's first steps).
        thread = threading.current_thread()
        kind = ("stream publishes" if thread.name == "switchyard-stream-publisher"
                else "redis" if thread is path else "redis off the path")
        counts[kind] += 1
        return original(self, command, check_health)

    psycopg.Cursor.execute, psycopg.Cursor.executemany = (counted(method) for method in sent)
    psycopg.Connection.pipeline = pipeline
    event.listen(engine, "commit", commit)
    event.listen(engine, "rollback", commit)
    redis.connection.AbstractConnection.send_packed_command = send
    try:
        yield counts
    finally:
        redis.connection.AbstractConnection.send_packed_command = original
        psycopg.Cursor.execute, psycopg.Cursor.executemany = sent
        psycopg.Connection.pipeline = original_pipeline
        event.remove(engine, "commit", commit)
        event.remove(engine, "rollback", commit)


def _trips(counts: Counter) -> dict[str, int]:
    return {"sql statements": counts["sql"], "transactions": counts["transactions"],
            "db round trips": counts["sql"] + 2 * counts["transactions"], "redis requests": counts["redis"],
            "stream publishes": counts["stream publishes"], "sql off the path": counts["sql off the path"],
            "redis off the path": counts["redis off the path"]}


def count(settings, celery, tenant: str) -> str:
    """One line per phase of the hot path, and the total per step; the scheduler must not be running."""
    phases = measure(settings, celery, tenant)
    lines = [f"{name}: {trips['db round trips']} db ({trips['sql statements']} statements in "
             f"{trips['transactions']} transactions), {trips['redis requests']} redis, "
             f"{trips['stream publishes']} live-stream publish(es) off the path" for name, trips in phases.items()]
    for what, total in totals(phases).items():
        lines.append(f"total for {what}: {total['db round trips']} db round trips in {total['transactions']} "
                     f"transactions, {total['redis requests']} redis requests on the path, "
                     f"{total['stream publishes']} live-stream publishes off it")
    return "\n" + "\n".join(f"- {line}" for line in lines) + "\n"


STEP_THAT_QUEUES_THE_NEXT, RUNS_LAST_STEP = "a step that queues the next", "a run's last step"
EAGER_STEP = "a step whose worker runs the next at once (eager)"


def totals(phases: dict[str, dict[str, int]]) -> dict[str, Counter]:
    """The round trips of the phases summed per kind of step: the first three phases are a step that
    queues the next through the broker, the next two a run's last step, the last one a step whose
    worker runs the next itself (its outcome claims the next step: no claim of its own)."""
    names = list(phases)
    result = {}
    for what, of in ((STEP_THAT_QUEUES_THE_NEXT, names[:3]), (RUNS_LAST_STEP, names[3:5]), (EAGER_STEP, names[5:])):
        total = Counter()
        for name in of:
            total.update(phases[name])
        result[what] = total
    return result


def _worker_on(settings, celery, tenant: str, workflow_id: str, steps: list[dict], run_input: dict, runs: int = 1):
    """``runs`` runs of ``steps`` started and dispatched (outside any count), and a worker's sessions set up
    as a worker's Runtime does (held connections, no ping before a transaction) and opened: what is
    counted is a step's, not a connection's set-up. (engine, worker, catalog, run id (the first), settled,
    every run id)."""
    from types import SimpleNamespace

    from orchestrator import service, streams
    from orchestrator.catalog import DefinitionCatalog
    from orchestrator.db.session import (
        AutocommitSessions,
        HeldConnectionSessions,
        make_engine,
        make_sessionmaker,
        transaction,
    )
    from orchestrator.scheduler import Scheduler

    engine = make_engine(settings, pool_pre_ping=False)
    sessions = HeldConnectionSessions(make_sessionmaker(engine))
    autocommit = AutocommitSessions(make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT")))
    publisher = streams.install_publisher([sessions.maker, autocommit], streams.make_bus(settings))
    with transaction(sessions) as session:
        service.publish_workflow(session, settings, tenant, workflow_id, {"name": workflow_id, "steps": steps})
        run_ids = [service.start_run(session, settings, tenant, workflow_id, run_input).run.id for _ in range(runs)]
    catalog = DefinitionCatalog()
    Scheduler(settings, sessions, celery).advance_batch()  # warm: run_started and the first dispatch
    with sessions() as session:  # a worker has the definition after its first step
        catalog.get_many(session, [(tenant, workflow_id, 1)])

    def settled() -> None:  # the live streams' publishes of a phase are counted with it
        if publisher is not None:
            publisher.wait_idle(5)

    for one_statement in (lambda: transaction(sessions), autocommit):
        with one_statement() as session:
            session.execute(text("SELECT 1"))
    worker = SimpleNamespace(celery=celery, settings=settings, sessions=sessions, one_statement=autocommit,
                             transaction=autocommit.transaction)
    return engine, worker, catalog, run_ids[0], settled, run_ids


def measure(settings, celery, tenant: str) -> dict[str, dict[str, int]]:
    """The round trips of each phase of the hot path, by phase; the scheduler must not be running."""
    from orchestrator import dispatch, outcomes
    from orchestrator.core.inputs import AttemptReport, Env
    from orchestrator.writer import ClaimNext

    steps = [{"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}, "queue": "bench.census"},
             {"id": "b", "type": "tool", "tool": "echo", "args": {"text": "x"}, "queue": "bench.census",
              "needs": ["a"]}]
    engine, worker, catalog, run_id, settled, (_, eager_run_id) = _worker_on(settings, celery, tenant, "census",
                                                                           steps, {}, runs=2)
    autocommit = worker.one_statement
    env = Env(prices=settings.prices)
    phases: dict[str, dict[str, int]] = {}
    with _counting(engine) as c:
        with autocommit() as session:
            claim = outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(run_id, "a", 1), worker="census",
                                           lease_s=settings.lease_s)
        settled()
    assert claim is not None
    phases["claim"] = _trips(c)
    with _counting(engine) as c:
        report = AttemptReport(run_id, "a", 1, outcomes.Outcome(output={"text": "x"}), queue_ready=True)
        recorded = outcomes.record(worker, claim.definition, report, seen=claim.seen, env=env)
        settled()
    assert [m.step_id for m in recorded.messages] == ["b"], "the outcome did not queue the next step"
    phases["record outcome (queues the next step)"] = _trips(c)
    with _counting(engine) as c:
        # As the worker does: step a's place in the window goes to b, on the same queue (no check).
        dispatch.publish_queued(celery, autocommit, recorded.messages, cancel_grace_s=settings.cancel_grace_s,
                                handoff_queue="bench.census")
        settled()
    phases["publish the next step, delete its outbox row"] = _trips(c)
    with _counting(engine) as c:
        with autocommit() as session:  # as an eager claim does: with b's outbox row (gone, once published)
            claim = outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(run_id, "b", 1), worker="census",
                                           lease_s=settings.lease_s, outbox_id=recorded.messages[0].outbox_id)
        settled()
    phases["claim the last step"] = _trips(c)
    with _counting(engine) as c:
        report = AttemptReport(run_id, "b", 1, outcomes.Outcome(output={}), queue_ready=True)
        recorded = outcomes.record(worker, claim.definition, report, seen=claim.seen, env=env)
        settled()
    assert recorded.applied and c["transactions"] == 0, "the last step's success was not written as claimed"
    phases["record the run's last step (as claimed: finishes the run)"] = _trips(c)
    with autocommit() as session:
        claim = outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(eager_run_id, "a", 1), worker="census",
                                       lease_s=settings.lease_s)
    with _counting(engine) as c:  # as a worker that runs b itself next: b claimed with a's outcome
        report = AttemptReport(eager_run_id, "a", 1, outcomes.Outcome(output={"text": "x"}), queue_ready=True)
        recorded = outcomes.record(worker, claim.definition, report, seen=claim.seen, env=env,
                                   claim_next=ClaimNext("census", settings.lease_s, "bench.census", lambda _: True))
        settled()
    assert recorded.claimed is not None and recorded.claimed.claimed, "the outcome did not claim the next step"
    phases["record outcome, claiming the next step (eager)"] = _trips(c)
    return phases


def item_outcome(settings, celery, tenant: str, items: int) -> dict[str, int]:
    """The round trips of one for-each item's success (which queues the next pending item), in a
    for-each step of ``items`` items run one at a time; the scheduler must not be running. The same
    for any number of items: an item's outcome reads its row and its step's, never the other items."""
    from orchestrator import outcomes
    from orchestrator.core.inputs import AttemptReport, Env

    steps = [{"id": "each", "type": "tool", "tool": "echo", "args": {"n": "{{ item }}"}, "queue": "bench.census",
              "for_each": "input.numbers", "max_parallel": 1}]
    engine, worker, catalog, run_id, settled, _ = _worker_on(settings, celery, tenant, f"census-items-{items}", steps,
                                                             {"numbers": list(range(items))})
    with worker.one_statement() as session:
        claim = outcomes.claim_attempt(session, catalog, outcomes.AttemptKey(run_id, "each[0]", 1), worker="census",
                                       lease_s=settings.lease_s)
    assert claim is not None and claim.item == 0
    with _counting(engine) as c:
        report = AttemptReport(run_id, "each[0]", 1, outcomes.Outcome(output={"n": 0}), queue_ready=True)
        recorded = outcomes.record(worker, claim.definition, report, seen=claim.seen, env=Env(prices=settings.prices))
        settled()
    assert [m.step_id for m in recorded.messages] == ["each[1]"], "the item's outcome did not queue the next item"
    return _trips(c)


def start(settings) -> dict[str, int]:
    """The round trips of one POST /runs of a one-step workflow, in the API's process (its Flask app,
    driven by its test client: the same code as under gunicorn), after a few warmed its caches (the
    token's process, the workflow's head and parsed definition). What the request's thread sends is on
    the path; the first step's publish and its outbox row's deletion, sent by the API's broker thread
    after the answer, are counted apart."""
    import api
    from orchestrator import service
    from orchestrator.db import repository as repo
    from orchestrator.db.session import transaction

    app = api.create_app(settings)
    svc = app.extensions["switchyard"]
    with transaction(svc.sessions) as session:
        service.publish_workflow(session, settings, "census", "census-start", {"name": "census start", "steps": [
            {"id": "a", "type": "tool", "tool": "echo", "args": {"text": "x"}, "queue": "bench.census"}]})
        token = repo.create_token(session, "census", "operator", "census")[1]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"workflow_id": "census-start", "input": {}}
    for _ in range(3):
        assert client.post("/api/v1/runs", json=body, headers=headers).status_code == 201
    svc.courier.wait_idle(5)
    with _counting(svc.sessions.kw["bind"]) as c:
        response = client.post("/api/v1/runs", json=body, headers=headers)
        svc.courier.wait_idle(5)
    assert response.status_code == 201, response.get_json()
    svc.dispose()
    return _trips(c)
