"""The web UI's second pass in a real browser (issue 25), runs: readable times, the current step and
durations in the runs list, a graph that fits its box, the event log, and the run's timeline.

Headless Chromium (Debian's package) as in test_ui.py, whose fixtures these tests share; screenshots
go to test-artifacts/ui/.
"""

from __future__ import annotations

import re

import pytest

from tests.integration import test_ui
from tests.integration.conftest import publish, start, wait_for, wait_run
from tests.integration.test_ui import node, shot, sign_in

# test_ui.py's fixtures: the app on a loopback server, headless Chromium and a page.
server, browser, page = test_ui.server, test_ui.browser, test_ui.page

pytestmark = pytest.mark.usefixtures("engine_processes")

LOCAL_TIME = re.compile(r"^(\w{3} \d{1,2}, \d{4} )?\d\d:\d\d:\d\d · (just now|\d+ (s|min|h|d) ago)$")
FLAKY_THEN_BROKEN = {
    "name": "Retries, then a failure (UI)",
    "steps": [
        {"id": "fetch", "type": "tool", "tool": "fail", "args": {"message": "not yet", "until_attempt": 3},
         "retry": {"max_attempts": 3, "initial_delay_s": 0.4, "jitter": False}},
        {"id": "charge", "type": "tool", "tool": "fail", "needs": ["fetch"],
         "args": {"message": "can't charge 'card' — declined"}, "retry": {"max_attempts": 1}},
        {"id": "notify", "type": "tool", "tool": "echo", "needs": ["charge"], "args": {}},
    ],
}


def wide(count: int) -> dict:
    """A workflow of ``count`` echo steps: a fan-out of chains that rejoin, wider than any screen."""
    steps = [{"id": "s00", "type": "tool", "tool": "echo", "args": {}}]
    for i in range(1, count - 1):
        need = "s00" if i <= 4 else f"s{i - 4:02d}"
        steps.append({"id": f"s{i:02d}", "type": "tool", "tool": "echo", "needs": [need], "args": {"i": i}})
    steps.append({"id": "join", "type": "tool", "tool": "echo", "needs": [s["id"] for s in steps[-4:]], "args": {}})
    return {"name": f"{count} steps (UI)", "steps": steps}


def test_a_failed_run_shows_its_retries_on_the_timeline_and_opens_the_log_at_the_failure(page, server, api, tokens):
    from playwright.sync_api import expect

    run_id = start(api, publish(api, FLAKY_THEN_BROKEN))
    assert wait_run(api, run_id, timeout=60)["status"] == "failed"
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/runs/{run_id}")

    # The timeline: fetch has three executions (two failed, one succeeded) with two backoff gaps between.
    timeline = page.locator("svg.timeline")
    expect(timeline).to_be_visible()
    fetch_bars = timeline.locator("rect").filter(has=page.locator("title", has_text=re.compile(r"^fetch ·")))
    expect(fetch_bars.and_(page.locator("rect.tl-backoff"))).to_have_count(2)
    expect(fetch_bars.and_(page.locator("rect.tl-running.bad"))).to_have_count(2)
    expect(fetch_bars.and_(page.locator("rect.tl-running.ok"))).to_have_count(1)
    expect(fetch_bars.and_(page.locator("rect.tl-queued"))).to_have_count(3)
    backoff = fetch_bars.and_(page.locator("rect.tl-backoff")).first.locator("title").text_content()
    assert "retry in 0.40 s after tool_failed" in backoff
    box = timeline.bounding_box()
    assert box["width"] <= page.locator("#h-timeline").locator("..").bounding_box()["width"]
    timeline.scroll_into_view_if_needed()
    shot(page, "timeline_retries")

    # The log opens at the first failure, expanded; errors read as text, quotes and all.
    failure = page.locator("#event-log li.failure").filter(has_text="step_failed").first
    expect(failure.locator("details")).to_have_attribute("open", "")
    assert page.evaluate("""() => { const log = document.getElementById('event-log');
        const first = document.getElementById('event-' + log.dataset.firstFailure);
        return first.offsetTop - log.offsetTop >= log.scrollTop - 1
            && first.offsetTop - log.offsetTop < log.scrollTop + log.clientHeight; }""")
    expect(failure).to_contain_text("can't charge 'card' — declined")
    expect(page.locator("tr[data-step-row=charge] p.err")).to_contain_text("can't charge 'card' — declined")
    assert "\\u0027" not in page.content()
    page.locator("#event-log li").first.locator("summary").click()
    expect(page.locator("#event-log li").first.locator("pre")).to_be_visible()

    # Times are local and relative, ISO on hover; durations read as durations.
    created = page.locator(".run-head time").first
    expect(created).to_have_text(LOCAL_TIME)
    assert re.match(r"^\d{4}-\d\d-\d\dT", created.get_attribute("title"))
    expect(page.locator("tr[data-step-row=charge] td").nth(4)).to_have_text(re.compile(r"^\d+(\.\d+)? s$"))
    expect(page.locator(".run-head")).to_contain_text(re.compile(r"took \d+(\.\d+)? s"))
    page.locator("#h-log").scroll_into_view_if_needed()
    shot(page, "run_failed")


def test_the_runs_list_shows_the_current_step_and_durations(page, server, api, tokens):
    from playwright.sync_api import expect

    waits = publish(api, {"name": "Waits (UI list)", "steps": [
        {"id": "first", "type": "tool", "tool": "echo", "args": {}},
        {"id": "review", "type": "approval", "needs": ["first"], "prompt": "ok?"}]})
    run_id = start(api, waits)
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["status"] == "waiting", 60, "the run to wait")
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/runs?workflow_id={waits}")
    row = page.locator("table.list tbody tr").filter(has_text=run_id)
    expect(row.locator("[data-current-step]")).to_have_text("review")
    expect(row.locator("[data-duration]")).to_have_text(re.compile(r"^\d.* so far$"))
    expect(row.locator("time")).to_have_text(LOCAL_TIME)
    shot(page, "runs_current_step")
    # Its timeline shows the wait for a person, still open.
    page.goto(f"{server}/runs/{run_id}")
    waiting = page.locator("svg.timeline rect.tl-waiting.open")
    expect(waiting).to_have_count(1)
    expect(waiting.locator("title")).to_contain_text("review · attempt 1 · waiting")
    expect(waiting.locator("title")).to_contain_text("approval")
    api.post(f"/runs/{run_id}/cancel")


def test_a_40_step_graph_fits_its_box_zooms_and_the_run_is_followed_live(page, server, api, tokens):
    from playwright.sync_api import expect

    workflow = publish(api, wide(40))
    sign_in(page, server, tokens["operator"])
    page.goto(f"{server}/workflows/{workflow}")
    svg = page.locator("svg.graph")
    expect(svg.locator("g.node")).to_have_count(40)
    wrap = page.locator(".graph-wrap").bounding_box()
    for i in (0, 39):  # the first and the last node are inside the box
        b = svg.locator("g.node").nth(i).bounding_box()
        assert wrap["x"] <= b["x"] and b["x"] + b["width"] <= wrap["x"] + wrap["width"] + 1
    shot(page, "graph_40_nodes")
    def view_box():
        return [float(v) for v in svg.get_attribute("viewBox").split()]

    fitted = view_box()
    page.get_by_role("button", name="Zoom in").click()
    assert view_box()[2] < fitted[2]
    page.get_by_role("button", name="Fit").click()
    assert view_box() == fitted

    # Started from the form, the run is followed live: the log keeps its newest event in view.
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"/runs/run_"))
    expect(page.locator("svg.timeline")).to_have_attribute("data-live", "false", timeout=90_000)
    expect(node(page, "join")).to_have_attribute("data-status", "succeeded")
    assert page.locator("#event-log li").count() > 40
    assert page.evaluate("""() => { const log = document.getElementById('event-log');
        return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }""")
    expect(page.locator("svg.timeline text.row-label")).to_have_count(40)
    shot(page, "run_40_nodes")


def test_a_queued_step_reads_queued_in_the_graph_the_table_and_the_legend(page, server, api, tokens):
    from playwright.sync_api import expect

    stuck = publish(api, {"name": "Queued forever (UI)", "steps": [
        {"id": "stuck", "type": "tool", "tool": "echo", "queue": "nobody-consumes-this", "args": {}}]})
    run_id = start(api, stuck)
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["steps"][0]["status"] == "queued", 30, "the step to queue")
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/runs/{run_id}")
    expect(node(page, "stuck").locator("text.state")).to_have_text(re.compile("^Queued"))
    expect(page.locator("tr[data-step-row=stuck] .badge")).to_have_text("Queued")
    for status in ("pending", "queued", "running", "retrying", "waiting", "succeeded", "failed", "cancelled", "skipped"):
        expect(page.locator(f'ul.legend [data-legend="{status}"]')).to_have_count(1)
    expect(page.locator("svg.timeline rect.tl-queued.open")).to_have_count(1)
    shot(page, "run_queued")
    api.post(f"/runs/{run_id}/cancel")


def test_the_timeline_of_a_live_run_grows_while_a_long_attempt_runs(page, server, api, tokens):
    from playwright.sync_api import expect

    run_id = start(api, publish(api, {"name": "A long attempt (UI)", "steps": [
        {"id": "slow", "type": "tool", "tool": "sleep", "args": {"seconds": 12}}]}))
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["steps"][0]["status"] == "running", 60, "the step to run")
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/runs/{run_id}")
    running = page.locator("svg.timeline rect.tl-running.open")
    expect(running).to_have_count(1)
    expect(page.locator("svg.timeline")).to_have_attribute("data-live", "true")
    first = running.locator("title").text_content()
    # No event arrives while the attempt runs: the page redraws on its own and the bar's duration grows.
    page.wait_for_function("""(first) => {
        const bar = document.querySelector("svg.timeline rect.tl-running.open title");
        return bar && bar.textContent !== first; }""", arg=first, timeout=20_000)
    assert "still going" in running.locator("title").text_content()
    api.post(f"/runs/{run_id}/cancel")


def test_a_for_each_steps_items_are_collapsed_on_the_timeline_until_shown(page, server, api, tokens):
    from playwright.sync_api import expect

    run_id = start(api, publish(api, {"name": "For each (UI)", "steps": [
        {"id": "map", "type": "tool", "tool": "echo", "for_each": "input.numbers", "max_parallel": 4,
         "args": {"value": "{{ item }}"}},
        {"id": "after", "type": "tool", "tool": "echo", "needs": ["map"], "args": {}}]}), {"numbers": list(range(6))})
    assert wait_run(api, run_id, timeout=90)["status"] == "succeeded"
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/runs/{run_id}")
    labels = page.locator("svg.timeline text.row-label")
    expect(labels).to_have_count(2)
    expect(labels.first).to_have_text("map (6 items)")
    expect(page.locator("svg.timeline rect").filter(has=page.locator("title", has_text="map[5] ·"))).to_have_count(2)
    page.get_by_role("link", name="Show the 6 items of map").click()
    expect(labels).to_have_count(8)
    expect(labels.nth(1)).to_have_text("map[0]")
    expect(labels.nth(6)).to_have_text("map[5]")
    shot(page, "timeline_for_each")
    page.get_by_role("link", name="Collapse the 6 items of map").click()
    expect(labels).to_have_count(2)
