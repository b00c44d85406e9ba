"""Output files: ``GET /files/{run_id}/{name}?expires=&sig=`` serves a file to whoever holds a URL
that GET /runs/{id} signed; no bearer token (the signature is the permission)."""

from __future__ import annotations

import time

from flask import Blueprint, request, send_file

from api.context import services
from orchestrator import artifacts

bp = Blueprint("files", __name__)


@bp.get("/files/<run_id>/<name>")
def download(run_id: str, name: str):
    """The file, if the URL's signature matches and has not expired (401 otherwise, 404 if it is gone)."""
    settings = services().settings
    artifacts.verify(settings.secret_key, run_id, name, expires=request.args.get("expires"),
                     sig=request.args.get("sig"), now=time.time())
    path = artifacts.store(settings).path(run_id, name)
    return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=name,
                     max_age=0)


def output_files(run_id: str) -> list[dict]:
    """The run's files, each with an absolute URL signed now for ``file_url_ttl_s``."""
    settings = services().settings
    now, result = time.time(), []
    for stored in artifacts.store(settings).list(run_id):
        path, expires = artifacts.signed_path(settings.secret_key, run_id, stored.name, now, settings.file_url_ttl_s)
        result.append({"name": stored.name, "size_bytes": stored.size_bytes, "url": request.host_url.rstrip("/") + path,
                       "url_expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))})
    return result
