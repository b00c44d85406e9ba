"""The web UI in a real browser (issue 7): headless Chromium (Debian's package) drives the real app,
served on loopback, against the suite's PostgreSQL, Redis, workers and scheduler.

Screenshots of each page go to test-artifacts/ui/*.png. Without /usr/bin/chromium these tests skip
on a laptop and fail in CI (SWITCHYARD_REQUIRE_SERVICES=1); `make install` installs it as root.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from flask.sessions import SecureCookieSessionInterface

from tests.integration.conftest import REQUIRE, ROOT, Api, publish, served, signed_in, start, wait_for

pytestmark = pytest.mark.usefixtures("engine_processes")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "test-artifacts" / "ui"
TIMEOUT_MS = 30_000

TRIAGE = {
    "name": "Triage ticket (UI)",
    "input_schema": {"type": "object", "required": ["ticket"],
                     "properties": {"ticket": {"type": "string", "description": "The ticket's id"},
                                    "priority": {"type": "integer"}, "urgent": {"type": "boolean"}}},
    "steps": [
        {"id": "fetch", "type": "tool", "tool": "echo", "args": {"text": "{{ input.ticket }}"}},
        {"id": "think", "type": "tool", "tool": "sleep", "needs": ["fetch"], "args": {"seconds": 0.8}},
        {"id": "check", "type": "tool", "tool": "echo", "needs": ["fetch"], "args": {"ok": True}},
        {"id": "sum", "type": "llm", "needs": ["think", "check"], "model": "scripted",
         "prompt": "Summarise {{ input.ticket }}"},
        {"id": "review", "type": "approval", "needs": ["sum"], "prompt": "Send the summary?"},
        {"id": "act", "type": "tool", "tool": "echo", "needs": ["review"], "args": {"done": True}},
    ],
}
WAITS = {
    "name": "Waits for a person",
    "steps": [
        {"id": "first", "type": "tool", "tool": "echo", "args": {}},
        {"id": "review", "type": "approval", "needs": ["first"], "prompt": "ok?"},
        {"id": "after", "type": "tool", "tool": "echo", "needs": ["review"], "args": {}},
    ],
}


@pytest.fixture(scope="module")
def server(settings):
    """The whole app (UI and API) on a real threaded HTTP server on loopback."""
    from api import create_app

    with served(create_app(settings.model_copy(update={"stream_keepalive_s": 0.5}))) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `apt-get install -y chromium` (make install does it as root)"
        if REQUIRE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # a loaded 2-core machine: steps take their time
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page, base: str, token: str) -> None:
    page.goto(f"{base}/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")


def node(page, step_id: str):
    return page.locator(f'svg.graph g.node[data-step="{step_id}"]')


def test_sign_in_start_watch_approve_and_download(page, server, api, tokens):
    from playwright.sync_api import expect

    workflow = publish(api, TRIAGE)
    page.goto(f"{server}/runs")
    expect(page).to_have_url(re.compile(r"/sign-in"))
    shot(page, "sign_in")
    sign_in(page, server, tokens["operator"])

    # Start a run from the form generated from the input schema.
    page.goto(f"{server}/workflows/{workflow}")
    expect(page.get_by_label(re.compile("^ticket"))).to_be_visible()
    shot(page, "workflow")
    page.get_by_label(re.compile("^ticket")).fill("T-42")
    page.get_by_label(re.compile("^priority")).fill("2")
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"/runs/run_"))
    run_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.notReloaded = true")

    # The graph turns green step by step, live from the stream, without a reload.
    for step in ("fetch", "check", "think", "sum"):
        expect(node(page, step)).to_have_class(re.compile(r"\bok\b"))
        expect(node(page, step).locator("text.state")).to_have_text(re.compile("^Success"))
    expect(node(page, "review")).to_have_attribute("data-status", "waiting")
    expect(node(page, "review").locator("text.state")).to_have_text(re.compile("^Waiting"))
    expect(node(page, "act")).to_have_attribute("data-status", "pending")
    expect(page.locator("#event-log li").filter(has_text="step_started").first).to_be_visible()
    expect(page.locator("#h-diag")).to_be_visible()  # the diagnosis of a waiting run
    assert page.evaluate("window.notReloaded") is True
    shot(page, "run_waiting")

    # Approve it from the Command Center.
    page.goto(f"{server}/")
    approval = page.locator("article.approval").filter(has_text=run_id)
    expect(approval).to_be_visible()
    expect(page.locator("#h-active").locator("..").get_by_text(run_id)).to_be_visible()
    shot(page, "command_center")
    approval.get_by_label("Comment").fill("looks right")
    approval.get_by_role("button", name="Approve").click()
    expect(page.locator(".flash.ok")).to_have_text("Approval approved.")

    page.goto(f"{server}/runs/{run_id}")
    expect(page.locator("[data-run-status]")).to_have_attribute("data-run-status", "succeeded")
    expect(node(page, "act")).to_have_class(re.compile(r"\bok\b"))
    expect(page.locator("[data-control]")).to_have_count(1)  # only rerun is allowed from succeeded
    expect(page.locator('[data-control="rerun"]')).to_be_visible()
    shot(page, "run_succeeded")

    # The evidence pack downloads as a zip.
    with page.expect_download() as info:
        page.get_by_role("link", name="Evidence pack (zip)").click()
    path = info.value.path()
    assert zipfile.is_zipfile(path)
    assert "run.json" in zipfile.ZipFile(path).namelist()

    # The other pages, on a laptop and on a phone.
    page.goto(f"{server}/runs?workflow_id={workflow}")
    expect(page.locator("table.list").get_by_text(run_id)).to_be_visible()
    shot(page, "runs")
    page.goto(f"{server}/workflows")
    shot(page, "workflows")
    page.goto(f"{server}/queues")
    expect(page.get_by_role("heading", name="Workers", exact=True)).to_be_visible()
    expect(page.locator("table.list").nth(0).get_by_text("steps", exact=True)).to_be_visible()
    expect(page.locator("table.list").nth(1).locator("tbody code").first).to_contain_text("switchyard")
    shot(page, "queues")
    page.goto(f"{server}/analytics")
    expect(page.locator(".chart-card")).to_have_count(4)
    shot(page, "analytics")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server}/runs/{run_id}")
    shot(page, "run_phone")


def test_cancel_a_run_from_its_page(page, server, api, tokens):
    from playwright.sync_api import expect

    run_id = start(api, publish(api, WAITS))
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["status"] == "waiting", 60, "the run to wait")
    sign_in(page, server, tokens["operator"])
    page.goto(f"{server}/runs/{run_id}")
    expect(node(page, "review")).to_have_attribute("data-status", "waiting")
    expect(page.locator('[data-control="pause"]')).to_be_visible()
    expect(page.locator('[data-control="retry"]')).to_have_count(0)
    page.get_by_label("Cancel mode").select_option("immediate")
    page.get_by_label("Reason").fill("not needed")
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator(".flash.ok")).to_have_text("Cancel: done.")
    expect(page.locator("[data-run-status]")).to_have_attribute("data-run-status", "cancelled")
    expect(node(page, "review")).to_have_class(re.compile(r"\bcancel\b"))
    expect(node(page, "after").locator("text.state")).to_have_text(re.compile("^(Skipped|Pending|Cancelled)"))
    expect(page.locator('[data-control="retry"]')).to_be_visible()
    expect(page.locator('[data-control="cancel"]')).to_have_count(0)
    shot(page, "run_cancelled")
    assert Api(api.client, tokens["viewer"]).get(f"/runs/{run_id}").get_json()["status"] == "cancelled"


def test_a_viewer_sees_no_controls_and_a_forged_post_is_refused(page, server, api, app, tokens):
    from playwright.sync_api import expect

    workflow = publish(api, WAITS)
    run_id = start(api, workflow)
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["status"] == "waiting", 30, "the run to wait")
    sign_in(page, server, tokens["viewer"])
    expect(page.locator("article.approval").filter(has_text=run_id)).to_be_visible()
    expect(page.locator("article.approval button")).to_have_count(0)
    page.goto(f"{server}/runs/{run_id}")
    expect(node(page, "review")).to_have_attribute("data-status", "waiting")
    expect(page.locator("[data-control]")).to_have_count(0)
    expect(page.get_by_role("link", name="Evidence pack (zip)")).to_be_visible()  # reading is a viewer's right
    shot(page, "run_viewer")
    page.goto(f"{server}/workflows/{workflow}")
    expect(page.get_by_role("button", name="Start run")).to_have_count(0)

    # A forged POST (the session cookie rides along, the CSRF token does not) is refused.
    forged = page.request.post(f"{server}/runs/{run_id}/cancel", form={"mode": "immediate"}, max_redirects=0)
    assert forged.status == 403 and "CSRF" in forged.json()["error"]["message"]
    # With the CSRF token, the server still refuses the viewer: the API behind the UI checks the role.
    viewer = signed_in(app, tokens["viewer"])
    refused = viewer.post(f"/runs/{run_id}/cancel", {"mode": "immediate"})
    assert refused.status_code == 302
    assert "operator" in viewer.client.get(refused.location).get_data(as_text=True)
    operator = signed_in(app, tokens["operator"])
    assert operator.client.post(f"/runs/{run_id}/cancel", data={"mode": "immediate"}).status_code == 403
    assert api.get(f"/runs/{run_id}").get_json()["status"] == "waiting"


ASKS = {"name": "Asks a person", "steps": [{"id": "ask", "type": "question", "question": "Which team?"},
                                          {"id": "after", "type": "tool", "tool": "echo", "needs": ["ask"]}]}


def test_runs_list_filters_searches_and_pages(app, api, tokens):
    workflow = publish(api, WAITS)
    runs = [start(api, workflow) for _ in range(27)]
    ui = signed_in(app, tokens["viewer"])
    first = ui.client.get(f"/runs?workflow_id={workflow}").get_data(as_text=True)
    shown = set(re.findall(r"run_[0-9a-f]{20}", first))
    assert len(shown) == 25 and shown <= set(runs)
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    rest = set(re.findall(r"run_[0-9a-f]{20}", ui.client.get(older).get_data(as_text=True)))
    assert shown | rest == set(runs) and not shown & rest
    assert runs[0] not in ui.client.get(f"/runs?workflow_id={workflow}&status=succeeded").get_data(as_text=True)
    found = ui.client.get(f"/runs?q={runs[3]}")
    assert found.status_code == 302 and found.location == f"/runs/{runs[3]}"
    assert "No run" in ui.client.get("/runs?q=run_nope", follow_redirects=True).get_data(as_text=True)
    for run_id in runs:
        api.post(f"/runs/{run_id}/cancel")


def test_a_question_is_answered_from_the_command_center(app, api, tokens):
    run_id = start(api, publish(api, ASKS))
    wait_for(lambda: api.get(f"/runs/{run_id}").get_json()["status"] == "waiting", 30, "the run to ask")
    question = next(q["id"] for q in api.get("/questions").get_json()["questions"] if q["run_id"] == run_id)
    ui = signed_in(app, tokens["operator"])
    assert "Which team?" in ui.client.get("/").get_data(as_text=True)
    answered = ui.post(f"/runs/{run_id}/questions/{question}/answer", {"answer": '{"team": "blue"}'})
    assert answered.status_code == 302
    run = wait_for(lambda: (r := api.get(f"/runs/{run_id}").get_json())["status"] == "succeeded" and r, 30, "the run")
    assert next(s for s in run["steps"] if s["id"] == "ask")["output"] == {"answer": {"team": "blue"}}


def test_sign_in_refuses_bad_tokens_and_foreign_redirects_and_revoking_ends_the_session(app, api):
    ui = app.test_client()
    page = ui.get("/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert ui.post("/sign-in", data={"token": "sy_nope", "csrf_token": csrf}).status_code == 401
    token = api.post("/tokens", json={"role": "viewer", "name": "ui session"}).get_json()
    for target in ("//evil.example/x", "/\\evil.example", "https://evil.example/"):
        signed = ui.post("/sign-in", data={"token": token["token"], "csrf_token": csrf, "next": target})
        assert signed.status_code == 302 and signed.location == "/", target
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', ui.get("/runs").get_data(as_text=True)).group(1)
    cookie = ui.get_cookie("switchyard_session")
    assert cookie.http_only and cookie.same_site == "Lax"
    stored = SecureCookieSessionInterface().get_signing_serializer(app).loads(cookie.value)
    assert set(stored) == {"token_id", "tenant", "csrf", "_permanent"} and token["token"] not in str(stored)
    assert ui.get("/runs").status_code == 200
    api.delete(f"/tokens/{token['id']}")
    gone = ui.get("/runs")
    assert gone.status_code == 302 and gone.location.startswith("/sign-in")
