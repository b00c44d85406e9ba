"""The workflow language in the web UI, in a real browser: a skipped branch reads "Skipped (Condition)",
a for-each step is one node with its items' progress that leads to its items, a sub-run node leads to
its child run, and the child's page links back to its parent.

Headless Chromium (Debian's package) as in test_ui.py, whose fixtures these tests share; screenshots
go to test-artifacts/ui/.
"""

from __future__ import annotations

import pytest

from tests.integration import test_ui
from tests.integration.conftest import publish, start, wait_run
from tests.integration.test_ui import node, shot, sign_in

server, browser, page = test_ui.server, test_ui.browser, test_ui.page

pytestmark = pytest.mark.usefixtures("engine_processes")


def test_conditions_for_each_and_sub_runs_in_the_graph(page, server, api, tokens):
    from playwright.sync_api import expect

    child = publish(api, {"name": "child (UI)", "steps": [{"id": "leaf", "type": "tool", "tool": "echo",
                                                         "args": {"n": "{{ input.n }}"}}]})
    workflow = publish(api, {"name": "language (UI)", "steps": [
        {"id": "route", "type": "tool", "tool": "echo", "args": {"kind": "{{ input.kind }}"}},
        {"id": "refund", "type": "tool", "tool": "echo", "needs": ["route"],
         "when": "steps.route.output.kind == 'refund'"},
        {"id": "each", "type": "tool", "tool": "fail", "needs": ["route"], "for_each": "input.jobs",
         "min_succeeded": 3, "retry": {"max_attempts": 1}, "args": {"until_attempt": "{{ item }}"}},
        {"id": "sub", "type": "workflow", "workflow_id": child, "needs": ["route"], "input": {"n": 7}},
    ]})
    run = wait_run(api, start(api, workflow, {"kind": "question", "jobs": [1, 99, 1, 1]}))
    assert run["status"] == "succeeded", run
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/runs/{run['id']}")

    expect(node(page, "refund")).to_contain_text("Skipped (Condition)")
    expect(node(page, "each")).to_contain_text("3/4, 1 failed")
    shot(page, "run-for-each-and-sub-run")

    node(page, "each").click()
    expect(page.locator("h1")).to_contain_text("Items of each")
    expect(page.locator("table.items tbody tr")).to_have_count(4)
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.items tbody tr")).to_have_count(1)
    expect(page.locator("table.items tbody tr").first).to_have_attribute("data-index", "1")
    shot(page, "for-each-items")

    page.goto(f"{server}/runs/{run['id']}")
    node(page, "sub").click()
    expect(page.locator("h1")).to_contain_text(run["children"][0])
    expect(page.locator("p.parent")).to_contain_text(run["id"])
    page.locator("p.parent a").click()
    expect(page.locator("h1")).to_contain_text(run["id"])
