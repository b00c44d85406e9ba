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

    Leases and due times use the database clock, never a worker's (docs/architecture.md, "One clock").
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


class seconds_between(FunctionElement):
    """``end - start`` in seconds, as a float, on either backend (for durations and latencies)."""

    type = Float()
    inherit_cache = True


@compiles(seconds_between, "postgresql")
def _seconds_between_pg(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element, compiler, **kw):
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


BUCKETS = ("minute", "hour", "day")
_SQLITE_BUCKET = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}


class bucket_start(FunctionElement):
    """The start of the UTC minute, hour or day a timestamp falls in (``bucket_start(col, 'hour')``)."""

    type = UTCDateTime()
    # The unit is compiled into the SQL text, so statements with it are not cached by shape alone.
    inherit_cache = False

    def __init__(self, column, unit: str):
        if unit not in BUCKETS:
            raise ValueError(f"bucket must be one of {BUCKETS}")
        self.unit = unit
        super().__init__(column)


@compiles(bucket_start, "postgresql")
def _bucket_start_pg(element, compiler, **kw):
    column = compiler.process(element.clauses, **kw)
    # In UTC, whatever the session's TimeZone, so a day bucket is a UTC day.
    return f"(date_trunc('{element.unit}', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


@compiles(bucket_start, "sqlite")
def _bucket_start_sqlite(element, compiler, **kw):
    column = compiler.process(element.clauses, **kw)
    return f"strftime('{_SQLITE_BUCKET[element.unit]}', {column})"
