"""`tool` steps: render the arguments, decide the call under the policy, call the tool."""

from __future__ import annotations

from typing import Any

from orchestrator import templates, validation
from orchestrator.errors import PermanentStepError
from workers import tools
from workers.context import ApprovalNeeded, BudgetExceeded, StepContext, Suspend


def run(ctx: StepContext) -> Any:
    args = templates.render(ctx.step.args, ctx.template_context)
    resumed = ctx.checkpoint or {}
    try:
        if resumed.get("kind") == "approval" and resumed.get("approval", {}).get("approved"):
            return call_tool(ctx, ctx.step.tool, args, approved_by=resumed["approval"])
        return call_tool(ctx, ctx.step.tool, args)
    except ApprovalNeeded as gate:
        raise Suspend("approval", gate.text(), {"kind": "approval"}, gate.call()) from None
    except BudgetExceeded as exc:
        raise Suspend("budget", str(exc), {"kind": "budget"}) from None


def call_tool(ctx: StepContext, name: str, args: Any, approved_by: dict | None = None) -> Any:
    """Check the arguments against the tool's schema, decide the call under the policy, then make it,
    counting it in the step's usage; shared by tool steps and agent loops. Arguments that do not fit the
    schema raise InvalidArguments (invalid_arguments, before the policy is asked), a denied call raises
    PermanentStepError (policy_denied), one that needs an approval raises ApprovalNeeded, one over the
    run's limits BudgetExceeded. ``approved_by`` is the approver's decision on a call that was sent for
    approval."""
    ctx.check()
    spec = tools.spec_for(name)
    validation.check_arguments(spec, args)
    if approved_by is not None:
        ctx.record_decision({"tool": name, "decision": "allowed", "rule": "approval",
                             "rationale": f"approved by {approved_by.get('decided_by')}: {approved_by.get('comment')}",
                             "risk": spec.risk, "risk_factors": [f"tool risk {spec.risk}"], "constraints": []})
    else:
        decision = ctx.authorize(spec, args)
        if decision.decision == "denied":
            raise PermanentStepError(f"the policy denied this call of {name}: {decision.rationale}",
                                     code="policy_denied", details={"rule": decision.rule})
        if decision.decision == "approval_required":
            raise ApprovalNeeded(decision, args)
    ctx.check_budget("tool_calls")
    ctx.count("tool_calls")
    return tools.get_tool(name)(args, ctx)
