"""The workflow editor in a real browser (issue 25): a definition checked as you type by the API's own
dry run (PUT /workflows/{id}?dry_run=true), the graph previewed, publishing a new version, and a diff
between versions; in JSON and in YAML."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration import test_ui
from tests.integration.conftest import publish, unique
from tests.integration.test_ui import shot, sign_in

# test_ui.py's fixtures: the app on a loopback server, headless Chromium and a page.
server, browser, page = test_ui.server, test_ui.browser, test_ui.page

pytestmark = pytest.mark.usefixtures("engine_processes")

TWO = {"name": "Edited (UI)", "steps": [
    {"id": "fetch", "type": "tool", "tool": "echo", "args": {"x": 1}},
    {"id": "think", "type": "tool", "tool": "echo", "needs": ["fetch"], "args": {}}]}


def test_a_dry_run_checks_a_definition_as_a_publish_would_and_stores_nothing(api):
    workflow = publish(api, TWO)
    checked = api.put(f"/workflows/{workflow}?dry_run=true", json={**TWO, "name": "v2 maybe"})
    assert checked.status_code == 200
    assert checked.get_json()["version"] == 2 and checked.get_json()["name"] == "v2 maybe"
    assert api.get(f"/workflows/{workflow}").get_json()["version"] == 1  # nothing stored
    broken = {**TWO, "steps": [*TWO["steps"], {"id": "late", "type": "tool", "tool": "echo", "needs": ["ghost"]}]}
    refused, published = (api.put(f"/workflows/{workflow}{q}", json=broken) for q in ("?dry_run=true", ""))
    assert refused.status_code == published.status_code == 400
    assert refused.get_json()["error"] == published.get_json()["error"]
    assert api.put(f"/workflows/{workflow}?dry_run=maybe", json=TWO).get_json()["error"]["details"] == {
        "field": "dry_run"}
    assert api.put(f"/workflows/{unique('wf')}?dry_run=true", json=TWO).get_json()["version"] == 1


def test_edit_check_as_you_type_preview_publish_and_diff(page, server, api, tokens):
    from playwright.sync_api import expect

    workflow = publish(api, TWO)
    sign_in(page, server, tokens["admin"])
    page.goto(f"{server}/workflows/{workflow}")
    page.get_by_role("link", name="Edit the definition").click()
    editor = page.get_by_label(re.compile("^Definition"))
    assert json.loads(editor.input_value())["steps"][1]["id"] == "think"
    expect(page.locator("[data-valid]")).to_have_attribute("data-valid", "true")
    expect(page.locator("#editor-check svg.graph g.node")).to_have_count(2)

    # An error as you type: the API's own 400, listed beside the text; the preview still follows the draft.
    draft = json.loads(editor.input_value())
    draft["steps"].append({"id": "late", "type": "tool", "tool": "echo", "needs": ["ghost"]})
    draft["steps"].append({"id": "odd", "type": "teleport"})
    editor.fill(json.dumps(draft, indent=2))
    expect(page.locator("[data-valid]")).to_have_attribute("data-valid", "false")
    problems = page.locator("ul.problems li")
    expect(problems.filter(has_text="ghost")).to_have_count(1)
    expect(problems.filter(has_text="teleport")).not_to_have_count(0)
    expect(editor).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#editor-check svg.graph g.node")).to_have_count(4)
    shot(page, "editor_error")
    editor.fill(editor.input_value()[:-3])  # text that is not JSON at all
    expect(problems.first).to_contain_text(re.compile(r"not valid JSON at line \d+, column \d+"))

    # Fixed: valid, the preview and the changes from v1 follow; publish makes v2.
    draft["steps"] = [*TWO["steps"], {"id": "late", "type": "tool", "tool": "echo", "needs": ["think"]}]
    editor.fill(json.dumps(draft, indent=2))
    expect(page.locator("[data-valid]")).to_have_attribute("data-valid", "true")
    expect(page.locator(".check")).to_contain_text("publishing makes version 2")
    expect(page.locator("#editor-check svg.graph g.node")).to_have_count(3)
    expect(page.locator("pre.diff .d-added").filter(has_text='"id": "late"')).to_have_count(1)
    shot(page, "editor_valid")
    page.get_by_role("button", name="Publish a new version").click()
    expect(page.locator(".flash.ok")).to_have_text("Published version 2.")
    assert [s["id"] for s in api.get(f"/workflows/{workflow}").get_json()["definition"]["steps"]] == [
        "fetch", "think", "late"]

    # The diff between versions.
    page.get_by_role("link", name="Changes from the version before").click()
    expect(page.get_by_label("From version")).to_have_value("1")
    expect(page.get_by_label("To version")).to_have_value("2")
    expect(page.locator("pre.diff .d-added").filter(has_text='"needs"')).not_to_have_count(0)
    expect(page.locator("pre.diff .d-removed")).to_have_count(0)
    shot(page, "versions_diff")


def test_a_new_workflow_written_in_yaml_is_published(page, server, api, tokens):
    from playwright.sync_api import expect

    workflow = unique("yaml")
    sign_in(page, server, tokens["admin"])
    page.goto(f"{server}/workflows")
    page.get_by_label("New workflow id").fill(workflow)
    page.get_by_role("button", name="Open the editor").click()
    page.get_by_role("link", name="YAML").click()
    expect(page.get_by_label("Format")).to_have_value("yaml")
    editor = page.get_by_label(re.compile("^Definition"))
    editor.fill("name: From YAML\nsteps:\n  - id: hello\n    type: tool\n    tool: echo\n    args: {text: hi}\n"
                "  - id: after\n    type: tool\n    tool: echo\n    needs: [hello\n")
    expect(page.locator("ul.problems li").first).to_contain_text(re.compile(r"not valid YAML at line \d+"))
    editor.fill(editor.input_value().replace("[hello", "[hello]"))
    expect(page.locator(".check")).to_contain_text("publishing makes version 1")
    page.get_by_role("button", name="Publish a new version").click()
    expect(page.locator(".flash.ok")).to_have_text("Published version 1.")
    assert api.get(f"/workflows/{workflow}").get_json()["definition"]["steps"][1]["needs"] == ["hello"]


def test_a_refused_publish_keeps_the_text_and_a_viewer_cannot_publish(page, server, api, tokens):
    from playwright.sync_api import expect

    workflow = publish(api, TWO)
    sign_in(page, server, tokens["admin"])
    page.goto(f"{server}/workflows/{workflow}/edit")
    editor = page.get_by_label(re.compile("^Definition"))
    broken = editor.input_value().replace('"echo"', '"no-such-tool"', 1)
    # Publish before the check as you type has answered: the server refuses and keeps the text.
    page.evaluate("(text) => { document.getElementById('definition').value = text; }", broken)
    page.get_by_role("button", name="Publish a new version").click()
    expect(page.locator(".flash.error").first).to_contain_text("Not published")
    expect(editor).to_have_value(broken)
    expect(page.locator("ul.problems li").filter(has_text="no-such-tool")).not_to_have_count(0)
    assert api.get(f"/workflows/{workflow}").get_json()["version"] == 1
    page.context.clear_cookies()
    sign_in(page, server, tokens["viewer"])
    page.goto(f"{server}/workflows/{workflow}/edit")
    expect(page.get_by_role("button", name="Publish a new version")).to_have_count(0)
