"""Evidence packs: a run's whole story as a zip, with a manifest of SHA-256 hashes, and its check.

The pack holds JSON files (their content chosen by the API) and ``manifest.json``, which lists every
other file with its SHA-256 and size, and carries an HMAC-SHA256 of itself (without that field) keyed by
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


def dumps(value: Any) -> bytes:
    """Stable JSON bytes: the same content always hashes the same."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode()


def _signature(manifest: Mapping[str, Any], key: str) -> str:
    unsigned = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
    return hmac.new(key.encode(), dumps(unsigned), hashlib.sha256).hexdigest()


def manifest(files: Mapping[str, bytes], about: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The manifest of ``files``: each one's SHA-256 and size, ``about`` (run id, times), and its HMAC."""
    body = {
        "format": FORMAT,
        **about,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
                  for name, data in sorted(files.items())},
    }
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


def stream_zip(files: Mapping[str, bytes], about: Mapping[str, Any], key: str) -> Iterator[bytes]:
    """The pack as zip bytes, a file at a time (the archive is never whole in memory twice)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        for name, data in files.items():
            archive.writestr(name, data)
            yield sink.take()
        archive.writestr(MANIFEST, dumps(manifest(files, about, key)))
        yield sink.take()
    yield sink.take()


class Invalid(Exception):
    """The pack does not verify; the message says which file and why."""


def verify(path: Path, key: str | None) -> dict[str, Any]:
    """Check every file against the manifest (and the manifest's HMAC when ``key`` is given).

    Returns the manifest; raises Invalid naming the first problem found.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MANIFEST not in names:
                raise Invalid(f"{MANIFEST} is missing: this is not a Switchyard evidence pack")
            contents = {name: archive.read(name) for name in sorted(names)}
    except zipfile.BadZipFile as exc:
        raise Invalid(f"the zip is damaged or was changed: {exc}") from None
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc}") from None
    try:
        found = json.loads(contents.pop(MANIFEST))
        listed = found["files"]
    except (ValueError, KeyError, TypeError):
        raise Invalid(f"{MANIFEST} is not a valid manifest") from None
    if found.get("format") != FORMAT:
        raise Invalid(f"unknown format {found.get('format')!r}; expected {FORMAT!r}")
    if key is not None and not hmac.compare_digest(str(found.get("hmac_sha256", "")), _signature(found, key)):
        raise Invalid(f"{MANIFEST}: the HMAC does not match (the manifest was changed, or the key is not the one "
                      "that made the pack)")
    for name in sorted(set(listed) | set(contents)):
        if name not in contents:
            raise Invalid(f"{name}: listed in the manifest but missing from the pack")
        if name not in listed:
            raise Invalid(f"{name}: in the pack but not in the manifest")
        digest = hashlib.sha256(contents[name]).hexdigest()
        if digest != listed[name].get("sha256"):
            raise Invalid(f"{name}: SHA-256 is {digest}, the manifest says {listed[name].get('sha256')}")
    return found
