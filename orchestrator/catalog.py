"""Parsed workflow definitions by (tenant, workflow, version).

Published versions are immutable, so a process may keep what it parsed; the cache only saves the
database round trip and the parsing on the hot path of every step.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from orchestrator.db import repository as repo
from orchestrator.definitions import Definition

Key = tuple[str, str, int]


class DefinitionCatalog:
    def __init__(self, max_entries: int = 1024):
        self._parsed: dict[Key, Definition] = {}
        self._max = max_entries

    def get_many(self, session: Session, keys: Iterable[Key]) -> dict[Key, Definition]:
        """The definitions for ``keys``; raises KeyError if a version does not exist."""
        keys = set(keys)
        missing = [k for k in keys if k not in self._parsed]
        if missing:
            if len(self._parsed) + len(missing) > self._max:
                self._parsed.clear()
            for key, raw in repo.get_definitions(session, missing).items():
                # Stored definitions passed parse_definition at publish; the model alone rebuilds them.
                self._parsed[key] = Definition.model_validate(raw)
        return {k: self._parsed[k] for k in keys}

    def get(self, session: Session, key: Key) -> Definition:
        return self.get_many(session, [key])[key]
