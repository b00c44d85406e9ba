"""`make bench`, section `front`: the floor under `POST /runs` on this stack. A Flask app with one route that
does what a start cannot do without (parse the JSON body, one single-row INSERT and its commit, answer 201
with JSON), served by gunicorn as `switchyard api` serves the API (gthread, its processes and threads), and
timed by the same client. What `POST /runs` costs above it is Switchyard's; what this costs above the bare
insert is Flask's, gunicorn's and HTTP's, and no start through this stack can go below it.

    gunicorn --worker-class gthread tests.bench.floor_app:app   (SWITCHYARD_DATABASE_URL: the bench's database)
"""

from __future__ import annotations

import os
import threading

import psycopg
from flask import Flask, jsonify, request
from psycopg.types.json import Jsonb

from tests.bench.bench_analytics import _libpq

app = Flask(__name__)
_local = threading.local()


def _connection() -> psycopg.Connection:
    """This thread's connection, kept open (as the API's pool keeps its own), in autocommit."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(_libpq(os.environ["SWITCHYARD_DATABASE_URL"]), autocommit=True)
        conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, body jsonb)")
    return conn


@app.post("/floor")
def floor():
    body = request.get_json()
    row = _connection().execute("INSERT INTO bench_floor (body) VALUES (%s) RETURNING id",
                                (Jsonb(body),), prepare=True).fetchone()
    return jsonify({"id": row[0]}), 201
