"""The built-in tools: echo, sleep, fail, http.request, file.write."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx

from orchestrator import artifacts, registry
from orchestrator.errors import InvalidArguments, NotFound, PermanentStepError, RetryableStepError
from orchestrator.policy import ToolSpec

# Each built-in's risk level and the JSON Schema of its arguments (policies decide on them); kept in
# orchestrator.registry, which the API reads too.
ANY_OBJECT = registry.ANY_OBJECT
SPECS: dict[str, ToolSpec] = registry.BUILTIN_SPECS


def echo(args: dict, ctx) -> Any:
    """Returns its arguments."""
    return args


def sleep(args: dict, ctx) -> Any:
    """Sleeps ``seconds``, stopping at once when the attempt is cancelled or times out."""
    seconds = _number(args, "seconds", default=1.0)
    ctx.sleep(seconds)
    return {"slept_s": seconds}


def fail(args: dict, ctx) -> Any:
    """Fails with ``message``; with ``until_attempt: N`` it fails attempts before N and then succeeds.

    ``after_s`` waits (cooperatively) before failing, to fail while other steps are mid-flight.
    """
    if "after_s" in args:
        ctx.sleep(_number(args, "after_s", default=0.0))
    until = args.get("until_attempt")
    if until is not None and ctx.attempt >= int(until):
        return {"attempt": ctx.attempt, "succeeded_after_failures": ctx.attempt - 1}
    raise RetryableStepError(str(args.get("message", "failed on purpose")), code="tool_failed")


MAX_REDIRECTS = 5
# Of an error answer's body, the step's error details keep this many characters: the error is stored with
# the step and its run, shown in every event stream and diagnosis, and a server's 500 page can be megabytes.
MAX_ERROR_BODY = 4096


def http_request(args: dict, ctx) -> Any:
    """A real HTTP call. 5xx and transport errors are retryable; 4xx fail for good.

    The attempt's idempotency key goes out as the ``Idempotency-Key`` header, the same on every
    redelivery of one attempt, so a receiving service can drop duplicates. Redirects are followed
    only where the policy allows the new URL too (so a redirect cannot reach a private address).
    """
    url = args.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidArguments("http.request needs an http(s) 'url'", {"field": "url"})
    headers = {str(k): str(v) for k, v in (args.get("headers") or {}).items()}
    headers.setdefault("Idempotency-Key", ctx.idempotency_key)
    timeout = min(_number(args, "timeout_s", default=30.0), max(ctx.remaining_s, 0.1))
    method, content = str(args.get("method", "GET")).upper(), args.get("body")
    for _ in range(MAX_REDIRECTS + 1):
        try:
            response = httpx.request(method, url, headers=headers, json=args.get("json"), content=content,
                                     params=args.get("params"), timeout=timeout, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise RetryableStepError(f"http.request to {url} failed: {exc}", code="http_error") from exc
        if not response.is_redirect:
            break
        url = str(response.url.join(response.headers["location"]))
        if not url.startswith(("http://", "https://")):  # would fail as unreachable, and be retried in vain
            raise PermanentStepError(f"http.request: {response.url} redirected to {url[:200]}, which is not an "
                                     "http(s) URL", code="http_redirects", details={"location": url[:MAX_ERROR_BODY]})
        decision = ctx.authorize(SPECS["http.request"], {**args, "url": url})
        if decision.decision != "allowed":
            raise PermanentStepError(f"http.request: the redirect to {url} is not allowed: {decision.rationale}",
                                     code="policy_denied", details={"rule": decision.rule})
        if response.status_code in (301, 302, 303):
            method, content = ("GET", None) if method != "HEAD" else (method, None)
    else:
        raise PermanentStepError(f"http.request: more than {MAX_REDIRECTS} redirects", code="http_redirects")
    result = {"status": response.status_code, "headers": dict(response.headers)}
    try:
        result["json"] = response.json()
    except ValueError:
        result["text"] = response.text
    if response.status_code >= 500 or response.status_code == 429:
        raise RetryableStepError(f"{url} answered {response.status_code}", code="http_status",
                                 details=_error_details(result, response))
    if response.status_code >= 400 and args.get("raise_for_status", True):
        raise PermanentStepError(f"{url} answered {response.status_code}", code="http_status",
                                 details=_error_details(result, response))
    return result


def _error_details(result: dict, response: httpx.Response) -> dict:
    """An error answer as the step's error details: its body cut to MAX_ERROR_BODY characters (as text,
    with ``truncated`` and the body's ``length``) when longer."""
    text = response.text
    if len(text) <= MAX_ERROR_BODY:
        return result
    return {"status": result["status"], "headers": result["headers"], "text": text[:MAX_ERROR_BODY],
            "truncated": True, "length": len(text)}


def file_write(args: dict, ctx) -> Any:
    """Writes an output file of the run: ``name`` and either ``text`` (UTF-8) or ``base64``.

    The run lists it in ``output_files`` with a signed URL. Writing the same name again replaces it,
    so a retried attempt leaves one file.
    """
    name = args.get("name")
    if not isinstance(name, str) or not artifacts.NAME.match(name):
        raise InvalidArguments("file.write needs a 'name' of letters, digits, '.', '_' and '-' (not starting "
                               "with '.' or '-')", {"field": "name"})
    if isinstance(args.get("text"), str):
        data = args["text"].encode()
    elif isinstance(args.get("base64"), str):
        try:
            data = base64.b64decode(args["base64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArguments("file.write: 'base64' is not valid base64", {"field": "base64"}) from None
    else:
        raise InvalidArguments("file.write needs 'text' or 'base64'", {"field": "text"})
    try:
        stored = artifacts.store(ctx.settings).write(ctx.run_id, name, data)
    except NotFound as exc:
        raise InvalidArguments(exc.message, {"field": "name"}) from None
    except OSError as exc:
        raise RetryableStepError(f"file.write could not store {name!r}: {exc.strerror}", code="storage_error") from exc
    return {"name": stored.name, "size_bytes": stored.size_bytes}


def _number(args: dict, key: str, default: float) -> float:
    value = args.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArguments(f"argument {key!r} must be a number, got {value!r}", {"field": key}) from None
