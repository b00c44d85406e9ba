"""Times and durations as people read them — pure. The server renders a UTC fallback inside a
``<time datetime>`` element; ui.js turns it into the browser's local time and "3 min ago"."""

from __future__ import annotations

from datetime import UTC, datetime


def parse(value: str | datetime | None) -> datetime | None:
    """An RFC 3339 string (the API's ``...Z``) or a datetime as an aware UTC datetime; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def iso(value: str | datetime | None) -> str | None:
    """RFC 3339 as the API writes it (``...Z``); a string is taken as already written so."""
    if value is None or isinstance(value, str):
        return value
    return parse(value).isoformat().replace("+00:00", "Z")


def clock(value: str | datetime | None) -> str:
    """The fallback text of a time before ui.js localises it: ``13:35:42 UTC`` (with the date when it
    is not today's)."""
    moment = parse(value)
    if moment is None:
        return "—"
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """``0.35 s``, ``1.2 s``, ``42 s``, ``3 min 4 s``, ``2 h 5 min``, ``3 d 4 h``; None reads as —."""
    if seconds is None:
        return "—"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s" if whole % 60 else f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def between(start: str | datetime | None, end: str | datetime | None, now: datetime | None = None) -> str:
    """The duration from ``start`` to ``end`` (to ``now`` while ``end`` is None); — without a start."""
    begun = parse(start)
    if begun is None:
        return "—"
    ended = parse(end) or now or datetime.now(UTC)
    return duration((ended - begun).total_seconds())
