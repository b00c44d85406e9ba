"""The start form in a real browser (issue 25): after an error it keeps what was typed and shows
every error beside its field."""

from __future__ import annotations

import re

import pytest

from tests.integration import test_ui
from tests.integration.conftest import publish
from tests.integration.test_ui import shot, sign_in

# test_ui.py's fixtures: the app on a loopback server, headless Chromium and a page.
server, browser, page = test_ui.server, test_ui.browser, test_ui.page

pytestmark = pytest.mark.usefixtures("engine_processes")

STRICT = {
    "name": "Strict input (UI)",
    "input_schema": {"type": "object", "required": ["ticket"], "properties": {
        "ticket": {"type": "string", "minLength": 3, "description": "At least three characters"},
        "priority": {"type": "integer", "minimum": 1},
        "meta": {"type": "object"},
        "team": {"enum": ["blue", "red"]},
        "urgent": {"type": "boolean"}}},
    "steps": [{"id": "a", "type": "tool", "tool": "echo", "args": {}}],
}


def test_the_start_form_keeps_its_values_and_shows_every_error_beside_its_field(page, server, api, tokens):
    from playwright.sync_api import expect

    workflow = publish(api, STRICT)
    sign_in(page, server, tokens["operator"])
    page.goto(f"{server}/workflows/{workflow}")
    page.get_by_label(re.compile("^ticket")).fill("ab")
    page.get_by_label(re.compile("^priority")).fill("0")
    page.get_by_label(re.compile("^meta")).fill("{oops")
    page.get_by_label(re.compile("^team")).select_option("red")
    page.get_by_label(re.compile("^urgent")).check()
    page.get_by_role("button", name="Start run").click()

    expect(page.locator(".field-error")).to_have_count(3)
    for name, text in (("ticket", "'ab' is too short"), ("priority", "0 is less than the minimum of 1"),
                       ("meta", "meta must be valid JSON")):
        field = page.get_by_label(re.compile(f"^{name}"))
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(page.locator(f"#err-{name}")).to_have_text(text)
        # Beside its field: the error is in the field's own block and the field points at it.
        assert f"err-{name}" in field.get_attribute("aria-describedby")
        expect(page.locator(".field.invalid").filter(has=field).locator(".field-error")).to_have_count(1)
    expect(page.get_by_label(re.compile("^ticket"))).to_have_value("ab")
    expect(page.get_by_label(re.compile("^priority"))).to_have_value("0")
    expect(page.get_by_label(re.compile("^meta"))).to_have_value("{oops")
    expect(page.get_by_label(re.compile("^team"))).to_have_value("red")
    expect(page.get_by_label(re.compile("^urgent"))).to_be_checked()
    shot(page, "start_form_errors")

    page.get_by_label(re.compile("^ticket")).fill("T-42")
    page.get_by_label(re.compile("^priority")).fill("2")
    page.get_by_label(re.compile("^meta")).fill('{"from": "the form"}')
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"/runs/run_"))
    run = api.get(f"/runs/{page.url.rsplit('/', 1)[1]}").get_json()
    assert run["input"] == {"ticket": "T-42", "priority": 2, "meta": {"from": "the form"}, "team": "red",
                            "urgent": True}
