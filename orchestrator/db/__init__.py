"""Persistence: tables, the session factory, migrations and the repository (the only SQL)."""
