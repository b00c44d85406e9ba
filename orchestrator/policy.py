"""Policies on tool calls — pure, no I/O.

A workflow's ``policy`` is data: ordered rules that match a tool by name or by risk level and say
``allow``, ``deny`` or ``require_approval``, with argument constraints, plus per-run limits. Every
tool call is decided here before it runs; the decision names the rule that matched, its rationale,
the risk factors and the constraints that applied, and it is recorded on the step.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

RiskLevel = Literal["low", "medium", "high"]
RISK_ORDER = {"low": 0, "medium": 1, "high": 2}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Constraints(_Strict):
    """Limits on a call's arguments; a call that breaks one is denied."""

    # Hosts an http(s) `url` argument may reach. A private, loopback or link-local address is only
    # reachable when its host is listed here.
    hosts: list[str] | None = None
    # Upper bounds of numeric arguments: {"amount": 100}.
    max: dict[str, float] | None = None
    # Prefixes a string argument must start with: {"path": ["/data/"]}.
    prefixes: dict[str, list[str]] | None = None


class Rule(_Strict):
    tool: str | None = None
    risk: RiskLevel | None = None
    decision: Literal["allow", "deny", "require_approval"]
    constraints: Constraints | None = None
    rationale: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _matches_something(self) -> Rule:
        if self.tool is None and self.risk is None:
            raise ValueError("a policy rule needs 'tool' or 'risk' to say which calls it applies to")
        return self


class Limits(_Strict):
    """Per-run budgets: past one, the run is paused with budget_exceeded before the call."""

    tool_calls: int | None = Field(default=None, ge=0)
    tokens: int | None = Field(default=None, ge=0)
    credits: float | None = Field(default=None, ge=0)


class RateLimit(_Strict):
    """An LLM rate limit of one provider or model: at most this many calls or tokens in any 60 s."""

    requests_per_min: int | None = Field(default=None, ge=1)
    tokens_per_min: int | None = Field(default=None, ge=1)


class Policy(_Strict):
    rules: list[Rule] = Field(default_factory=list, max_length=200)
    default: Literal["allow", "deny", "require_approval"] = "allow"
    limits: Limits = Limits()
    # LLM rate limits by provider ("openai") or "provider/model", the tenant's on top of
    # SWITCHYARD_RATE_LIMITS (docs/flow-control.md).
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict, max_length=100)


@dataclass(frozen=True)
class ToolSpec:
    """What a tool declares: its risk level and the JSON Schema of its arguments."""

    name: str
    risk: RiskLevel = "medium"
    args_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class Decision:
    tool: str
    decision: Literal["allowed", "denied", "approval_required"]
    rule: str  # "rules[2]", "tenant.rules[0]", "default" or "network"
    rationale: str
    risk: RiskLevel
    risk_factors: list[str]
    constraints: list[str]

    def as_json(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict's deep copy cost 20 us, once per tool call.
        return {"tool": self.tool, "decision": self.decision, "rule": self.rule, "rationale": self.rationale,
                "risk": self.risk, "risk_factors": list(self.risk_factors), "constraints": list(self.constraints)}


_DECIDED = {"allow": "allowed", "deny": "denied", "require_approval": "approval_required"}


STRICTNESS = {"allow": 0, "require_approval": 1, "deny": 2}


def decide(policy: Policy, spec: ToolSpec, args: Any, addresses: Sequence[str] = (),
           tenant: Policy | None = None) -> Decision:
    """Decide one call of ``spec`` with ``args`` under the workflow's ``policy`` and the ``tenant``'s.

    The tenant's rules come first (its guardrails hold in every workflow), then the workflow's; with
    no rule matching, the stricter of the two defaults decides. ``addresses`` are the IPs a `url`
    argument's host resolves to (the caller resolves; this module does no I/O). ``args`` were checked
    against the tool's schema before (orchestrator.validation.check_arguments: ``invalid_arguments``,
    not a denial); the policy decides on calls whose arguments fit."""
    risk_factors = [f"tool risk {spec.risk}"]
    where, rule = _first_match(spec, tenant, policy)
    verdict = rule.decision if rule is not None else _default(policy, tenant)
    rationale = (rule.rationale if rule is not None and rule.rationale else
                 f"{'rule ' + where if rule is not None else 'the policy default'} says {verdict}")
    constraints = rule.constraints if rule is not None and rule.constraints else Constraints()
    applied, broken = _check_constraints(constraints, args)
    private = _private_addresses(addresses)
    if private:
        risk_factors.append(f"private network address {', '.join(private)}")
    if verdict != "deny" and broken:
        return Decision(spec.name, "denied", where, f"constraint broken: {broken}", spec.risk, risk_factors, applied)
    host = _host(args)
    if verdict != "deny" and private and host not in (constraints.hosts or []):
        return Decision(spec.name, "denied", "network",
                        f"{host} resolves to a private, loopback or link-local address; a policy rule must list "
                        f"the host in constraints.hosts to allow it", spec.risk, risk_factors, applied)
    return Decision(spec.name, _DECIDED[verdict], where, rationale, spec.risk, risk_factors, applied)


def _first_match(spec: ToolSpec, tenant: Policy | None, workflow: Policy) -> tuple[str, Rule | None]:
    """The first rule matching the call, named by where it stands; ("default", None) if none does."""
    for prefix, policy in (("tenant.", tenant), ("", workflow)):
        if policy is None:
            continue
        index, rule = _matching_rule(policy.rules, spec)
        if rule is not None:
            return f"{prefix}rules[{index}]", rule
    return "default", None


def _default(workflow: Policy, tenant: Policy | None) -> str:
    defaults = [workflow.default] + ([tenant.default] if tenant is not None else [])
    return max(defaults, key=STRICTNESS.__getitem__)


def combined_limits(*limits: Limits | None) -> Limits:
    """Each limit the tightest of those given (a limit left unset by one does not loosen another's)."""
    values: dict[str, float] = {}
    for one in limits:
        for key, value in (one.model_dump(exclude_none=True) if one is not None else {}).items():
            values[key] = min(values.get(key, value), value)
    return Limits(**values)


def highest_risk(levels: Sequence[str | None]) -> str | None:
    """The highest of the given risk levels (None if there are none)."""
    known = [level for level in levels if level in RISK_ORDER]
    return max(known, key=RISK_ORDER.__getitem__) if known else None


def budget_problem(limits: Limits, used: dict[str, float], kind: str, estimate: float = 0) -> str | None:
    """Why making one more call of ``kind`` (``tool_calls`` or ``tokens``, with its estimated cost) would
    exceed the run's limits, or None. Credits are checked with every call: spent is spent."""
    if kind == "tool_calls" and limits.tool_calls is not None and used.get("tool_calls", 0) + 1 > limits.tool_calls:
        return f"tool call limit of {limits.tool_calls} reached"
    tokens = used.get("tokens_in", 0) + used.get("tokens_out", 0)
    if kind == "tokens" and limits.tokens is not None and tokens + estimate > limits.tokens:
        return f"token budget of {limits.tokens} would be exceeded ({tokens:g} used, about {estimate:g} more)"
    if limits.credits is not None and used.get("credits", 0) >= limits.credits:
        return f"credit budget of {limits.credits:g} reached ({used.get('credits', 0):g} used)"
    return None


def _matching_rule(rules: Sequence[Rule], spec: ToolSpec) -> tuple[int, Rule | None]:
    for index, rule in enumerate(rules):
        if rule.tool is not None and rule.tool != spec.name:
            continue
        if rule.risk is not None and rule.risk != spec.risk:
            continue
        return index, rule
    return -1, None


def _check_constraints(constraints: Constraints, args: Any) -> tuple[list[str], str | None]:
    """The constraints that applied, and the first one the arguments break (or None)."""
    args = args if isinstance(args, dict) else {}
    applied: list[str] = []
    if constraints.hosts is not None and "url" in args:
        applied.append(f"hosts in {constraints.hosts}")
        if _host(args) not in constraints.hosts:
            return applied, f"host {_host(args)!r} is not in {constraints.hosts}"
    for name, bound in (constraints.max or {}).items():
        applied.append(f"{name} <= {bound:g}")
        value = args.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value > bound:
            return applied, f"{name}={value!r} is over the maximum {bound:g}"
    for name, prefixes in (constraints.prefixes or {}).items():
        applied.append(f"{name} starts with one of {prefixes}")
        value = args.get(name)
        if not isinstance(value, str) or not value.startswith(tuple(prefixes)):
            return applied, f"{name}={value!r} does not start with one of {prefixes}"
    return applied, None


def _host(args: Any) -> str | None:
    url = args.get("url") if isinstance(args, dict) else None
    return urlsplit(url).hostname if isinstance(url, str) else None


def _private_addresses(addresses: Sequence[str]) -> list[str]:
    private = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_unspecified:
            private.append(address)
    return private
