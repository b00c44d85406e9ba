"""Databases left by a test session or a bench that was killed before its clean-up are dropped by the
next fresh_database of the same prefix; one whose process still runs, or that someone is connected
to, is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.integration.conftest import PG_URL, _drop_left_behind, _libpq, _server_is_local

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
