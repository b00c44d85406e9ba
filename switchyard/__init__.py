"""Switchyard's command line and Python client (``switchyard.client``): they talk to a running API."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("switchyard")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
