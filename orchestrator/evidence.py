"""Evidence packs: a run's whole story as a zip, with a manifest of SHA-256 hashes, and its check.

The pack holds JSON files (their content chosen by the API), the run's output files as they are stored
(``files/<name>``, copied from disk a chunk at a time) and ``manifest.json``, which lists every other file
with its SHA-256 and size, and carries an HMAC-SHA256 of itself (without that field) keyed by
``SWITCHYARD_SECRET_KEY``: a changed file fails its hash, and a manifest rewritten to match fails the
HMAC wherever the key is known. Files are stored uncompressed, so the pack reads with any zip tool.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

FORMAT = "switchyard-evidence/1"
MANIFEST = "manifest.json"
# Where a run's output files (file.write) go in the pack: files/<name>.
FILES_DIR = "files/"
CHUNK = 1 << 20


def dumps(value: Any) -> bytes:
    """Stable JSON bytes: the same content always hashes the same."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def _signature(manifest: Mapping[str, Any], key: str) -> str:
    unsigned = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
    return hmac.new(key.encode(), dumps(unsigned), hashlib.sha256).hexdigest()


def manifest(files: Mapping[str, bytes], about: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The manifest of ``files``: each one's SHA-256 and size, ``about`` (run id, times), and its HMAC."""
    return _signed({name: _entry(hashlib.sha256(data), len(data)) for name, data in files.items()}, about, key)


def _entry(digest, size: int) -> dict[str, Any]:
    return {"sha256": digest.hexdigest(), "size_bytes": size}


def _signed(entries: Mapping[str, dict[str, Any]], about: Mapping[str, Any], key: str) -> dict[str, Any]:
    body = {"format": FORMAT, **about, "files": dict(sorted(entries.items()))}
    return {**body, "hmac_sha256": _signature(body, key)}


class _Sink:
    """A write-only file that hands out what was written so far (zipfile streams to it)."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def stream_zip(files: Mapping[str, bytes | Path], about: Mapping[str, Any], key: str) -> Iterator[bytes]:
    """The pack as zip bytes, a file at a time (the archive is never whole in memory twice).

    A ``Path`` is copied from disk a chunk at a time, and hashed as it is copied: the manifest says what
    the pack holds even if the file is replaced meanwhile (the store replaces files whole, by rename).
    """
    sink = _Sink()
    entries: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        for name, data in files.items():
            if isinstance(data, bytes):
                archive.writestr(name, data)
                entries[name] = _entry(hashlib.sha256(data), len(data))
                yield sink.take()
                continue
            digest, size = hashlib.sha256(), 0
            with data.open("rb") as source, archive.open(name, "w", force_zip64=True) as target:
                while chunk := source.read(CHUNK):
                    target.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    yield sink.take()
            entries[name] = _entry(digest, size)
            yield sink.take()
        archive.writestr(MANIFEST, dumps(_signed(entries, about, key)))
        yield sink.take()
    yield sink.take()


class Invalid(Exception):
    """The pack does not verify; the message says which file and why, ``what_to_do`` what to do about it."""

    def __init__(self, message: str, what_to_do: str = ""):
        super().__init__(message)
        self.what_to_do = what_to_do


# What to do about a pack that does not verify.
GET_IT_AGAIN = ("do not rely on this copy: download the run's pack again (GET /runs/{id}/evidence) and compare it "
                "with the one you were given")
NOT_A_PACK = "pass the zip that GET /runs/{id}/evidence answers"
KEY_OR_CHANGED = ("if SWITCHYARD_SECRET_KEY here is not the key of the installation that made the pack, check the "
                  "files' hashes only with --no-hmac; otherwise " + GET_IT_AGAIN)


def verify(path: Path, key: str | None) -> dict[str, Any]:
    """Check every file against the manifest (and the manifest's HMAC when ``key`` is given).

    Returns the manifest; raises Invalid naming the problem found (every file that does not match).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MANIFEST not in names:
                raise Invalid(f"{MANIFEST} is missing: this is not a Switchyard evidence pack", NOT_A_PACK)
            found = _manifest_in(archive.read(MANIFEST))
            problems = _file_problems(archive, sorted(names - {MANIFEST}), found["files"])
    except zipfile.BadZipFile as exc:
        raise Invalid(f"the zip is damaged or was changed: {exc}", GET_IT_AGAIN) from None
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc}", NOT_A_PACK) from None
    if key is not None and not hmac.compare_digest(str(found.get("hmac_sha256", "")), _signature(found, key)):
        raise Invalid(f"{MANIFEST}: the HMAC does not match (the manifest was changed, or the key is not the one "
                      "that made the pack)", KEY_OR_CHANGED)
    if problems:
        raise Invalid("; ".join(problems), GET_IT_AGAIN)
    return found


def _manifest_in(data: bytes) -> dict[str, Any]:
    try:
        found = json.loads(data)
        if not isinstance(found["files"], dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise Invalid(f"{MANIFEST} is not a valid manifest", GET_IT_AGAIN) from None
    if found.get("format") != FORMAT:
        raise Invalid(f"unknown format {found.get('format')!r}; expected {FORMAT!r}", NOT_A_PACK)
    return found


def _file_problems(archive: zipfile.ZipFile, names: list[str], listed: Mapping[str, Any]) -> list[str]:
    """Every file missing, extra or whose SHA-256 is not the manifest's, each read a chunk at a time."""
    problems = []
    for name in sorted(set(listed) | set(names)):
        if name not in names:
            problems.append(f"{name}: listed in the manifest but missing from the pack")
        elif name not in listed:
            problems.append(f"{name}: in the pack but not in the manifest")
        else:
            digest = hashlib.sha256()
            with archive.open(name) as member:
                while chunk := member.read(CHUNK):
                    digest.update(chunk)
            expected = listed[name].get("sha256") if isinstance(listed[name], dict) else None
            if digest.hexdigest() != expected:
                problems.append(f"{name}: SHA-256 is {digest.hexdigest()}, the manifest says {expected}")
    return problems
