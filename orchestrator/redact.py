"""Keep the server's secrets out of what it records: step errors are scrubbed of them before they
become events, and so never reach the API, logs of events or evidence."""

from __future__ import annotations

from typing import Any

from orchestrator.settings import Settings

MASK = "[redacted]"


def known_secrets(settings: Settings) -> list[str]:
    """The secret values this process holds (provider key, signing key); short ones are not worth
    masking and would mangle ordinary text."""
    return [s for s in (settings.openai_api_key, settings.secret_key) if s and len(s) >= 6]


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of each secret replaced by MASK."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_json(value: Any, secrets: list[str]) -> Any:
    """``value`` (a JSON value: a step error's ``details``) with every string in it redacted, keys too."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact_json(k, secrets): redact_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v, secrets) for v in value]
    return value
