"""Where the command line finds the API: flags, then the environment, then a profile file.

The profile file (``$SWITCHYARD_CONFIG``, else ``$XDG_CONFIG_HOME/switchyard/config.toml``, else
``~/.config/switchyard/config.toml``) holds one table per profile:

    [default]
    url = "http://127.0.0.1:8080"
    token = "sy_…"

    [staging]
    url = "https://switchyard.staging.example.com"
    token = "sy_…"

``--profile`` / ``SWITCHYARD_PROFILE`` picks one (``default`` if neither is given).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8080"


class ConfigError(Exception):
    """The profile file is unreadable, or names no such profile; the message says what to do."""


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    source: str  # where the URL came from, for messages


def config_path(environ: dict[str, str]) -> Path:
    if environ.get("SWITCHYARD_CONFIG"):
        return Path(environ["SWITCHYARD_CONFIG"])
    base = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "switchyard" / "config.toml"


def read_profile(path: Path, name: str | None) -> dict[str, str]:
    """The profile's settings; {} when no profile was asked for and the file has no ``default``."""
    if not path.exists():
        if name:
            raise ConfigError(f"profile {name!r} asked for, but {path} does not exist; create it with a "
                              f"[{name}] table holding url and token")
        return {}
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix the file or set SWITCHYARD_CONFIG") from None
    profile = profiles.get(name or "default")
    if profile is None and name:
        known = ", ".join(sorted(k for k, v in profiles.items() if isinstance(v, dict))) or "none"
        raise ConfigError(f"{path} has no profile {name!r} (profiles: {known})")
    if profile is not None and not isinstance(profile, dict):
        raise ConfigError(f"{path}: [{name or 'default'}] must be a table with url and token")
    return {k: str(v) for k, v in (profile or {}).items()}


def resolve(url: str | None, token: str | None, profile: str | None,
            environ: dict[str, str] | None = None) -> Target:
    """The API to talk to. ``url`` and ``token`` already hold a flag or its environment variable (click
    reads both); the profile fills in what they leave out, and the local default URL what it leaves."""
    environ = dict(os.environ) if environ is None else environ
    path = config_path(environ)
    settings = read_profile(path, profile)
    if url:
        return Target(url, token or settings.get("token"), "--url / SWITCHYARD_URL")
    if settings.get("url"):
        return Target(settings["url"], token or settings.get("token"), f"profile {profile or 'default'} in {path}")
    return Target(DEFAULT_URL, token or settings.get("token"), "the default")
