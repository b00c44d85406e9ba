"""How `switchyard api` serves the app: gunicorn in process, or werkzeug's development server with ``--dev``.

gunicorn runs here as ``api.wsgi:app`` would run under the ``gunicorn`` command, minus the import from the
environment: the master reads the settings once, and each worker process builds its own app with
``create_app(settings)`` after the fork (no ``preload``), so database pools, broker connections and the
worker monitor (api/monitoring.py) are never shared between processes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from orchestrator.settings import Settings

MAX_DEFAULT_WORKERS = 8


class PortInUse(Exception):
    """The address is taken: the message says by what, probably, and what to do."""


def cores() -> int:
    """The CPUs this process may run on (a container's cpuset included), else the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """gunicorn's usual 2 × cores + 1, at most 8: every process keeps its own database pool and its own
    worker monitor (an event receiver and an inspect round every 10 s), so more processes than that cost
    connections and broker traffic for little; raise ``--threads`` for many open streams instead."""
    return min(2 * cores() + 1, MAX_DEFAULT_WORKERS)


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse if nothing could listen on ``host:port`` now (bound as gunicorn and werkzeug bind:
    with SO_REUSEADDR, so a port in TIME_WAIT is free). Said before starting, rather than after gunicorn's
    five retries a second apart."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}; pass --host an address of this "
                        f"machine (127.0.0.1, 0.0.0.0 or ::)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {host} is already in use (another `switchyard api` or `switchyard dev`?): "
                    f"stop that process, or pass --port with a free port") from None
            if exc.errno == errno.EACCES:
                raise PortInUse(f"not allowed to listen on port {port}: pass --port 1024 or above") from None
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def bind_address(host: str, port: int) -> str:
    """gunicorn's bind string: an IPv6 address goes in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve_gunicorn(settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
    """Run gunicorn's arbiter in this process until SIGTERM or SIGINT (a graceful stop: requests in flight
    get gunicorn's graceful timeout, 30 s, to finish)."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    class SwitchyardLogger(Logger):
        """gunicorn's own lines (start, workers booted and exited) in the format of every other line:
        the root handler's, set by orchestrator.logs.configure."""

        def setup(self, cfg) -> None:
            super().setup(cfg)
            root = logging.getLogger().handlers
            if root and root[0].formatter is not None:
                for handler in self.error_log.handlers:
                    handler.setFormatter(root[0].formatter)

    class SwitchyardApi(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": [bind_address(host, port)],
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                "proc_name": "switchyard-api",
                "logger_class": SwitchyardLogger,
                # gunicorn 24+ opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl), which
                # two APIs on one machine would fight over; nothing here uses it.
                "control_socket_disable": True,
            }
            for key, value in options.items():
                if key in self.cfg.settings:  # settings this gunicorn does not have are left out
                    self.cfg.set(key, value)

        def load(self):
            from api import create_app

            return create_app(settings, server_threads=threads)

    SwitchyardApi().run()


def serve_werkzeug(settings: Settings, host: str, port: int, reload: bool) -> None:
    """werkzeug's development server, threaded, restarting on code changes when ``reload``."""
    from werkzeug.serving import run_simple

    from api import create_app

    # With the reloader this process only watches the files and holds the socket; the child it starts
    # (again after each change) serves, so only the child builds the app and its connections.
    app = create_app(settings) if not reload or is_reloader_child() else _not_serving
    run_simple(host, port, app, threaded=True, use_reloader=reload)


def _not_serving(environ, start_response):  # pragma: no cover - the reloader's parent never serves
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"restarting\n"]


def is_reloader_child() -> bool:
    """True in the process werkzeug's reloader starts (and restarts) to serve; the socket is its parent's."""
    return os.environ.get("WERKZEUG_RUN_MAIN") == "true"
