"""Parsed workflow definitions by (tenant, workflow, version), and the workflows' heads.

Published versions are immutable, so a process may keep what it parsed (with its compiled input
validator); the cache only saves the database round trip and the parsing on the hot path of every
step and every start. A workflow's head (latest version, archived or not) does change: a start that
used a cached head writes only if the head is still that (repository.starts), and reads it again if not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import jsonschema
from sqlalchemy.orm import Session

from orchestrator.db import repository as repo
from orchestrator.definitions import Definition

Key = tuple[str, str, int]


@dataclass(frozen=True)
class WorkflowHead:
    """What a start needs of a workflow's row: its name, latest version and whether it is archived."""

    tenant_id: str
    workflow_id: str
    name: str
    latest_version: int
    archived_at: datetime | None


class DefinitionCatalog:
    def __init__(self, max_entries: int = 1024):
        self._parsed: dict[Key, Definition] = {}
        self._validators: dict[Key, jsonschema.Draft202012Validator] = {}
        self._heads: dict[tuple[str, str], WorkflowHead] = {}
        self._max = max_entries

    def get_many(self, session: Session, keys: Iterable[Key]) -> dict[Key, Definition]:
        """The definitions for ``keys``; raises KeyError if a version does not exist."""
        keys = set(keys)
        missing = [k for k in keys if k not in self._parsed]
        if missing:
            if len(self._parsed) + len(missing) > self._max:
                self._parsed.clear()
                self._validators.clear()
            for key, raw in repo.get_definitions(session, missing).items():
                # Stored definitions passed parse_definition at publish; the model alone rebuilds them.
                self._parsed[key] = Definition.model_validate(raw)
        return {k: self._parsed[k] for k in keys}

    def get(self, session: Session, key: Key) -> Definition:
        return self.get_many(session, [key])[key]

    def input_validator(self, key: Key, definition: Definition) -> jsonschema.Draft202012Validator | None:
        """The compiled validator of the version's input_schema (None without one), made once."""
        if definition.input_schema is None:
            return None
        validator = self._validators.get(key)
        if validator is None:
            validator = self._validators[key] = jsonschema.Draft202012Validator(definition.input_schema)
        return validator

    def head(self, session: Session, tenant_id: str, workflow_id: str, *, fresh: bool = False) -> WorkflowHead | None:
        """The workflow's head, as last read by this process (read now if ``fresh`` or never read);
        None if there is no such workflow."""
        key = (tenant_id, workflow_id)
        if not fresh and key in self._heads:
            return self._heads[key]
        workflow = repo.read_workflow(session, tenant_id, workflow_id)
        if workflow is None:
            self._heads.pop(key, None)
            return None
        if len(self._heads) >= self._max:
            self._heads.clear()
        head = self._heads[key] = WorkflowHead(tenant_id, workflow_id, workflow.name, workflow.latest_version,
                                               workflow.archived_at)
        return head
