"""Analytics of a tenant's runs: a summary since a time, and time series in minute/hour/day buckets.

Both are SQL aggregates over indexed columns (README "Monitoring" names the indexes); nothing here
loads rows one by one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from flask import Blueprint, request

from api import serializers
from api.auth import principal
from api.context import services
from orchestrator.db import repository as repo
from orchestrator.errors import InvalidRequest
from orchestrator.states import TERMINAL_RUN, RunStatus

bp = Blueprint("analytics", __name__)

STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_SPAN = {"minute": timedelta(hours=1), "hour": timedelta(days=1), "day": timedelta(days=30)}
MAX_POINTS = 1500
_RELATIVE = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since_arg(now: datetime, default: timedelta) -> datetime:
    """``?since=`` as an RFC 3339 time or a span back from now (``90m``, ``24h``, ``7d``)."""
    raw = request.args.get("since")
    if raw is None or raw == "":
        return now - default
    match = _RELATIVE.match(raw)
    if match:
        try:
            return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise InvalidRequest("'since' reaches back before year 1", {"since": raw}) from None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidRequest(
            "'since' must be an RFC 3339 time (2026-01-31T00:00:00Z) or a span like 90m, 24h, 7d",
            {"since": raw},
        ) from None
    if value.tzinfo is None:
        raise InvalidRequest("'since' needs a time zone (Z or +hh:mm)", {"since": raw})
    return value.astimezone(UTC)


def _choice(name: str, choices, default: str | None = None) -> str:
    value = request.args.get(name) or default
    if value not in choices:
        raise InvalidRequest(f"query parameter {name!r} must be one of {list(choices)}", {name: value})
    return value


@bp.get("/analytics/summary")
def summary():
    tenant_id = principal().tenant_id
    with services().sessions() as session:
        now = repo.now(session)
        since = since_arg(now, timedelta(hours=24))
        live = repo.count_runs_by_status(session, tenant_id, statuses=list(repo.LIVE_RUN))
        recent = repo.count_runs_by_status(session, tenant_id, since=since)
        usage = repo.sum_run_usage(session, tenant_id, since)
    ended = {s: recent.get(s, 0) for s in TERMINAL_RUN}
    finished = sum(ended.values())
    return {
        "since": serializers.ts(since),
        "until": serializers.ts(now),
        "live_runs": {"total": sum(live.values()), **{s.value: live.get(s, 0) for s in repo.LIVE_RUN}},
        "recent_runs": {"total": sum(recent.values()), **{s.value: recent.get(s, 0) for s in RunStatus}},
        "success_rate": round(ended[RunStatus.SUCCEEDED] / finished, 4) if finished else None,
        "steps_executed": _number(usage["steps"]),
        "usage": {key: _number(value) for key, value in usage.items()},
    }


@bp.get("/analytics/timeseries")
def timeseries():
    metric = _choice("metric", repo.TIMESERIES)
    unit = _choice("bucket", tuple(STEP), "hour")
    tenant_id = principal().tenant_id
    with services().sessions() as session:
        now = repo.now(session)
        since = since_arg(now, DEFAULT_SPAN[unit])
        buckets = _buckets(since, now, unit)
        values = repo.timeseries(session, tenant_id, metric, unit, buckets[0] if buckets else since)
    return {
        "metric": metric,
        "bucket": unit,
        "since": serializers.ts(since),
        "until": serializers.ts(now),
        "points": [{"t": serializers.ts(b), "value": _number(values.get(b, 0))} for b in buckets],
    }


def _buckets(since: datetime, now: datetime, unit: str) -> list[datetime]:
    """Every bucket start from the one holding ``since`` to the one holding ``now``, in UTC."""
    if since > now:
        raise InvalidRequest("'since' is in the future", {"since": serializers.ts(since)})
    start = _floor(since, unit)
    count = int((_floor(now, unit) - start) / STEP[unit]) + 1
    if count > MAX_POINTS:
        raise InvalidRequest(
            f"that would be {count} {unit} buckets; ask for at most {MAX_POINTS} (a later 'since' or a larger bucket)",
            {"buckets": count, "max": MAX_POINTS},
        )
    return [start + i * STEP[unit] for i in range(count)]


def _floor(value: datetime, unit: str) -> datetime:
    value = value.astimezone(UTC).replace(second=0, microsecond=0)
    if unit in ("hour", "day"):
        value = value.replace(minute=0)
    if unit == "day":
        value = value.replace(hour=0)
    return value


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)
