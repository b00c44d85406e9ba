"""The analytics page's data — pure: the API's time series as the columns uPlot draws (the page's
charts, api/ui/static/vendor/uPlot), with the totals its cards show, so a card and its chart always
agree (both are the sum of the same points)."""

from __future__ import annotations

from dataclasses import dataclass

from api.ui import times

# The time ranges of the picker: (label, the API's ``since``, the bucket that keeps a chart readable).
RANGES = {
    "1h": ("Last hour", "1h", "minute"),
    "24h": ("Last 24 hours", "24h", "hour"),
    "7d": ("Last 7 days", "7d", "hour"),
    "30d": ("Last 30 days", "30d", "day"),
}
DEFAULT_RANGE = "24h"


@dataclass(frozen=True)
class Series:
    """One chart: bucket starts (Unix seconds) and values (None: nothing to show in that bucket)."""

    title: str
    t: tuple[float, ...]
    values: tuple[float | None, ...]
    total: float | None  # what the chart adds up to (its card's figure); None for a rate
    percent: bool = False
    unit: str = ""

    @property
    def empty(self) -> bool:
        """Nothing happened in the range: the page says so instead of drawing an axis to a made-up top."""
        return not any(self.values)

    def as_json(self) -> dict:
        return {"title": self.title, "t": list(self.t), "v": list(self.values), "percent": self.percent,
                "unit": self.unit}


def success_rate(succeeded: list[dict], failed: list[dict]) -> list[dict]:
    """Per bucket, succeeded / (succeeded + failed); None where no run ended."""
    result = []
    for ok, bad in zip(succeeded, failed, strict=True):
        ended = ok["value"] + bad["value"]
        result.append({"t": ok["t"], "value": ok["value"] / ended if ended else None})
    return result


def overall_rate(succeeded: list[dict], failed: list[dict]) -> float | None:
    """The range's success rate (from the same points as the chart); None if no run ended."""
    ok, bad = sum(p["value"] for p in succeeded), sum(p["value"] for p in failed)
    return ok / (ok + bad) if ok + bad else None


def series(title: str, points: list[dict], *, percent: bool = False, unit: str = "") -> Series:
    """A chart of the API's ``points`` (``{"t": RFC 3339, "value"}``), totalled unless a rate."""
    stamps = tuple(times.parse(p["t"]).timestamp() for p in points)
    values = tuple(p["value"] for p in points)
    total = None if percent else _number(sum(v for v in values if v is not None))
    return Series(title, stamps, values, total, percent, unit)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 4)
