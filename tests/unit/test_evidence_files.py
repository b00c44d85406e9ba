"""Evidence packs hold the run's output files under files/, hashed in the manifest and checked by verify:
a changed, missing or extra output file fails, naming the file and saying what to do."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from click.testing import CliRunner

from orchestrator import evidence
from orchestrator.cli import main

KEY = "k" * 32
ABOUT = {"run_id": "run_1", "generated_at": "2030-01-01T00:00:00Z"}


@pytest.fixture
def pack(tmp_path, monkeypatch):
    """A pack with two JSON records and two output files, one bigger than a chunk; its path."""
    monkeypatch.setattr(evidence, "CHUNK", 1000)
    (tmp_path / "report.txt").write_bytes(b"Report for Ada")
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 20)
    files = {"run.json": evidence.dumps({"id": "run_1"}), "outputs/write.json": evidence.dumps({"ok": True}),
             "files/report.txt": tmp_path / "report.txt", "files/big.bin": tmp_path / "big.bin"}
    path = tmp_path / "pack.zip"
    path.write_bytes(b"".join(evidence.stream_zip(files, ABOUT, KEY)))
    return path


def rezip(path, change) -> None:
    """Rewrite the zip at ``path`` with ``change(name, content)`` (None drops the file): a well-formed zip."""
    with zipfile.ZipFile(path) as source:
        contents = {name: source.read(name) for name in source.namelist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name, content in contents.items():
            if (changed := change(name, content)) is not None:
                target.writestr(name, changed)
    path.write_bytes(out.getvalue())


def test_output_files_are_in_the_pack_and_its_manifest(pack, tmp_path):
    with zipfile.ZipFile(pack) as archive:
        assert archive.read("files/report.txt") == b"Report for Ada"
        assert archive.read("files/big.bin") == (tmp_path / "big.bin").read_bytes()
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["files"]["files/report.txt"] == {"sha256": hashlib.sha256(b"Report for Ada").hexdigest(),
                                                     "size_bytes": 14}
    assert manifest["files"]["files/big.bin"]["size_bytes"] == 5120
    # The manifest streamed while hashing is the one manifest() makes of the same bytes.
    with zipfile.ZipFile(pack) as archive:
        whole = {name: archive.read(name) for name in archive.namelist() if name != "manifest.json"}
    assert evidence.manifest(whole, ABOUT, KEY) == manifest
    assert evidence.verify(pack, KEY)["files"] == manifest["files"]


@pytest.mark.parametrize("change, needle", [
    (lambda name, content: content + b"!" if name == "files/report.txt" else content, "files/report.txt: SHA-256 is"),
    (lambda name, content: None if name == "files/report.txt" else content,
     "files/report.txt: listed in the manifest but missing from the pack"),
    (lambda name, content: content, None),
], ids=["changed", "removed", "rezipped-unchanged"])
def test_a_changed_or_removed_output_file_fails_naming_it(pack, change, needle):
    rezip(pack, change)
    if needle is None:
        evidence.verify(pack, KEY)
        return
    with pytest.raises(evidence.Invalid) as caught:
        evidence.verify(pack, KEY)
    assert needle in str(caught.value) and "download the run's pack again" in caught.value.what_to_do


def test_every_file_that_does_not_match_is_named(pack):
    rezip(pack, lambda name, content: None if name == "files/big.bin" else
          b"{}" if name == "outputs/write.json" else content)
    with pytest.raises(evidence.Invalid) as caught:
        evidence.verify(pack, None)
    assert "files/big.bin: listed in the manifest" in str(caught.value)
    assert "outputs/write.json: SHA-256" in str(caught.value)


def test_an_extra_output_file_fails(pack):
    with zipfile.ZipFile(pack, "a") as archive:
        archive.writestr("files/planted.txt", b"not from the run")
    with pytest.raises(evidence.Invalid, match="files/planted.txt: in the pack but not in the manifest"):
        evidence.verify(pack, KEY)


def test_the_command_exits_1_naming_the_file_and_what_to_do(pack):
    runner = CliRunner()
    ok = runner.invoke(main, ["evidence", "verify", str(pack), "--no-hmac"])
    assert ok.exit_code == 0, ok.output
    assert "OK: 4 files match the manifest" in ok.output and "2 output files" in ok.output
    rezip(pack, lambda name, content: b"tampered" if name == "files/report.txt" else content)
    bad = runner.invoke(main, ["evidence", "verify", str(pack), "--no-hmac"])
    assert bad.exit_code == 1
    assert "NOT VERIFIED: files/report.txt: SHA-256" in bad.output and "What to do: do not rely on" in bad.output


def test_a_wrong_key_says_to_try_without_the_hmac(pack):
    with pytest.raises(evidence.Invalid, match="HMAC does not match") as caught:
        evidence.verify(pack, "another key")
    assert "--no-hmac" in caught.value.what_to_do
