"""Accessibility of every page of the web UI (issue 25): axe-core (vendored from the npm registry in
tests/integration/vendor, injected by Playwright) finds no serious or critical violation, which
includes every control having a label, names for buttons and links, and colour contrast."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import test_ui
from tests.integration.conftest import publish, start, wait_for, wait_run
from tests.integration.test_ui import shot, sign_in
from tests.integration.test_ui_runs import FLAKY_THEN_BROKEN

# test_ui.py's fixtures: the app on a loopback server, headless Chromium and a page.
server, browser, page = test_ui.server, test_ui.browser, test_ui.page

pytestmark = pytest.mark.usefixtures("engine_processes")

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
BLOCKING = ("serious", "critical")
WAITS = {"name": "Waits (a11y)", "input_schema": {"type": "object", "required": ["ticket"], "properties": {
    "ticket": {"type": "string", "minLength": 3}, "urgent": {"type": "boolean"}, "meta": {"type": "object"}}},
    "steps": [{"id": "first", "type": "tool", "tool": "echo", "args": {}},
              {"id": "review", "type": "approval", "needs": ["first"], "prompt": "ok?"}]}


def blocking_violations(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
        .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                      nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + " :: " + n.failureSummary)}))""")
    return [v for v in found if v["impact"] in BLOCKING]


def test_every_page_passes_axe_with_no_serious_or_critical_violation(page, server, api, tokens):
    from playwright.sync_api import expect

    waits = publish(api, WAITS)
    waiting = start(api, waits, {"ticket": "T-1"})
    failed = start(api, publish(api, FLAKY_THEN_BROKEN))
    wait_for(lambda: api.get(f"/runs/{waiting}").get_json()["status"] == "waiting", 60, "the run to wait")
    wait_run(api, failed, timeout=60)
    api.put(f"/workflows/{waits}", json={**WAITS, "name": "Waits (a11y) v2"})

    page.goto(f"{server}/sign-in")
    pages = {"sign_in": blocking_violations(page)}
    sign_in(page, server, tokens["admin"])
    visits = {
        "command_center": "/", "runs": "/runs", "run_waiting": f"/runs/{waiting}", "run_failed": f"/runs/{failed}",
        "workflows": "/workflows", "workflow": f"/workflows/{waits}", "editor": f"/workflows/{waits}/edit",
        "versions_diff": f"/workflows/{waits}/diff", "queues": "/queues", "analytics": "/analytics",
    }
    for name, path in visits.items():
        page.goto(f"{server}{path}")
        page.wait_for_load_state("networkidle") if name == "analytics" else None
        pages[name] = blocking_violations(page)

    # The pages in the states that show more controls: a start form with its errors, an editor with an error.
    page.goto(f"{server}/workflows/{waits}")
    page.get_by_label("meta").fill("{oops")
    page.get_by_label("ticket").fill("ab")
    page.get_by_role("button", name="Start run").click()
    expect(page.locator(".field-error")).to_have_count(2)
    pages["start_form_errors"] = blocking_violations(page)
    page.goto(f"{server}/workflows/{waits}/edit")
    page.get_by_label("Definition (JSON), checked by the API as you type").fill('{"name": "x", "steps": [{"id": 1}]}')
    expect(page.locator("[data-valid]")).to_have_attribute("data-valid", "false")
    pages["editor_error"] = blocking_violations(page)
    shot(page, "editor_error_a11y")

    failing = {name: found for name, found in pages.items() if found}
    assert not failing, failing
    api.post(f"/runs/{waiting}/cancel")
