"""Shared test settings: keep Celery and SQLAlchemy quiet unless a test fails."""

from __future__ import annotations

import logging

logging.getLogger("celery").setLevel(logging.WARNING)
logging.getLogger("kombu").setLevel(logging.WARNING)
