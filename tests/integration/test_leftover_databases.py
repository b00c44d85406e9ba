"""Databases left by a test session or a bench that was killed before its clean-up are dropped by the
next fresh_database of the same prefix; one whose process still runs, or that someone is connected
to, is left alone. The same for Redis dbs (claimed_redis_db): one claimed by a process that is gone
is flushed and taken; one with somebody else's keys is left alone, and without a claim of ours."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from tests.integration.conftest import (
    PG_URL,
    REDIS_CLAIM_KEY,
    _claim_redis_db,
    _drop_left_behind,
    _libpq,
    _server_is_local,
    claimed_redis_db,
)

PREFIX = "switchyard_leftover"
pytestmark = pytest.mark.skipif(not _server_is_local(), reason="left-behind databases are dropped only on a "
                                "server on this machine; point SWITCHYARD_TEST_PG_URL at one to run these")


@pytest.fixture
def admin(database_url):  # database_url: PostgreSQL is reachable, or the test is skipped
    with psycopg.connect(_libpq(PG_URL), autocommit=True) as conn:
        yield conn


def _gone_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    return child.pid


def _exists(admin, name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_a_killed_processs_database_is_dropped_and_a_live_ones_is_kept(admin):
    left = f"{PREFIX}_{_gone_pid()}_abc123"
    live = f"{PREFIX}_{os.getpid()}_def456"
    other = f"{PREFIX}_{_gone_pid()}_notours"  # not the name fresh_database makes
    for name in (left, live, other):
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        assert _drop_left_behind(admin, PREFIX) == [left]
        assert not _exists(admin, left)
        assert _exists(admin, live) and _exists(admin, other)
    finally:
        for name in (left, live, other):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_a_database_someone_is_connected_to_is_kept(admin):
    name = f"{PREFIX}_{_gone_pid()}_0a1b2c"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(_libpq(make_url(PG_URL).set(database=name).render_as_string(hide_password=False))):
            assert _drop_left_behind(admin, PREFIX) == []
        assert _exists(admin, name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """A client on a Redis db claimed for this test, flushed afterwards. A test changes the db's claim
    only once the db holds a key, so that no other session takes it for an empty one meanwhile."""
    with claimed_redis_db() as url:
        yield redis.Redis.from_url(url)


def test_a_redis_db_with_somebody_elses_keys_is_refused_without_leaving_a_claim(redis_db):
    redis_db.set("somebody:else", "1")
    redis_db.delete(REDIS_CLAIM_KEY)
    assert not _claim_redis_db(redis_db)
    assert redis_db.keys("*") == [b"somebody:else"]  # a claim left here would hide the db for good


def test_a_redis_db_claimed_by_a_process_that_is_gone_is_flushed_and_taken(redis_db):
    redis_db.set("_kombu.binding.steps", "left by a killed session")
    redis_db.set(REDIS_CLAIM_KEY, _gone_pid())
    assert _claim_redis_db(redis_db)
    assert redis_db.keys("*") == [REDIS_CLAIM_KEY.encode()]
    assert redis_db.get(REDIS_CLAIM_KEY) == str(os.getpid()).encode()


def test_a_redis_db_claimed_by_a_live_process_is_left_alone(redis_db):
    redis_db.set("_kombu.binding.steps", "in use")
    redis_db.set(REDIS_CLAIM_KEY, os.getppid())
    assert not _claim_redis_db(redis_db)
    assert redis_db.get(REDIS_CLAIM_KEY) == str(os.getppid()).encode() and redis_db.dbsize() == 2
