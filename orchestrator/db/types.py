"""Column types and SQL expressions that behave the same on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Float, TypeDecorator, bindparam
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes in and out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class db_now(FunctionElement):
    """The database's clock, plus an optional offset in seconds.

    Leases and due times use the database clock, never a worker's (DESIGN.md "Leases").
    """

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, offset_s: float = 0.0):
        super().__init__(bindparam(None, float(offset_s), type_=Float()))


@compiles(db_now, "postgresql")
def _db_now_pg(element, compiler, **kw):
    offset = compiler.process(element.clauses, **kw)
    return f"(clock_timestamp() + make_interval(secs => {offset}))"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element, compiler, **kw):
    offset = compiler.process(element.clauses, **kw)
    # Same text layout as SQLAlchemy's SQLite DateTime, so stored values compare as strings.
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', ({offset}) || ' seconds')"
