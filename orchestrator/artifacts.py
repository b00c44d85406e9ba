"""Output files of runs: a local-directory store and URLs signed to fetch them without a token.

A step writes a file with the ``file.write`` tool; ``GET /runs/{id}`` lists the run's files, each
with a URL valid for ``file_url_ttl_s`` (15 minutes) from that GET. The URL carries its expiry and
an HMAC-SHA256 of the run, the name and the expiry under SWITCHYARD_SECRET_KEY, so it cannot be
stretched or pointed at another file. The store is a directory (``SWITCHYARD_ARTIFACTS_DIR``) that
the workers and the API share; an S3-compatible store would implement the same three methods.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import NotFound, Unauthorized
from orchestrator.settings import Settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
RUN_ID = re.compile(r"^run_[0-9a-f]{1,64}$")


@dataclass(frozen=True)
class StoredFile:
    name: str
    size_bytes: int


class LocalStore:
    """Files under ``root/<run_id>/<name>``; names are checked, so nothing lands outside ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, run_id: str, name: str) -> Path:
        if not RUN_ID.match(run_id) or not NAME.match(name):
            raise NotFound(f"no file {name!r} in run {run_id!r}")
        return self.root / run_id / name

    def write(self, run_id: str, name: str, data: bytes) -> StoredFile:
        """Store ``data`` as the run's file ``name`` (replacing it whole: written aside, then renamed)."""
        path = self._path(run_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        return StoredFile(name, len(data))

    def list(self, run_id: str) -> list[StoredFile]:
        folder = self.root / run_id
        if not RUN_ID.match(run_id) or not folder.is_dir():
            return []
        return [StoredFile(p.name, p.stat().st_size) for p in sorted(folder.iterdir())
                if p.is_file() and NAME.match(p.name)]

    def path(self, run_id: str, name: str) -> Path:
        """The file's path; NotFound if the run has no such file."""
        path = self._path(run_id, name)
        if not path.is_file():
            raise NotFound(f"no file {name!r} in run {run_id!r}")
        return path


def store(settings: Settings) -> LocalStore:
    return LocalStore(Path(settings.artifacts_dir or settings.data_dir / "artifacts").resolve())


def _signature(secret_key: str, run_id: str, name: str, expires: int) -> str:
    message = f"file:{run_id}/{name}:{expires}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def signed_path(secret_key: str, run_id: str, name: str, now: float, ttl_s: int) -> tuple[str, int]:
    """The URL path (under /api/v1) of a file, valid ``ttl_s`` from ``now``, and its expiry."""
    expires = int(now) + ttl_s
    return f"/api/v1/files/{run_id}/{name}?expires={expires}&sig={_signature(secret_key, run_id, name, expires)}", expires


def verify(secret_key: str, run_id: str, name: str, *, expires: str | None, sig: str | None, now: float) -> None:
    """Unauthorized unless ``sig`` signs this run, name and expiry and the expiry has not passed."""
    # [0-9] and not str.isdigit(): '¹' is a digit to isdigit() and not a number to int().
    if not expires or not sig or not re.fullmatch(r"[0-9]{1,12}", expires):
        raise Unauthorized("this file URL needs its signature ('expires' and 'sig'); take a fresh one from GET /runs/{id}")
    if not hmac.compare_digest(_signature(secret_key, run_id, name, int(expires)), sig):
        raise Unauthorized("this file URL's signature does not match; take a fresh one from GET /runs/{id}")
    if int(expires) < now:
        raise Unauthorized("this file URL has expired; take a fresh one from GET /runs/{id}")
