"""The analytics page in a real browser (issue 25): uPlot charts (vendored, no CDN) with axes, values
on hover and a time-range picker, and cards that agree with the charts' totals."""

from __future__ import annotations

import pytest

from tests.integration import test_ui
from tests.integration.conftest import publish, start, wait_run
from tests.integration.test_ui import shot, sign_in

# test_ui.py's fixtures: the app on a loopback server, headless Chromium and a page.
server, browser, page = test_ui.server, test_ui.browser, test_ui.page

pytestmark = pytest.mark.usefixtures("engine_processes")

QUICK = {"name": "Quick (UI charts)", "steps": [
    {"id": "a", "type": "tool", "tool": "echo", "args": {}},
    {"id": "b", "type": "tool", "tool": "echo", "needs": ["a"], "args": {}}]}


def test_charts_have_axes_values_on_hover_a_range_and_totals_that_agree(page, server, api, tokens):
    from playwright.sync_api import expect

    workflow = publish(api, QUICK)
    for run_id in [start(api, workflow) for _ in range(3)]:
        assert wait_run(api, run_id)["status"] == "succeeded"
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server) else None)
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/analytics?range=1h")
    expect(page.get_by_label("Time range")).to_have_value("1h")
    expect(page.locator(".chart-card")).to_have_count(4)
    charts = page.locator("div.chart")
    expect(charts.first.locator("canvas")).to_have_count(1)
    expect(charts.nth(1).locator(".u-axis")).to_have_count(2)  # time and value axes

    # The cards are the charts' totals, computed from the same points.
    for card, chart in (("runs", 1), ("steps", 2), ("credits", 3)):
        heading = page.locator(".chart-card").nth(chart).locator("h2")
        total = page.locator(f'[data-card="{card}"]').text_content()
        if page.locator(".chart-card").nth(chart).locator("[data-empty]").count():
            assert total == "0"
        else:
            expect(heading.locator("[data-total]")).to_have_text(f"{total} in range")
    assert int(page.locator('[data-card="runs"]').text_content()) >= 3
    assert float(page.locator('[data-card="steps"]').text_content()) >= 6

    # Hovering the fullest bar shows its bucket and its value in the chart's legend.
    started = charts.nth(1)
    box = started.locator(".u-over").bounding_box()
    top, x = started.evaluate("""(chart) => { const [t, v] = chart.plot.data, i = v.indexOf(Math.max(...v));
        return [v[i], chart.plot.valToPos(t[i], "x")]; }""")
    page.mouse.move(box["x"] + x, box["y"] + box["height"] / 2)
    value = started.locator(".u-legend .u-series").nth(1).locator(".u-value")
    expect(value).to_have_text(str(top))
    expect(started.locator(".u-legend .u-series").first.locator(".u-value")).not_to_have_text("—")
    shot(page, "analytics")

    page.get_by_label("Time range").select_option("30d")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(f"{server}/analytics?range=30d")
    expect(page.locator(".chart-card")).to_have_count(4)
    assert outside == []  # no CDN: every file comes from the app
    assert page.request.get(f"{server}/ui/static/vendor/uPlot.LICENSE").ok
