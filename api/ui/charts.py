"""Bar charts of time series as plain numbers for inline SVG — pure."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 600, 160


@dataclass(frozen=True)
class Bar:
    t: str
    value: float | None
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    top: float  # the value at the top of the chart
    percent: bool
    width: int = WIDTH
    height: int = HEIGHT


def success_rate(succeeded: list[dict], failed: list[dict]) -> list[dict]:
    """Per bucket, succeeded / (succeeded + failed); None where no run ended."""
    result = []
    for ok, bad in zip(succeeded, failed, strict=True):
        ended = ok["value"] + bad["value"]
        result.append({"t": ok["t"], "value": ok["value"] / ended if ended else None})
    return result


def bars(points: list[dict], *, percent: bool = False) -> Chart:
    """One bar per point, scaled to the largest value (1.0 for a percentage); None draws no bar."""
    values = [p["value"] for p in points if p["value"] is not None]
    top = 1.0 if percent else max(values + [0]) or 1
    slot = WIDTH / max(len(points), 1)
    result = []
    for i, p in enumerate(points):
        h = 0.0 if p["value"] is None else HEIGHT * p["value"] / top
        result.append(Bar(p["t"], p["value"], round(i * slot + slot * 0.1, 2), round(HEIGHT - h, 2),
                          round(slot * 0.8, 2), round(h, 2)))
    return Chart(tuple(result), top, percent)
