"""A run's output files are in its evidence pack: a file.write step's file verifies, and the pack fails
`switchyard evidence verify` naming the file once that file is changed or removed."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest

from tests.integration.conftest import publish, start, wait_run
from tests.integration.test_evidence import rezip, verify

pytestmark = pytest.mark.usefixtures("engine_processes")

REPORT = "Report for Ada"


@pytest.fixture(scope="module")
def pack(app, tokens):
    """The evidence pack of a run whose step wrote report.txt, as downloaded."""
    from tests.integration.conftest import Api

    api = Api(app.test_client(), tokens["admin"])
    workflow = publish(api, {"name": "evidence with files", "steps": [
        {"id": "write", "type": "tool", "tool": "file.write",
         "args": {"name": "report.txt", "text": "Report for {{ input.who }}"}},
        {"id": "after", "type": "tool", "tool": "echo", "needs": ["write"], "args": {"done": True}},
    ]})
    run = wait_run(api, start(api, workflow, {"who": "Ada"}))
    assert run["status"] == "succeeded", run
    response = api.as_(tokens["viewer"]).get(f"/runs/{run['id']}/evidence")
    assert response.status_code == 200, response.data[:500]
    return response.data, run


def test_the_pack_holds_the_output_file_with_its_hash(pack):
    data, run = pack
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("files/report.txt") == REPORT.encode()
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["files"]["files/report.txt"] == {"sha256": hashlib.sha256(REPORT.encode()).hexdigest(),
                                                     "size_bytes": len(REPORT)}
    assert [f["name"] for f in run["output_files"]] == ["report.txt"]


def test_verify_accepts_the_pack_and_rejects_a_changed_or_removed_output_file(pack, settings, tmp_path):
    data, run = pack
    fresh = tmp_path / "fresh.zip"
    fresh.write_bytes(data)
    ok = verify(settings, fresh)
    assert ok.returncode == 0, ok.stderr
    assert "OK: 10 files match the manifest and its HMAC" in ok.stdout and "1 output file," in ok.stdout

    changed = tmp_path / "changed.zip"
    changed.write_bytes(rezip(data, lambda name, content: content.replace(b"Ada", b"Eve")
                              if name == "files/report.txt" else content))
    bad = verify(settings, changed)
    assert bad.returncode == 1 and "NOT VERIFIED: files/report.txt: SHA-256" in bad.stderr, bad.stderr
    assert "What to do:" in bad.stderr and "/runs/{id}/evidence" in bad.stderr

    removed = tmp_path / "removed.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(removed, "w") as target:
        for name in source.namelist():
            if name != "files/report.txt":
                target.writestr(name, source.read(name))
    gone = verify(settings, removed)
    assert gone.returncode == 1, gone.stderr
    assert "files/report.txt: listed in the manifest but missing from the pack" in gone.stderr
    assert "What to do:" in gone.stderr
