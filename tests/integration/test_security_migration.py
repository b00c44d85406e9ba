"""Migration 0004 (webhook secrets and deliveries) goes down to 0002 and up again cleanly."""

from __future__ import annotations

import secrets

import psycopg
from alembic import command
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from orchestrator.db import migrate
from orchestrator.settings import Settings
from tests.integration.conftest import PG_URL, _libpq


def test_0004_downgrades_to_0002_and_upgrades_again(database_url):
    name = f"switchyard_mig_{secrets.token_hex(4)}"
    with psycopg.connect(_libpq(PG_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            settings = Settings(database_url=make_url(PG_URL).set(database=name).render_as_string(hide_password=False))
            migrate.upgrade(settings)
            assert {"webhook_secrets", "webhook_deliveries"} <= _tables(settings)
            command.downgrade(migrate.alembic_config(settings), "0002")
            assert not {"webhook_secrets", "webhook_deliveries"} & _tables(settings)
            migrate.upgrade(settings)
            assert {"webhook_secrets", "webhook_deliveries"} <= _tables(settings)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(settings: Settings) -> set[str]:
    engine = create_engine(settings.database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
