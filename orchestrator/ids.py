"""Opaque, unguessable ids with a type prefix (``run_…``, ``tok_…``), never sequential integers."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"
