"""GET /runs/{id}/evidence and `switchyard evidence verify`: a fresh pack verifies; one changed byte does not."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import pytest

from tests.integration.conftest import ROOT, _env, publish, start, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


@pytest.fixture(scope="module")
def pack(app, tokens):
    """An approved run's evidence pack, as downloaded, with the run."""
    from tests.integration.conftest import Api

    api = Api(app.test_client(), tokens["operator"])
    workflow = publish(api.as_(tokens["admin"]), {"name": "audited", "steps": [
        {"id": "draft", "type": "tool", "tool": "echo", "args": {"text": "hello"}},
        {"id": "review", "type": "approval", "needs": ["draft"], "prompt": "ok?"},
        {"id": "send", "type": "llm", "needs": ["review"], "prompt": "send {{ steps.draft.output.text }}"},
    ]})
    run = wait_run(api, start(api, workflow), statuses=("waiting",))
    approval = run["approvals"][0]["id"]
    decided = api.post(f"/runs/{run['id']}/approvals/{approval}/approve?triggered_by=alice", json={"comment": "fine"})
    assert decided.status_code == 200, decided.get_json()
    run = wait_run(api, run["id"])
    assert run["status"] == "succeeded"
    response = api.as_(tokens["viewer"]).get(f"/runs/{run['id']}/evidence")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert f"evidence-{run['id']}.zip" in response.headers["Content-Disposition"]
    return response.data, run, api


def verify(settings, path, *extra):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "evidence", "verify", str(path), *extra],
                          env=_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_pack_holds_the_runs_whole_story(pack):
    data, run, api = pack
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert set(files) == {"run.json", "workflow_version.json", "steps.json", "events.json", "approvals.json",
                          "questions.json", "audit.json", "manifest.json", "outputs/draft.json",
                          "outputs/review.json", "outputs/send.json"}
    read = {name: json.loads(content) for name, content in files.items()}
    assert read["run.json"]["id"] == run["id"] and read["run.json"]["status"] == "succeeded"
    assert read["events.json"] == api.get(f"/runs/{run['id']}/events").get_json()["events"]
    assert read["workflow_version.json"]["definition"]["name"] == "audited"
    assert [s["id"] for s in read["steps.json"]] == ["draft", "review", "send"]
    assert read["outputs/draft.json"] == {"text": "hello"}
    [approval] = read["approvals.json"]
    assert approval["status"] == "approved" and approval["comment"] == "fine" and approval["decided_by"] == "alice"
    audit = {entry["action"]: entry for entry in read["audit.json"]}
    assert audit["run_created"]["actor"]["trigger_type"] == "api"
    assert audit["approval_decided"]["actor"]["triggered_by"] == "alice"
    assert audit["approval_decided"]["details"]["decision"] == "approved"
    manifest = read["manifest.json"]
    assert set(manifest["files"]) == set(files) - {"manifest.json"} and manifest["run_id"] == run["id"]


def test_verify_accepts_a_fresh_pack_and_rejects_a_changed_byte(pack, settings, tmp_path):
    data, run, _ = pack
    fresh = tmp_path / "fresh.zip"
    fresh.write_bytes(data)
    ok = verify(settings, fresh)
    assert ok.returncode == 0, ok.stderr
    assert "OK: 10 files match the manifest and its HMAC" in ok.stdout and run["id"] in ok.stdout

    # One byte changed inside the stored events.json: the zip's own CRC catches it.
    at = data.index(b'"run_succeeded"') + 5
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    bad = verify(settings, damaged)
    assert bad.returncode == 1 and "NOT VERIFIED" in bad.stderr and "events.json" in bad.stderr, bad.stderr


def rezip(data: bytes, change) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, change(name, source.read(name)))
    return out.getvalue()


def test_verify_rejects_a_changed_file_in_a_well_formed_zip_and_a_manifest_rewritten_to_match(pack, settings,
                                                                                                tmp_path):
    import hashlib

    data, _, _ = pack
    steps_changed = rezip(data, lambda name, content: content.replace(b'"hello"', b'"jello"')
                          if name == "steps.json" else content)
    path = tmp_path / "steps.zip"
    path.write_bytes(steps_changed)
    bad = verify(settings, path)
    assert bad.returncode == 1 and "steps.json: SHA-256" in bad.stderr, bad.stderr

    def forge(name, content):
        if name != "manifest.json":
            return content
        manifest = json.loads(content)
        with zipfile.ZipFile(io.BytesIO(steps_changed)) as z:
            manifest["files"]["steps.json"]["sha256"] = hashlib.sha256(z.read("steps.json")).hexdigest()
        return json.dumps(manifest).encode()

    path.write_bytes(rezip(steps_changed, forge))
    forged = verify(settings, path)
    assert forged.returncode == 1 and "HMAC does not match" in forged.stderr, forged.stderr
    assert verify(settings, path, "--no-hmac").returncode == 0  # only the key-holder can tell


def test_evidence_is_tenant_scoped_and_needs_a_token(pack, tokens):
    _, run, api = pack
    assert api.as_(tokens["other_tenant"]).get(f"/runs/{run['id']}/evidence").status_code == 404
    assert api.as_(None).get(f"/runs/{run['id']}/evidence").status_code == 401
