"""Every action the diagnosis suggests can be pasted: its body is JSON, and its shell line is a curl call
(or a switchyard command) that a shell splits into the right argv, whatever the ids and keys hold."""

from __future__ import annotations

import ast
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import diagnosis
from orchestrator.diagnosis import StepFacts, WindowFacts, diagnose
from orchestrator.states import RunStatus, StepStatus

R, S = RunStatus, StepStatus
# A correlation key and a queue with everything a shell or JSON could trip on.
AWKWARD = "it's \"payment\" $HOME `id` \\ T-1042"


def step(status, type_="tool", **kw) -> StepFacts:
    return StepFacts(step_id="s", type=type_, status=status, queue=kw.pop("queue", "steps"), attempt=1, **kw)


# kind -> (run status, steps, approvals, questions, consumers[, the concurrency keys waited for])
SITUATIONS = {
    "failed": (R.FAILED, [step(S.FAILED)], {}, {}, None),
    "cancelled": (R.CANCELLED, [step(S.CANCELLED)], {}, {}, None),
    "paused": (R.PAUSED, [step(S.PENDING)], {}, {}, None),
    "scheduler": (R.QUEUED, [step(S.PENDING)], {}, {}, None),
    "budget_exceeded": (R.PAUSED, [step(S.WAITING, "agent", waiting_on="budget")], {}, {}, None),
    "approval": (R.WAITING, [step(S.WAITING, "approval")], {"s": "apr_1"}, {}, None),
    "question": (R.WAITING, [step(S.WAITING, "question")], {}, {"s": "q_1"}, None),
    "event": (R.WAITING, [step(S.WAITING, "wait_event", correlation_key=AWKWARD)], {}, {}, None),
    "timer": (R.WAITING, [step(S.WAITING, "timer", due_in_s=3)], {}, {}, None),
    "retry": (R.RUNNING, [step(S.RETRYING, due_in_s=2)], {}, {}, None),
    "no_consumers": (R.RUNNING, [step(S.QUEUED, queue=AWKWARD)], {}, {}, {"steps": 1}),
    "queued": (R.RUNNING, [step(S.QUEUED)], {}, {}, None),
    "worker_lost": (R.RUNNING, [step(S.RUNNING, lease_expired=True)], {}, {}, None),
    "rate_limit": (R.WAITING, [step(S.WAITING, "llm", waiting_on="rate_limit", due_in_s=4)], {}, {}, None),
    "concurrency": (R.QUEUED, [step(S.PENDING)], {}, {}, None, [diagnosis.KeyWait(None, AWKWARD, 1, ("run_h",))]),
    "window": (R.RUNNING, [step(S.QUEUED, queue=AWKWARD, window=WindowFacts(in_use=32, size=32, held_ahead=3))],
               {}, {}, None),
}
# The kinds that are an API call (the others are a command, or nothing to do).
CALLS = {"failed", "cancelled", "paused", "budget_exceeded", "approval", "question", "event"}


def cause_of(kind: str) -> diagnosis.Cause:
    status, steps, approvals, questions, consumers, *keys = SITUATIONS[kind]
    causes = diagnose("run_1", status, {"message": "boom", "step_id": "s"}, steps,
                      approvals=approvals, questions=questions, consumers=consumers, concurrency=keys[0] if keys else ())
    [found] = [c for c in causes if c.kind == kind]
    return found


def test_the_situations_cover_every_kind_the_diagnosis_names():
    """A new Cause("kind", …) in diagnosis.py must get a situation here."""
    tree = ast.parse(Path(diagnosis.__file__).read_text())
    literal = {node.args[0].value for node in ast.walk(tree)
               if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Cause"
               and node.args and isinstance(node.args[0], ast.Constant)}
    assert literal <= set(SITUATIONS), literal - set(SITUATIONS)


def payload(argv: list[str]) -> object:
    return json.loads(argv[argv.index("-d") + 1])


@pytest.mark.parametrize("kind", sorted(SITUATIONS))
def test_every_action_is_pasteable(kind):
    cause = cause_of(kind)
    as_json = json.loads(json.dumps(cause.as_json()))  # what the API answers
    request = as_json["request"]
    if kind not in CALLS:
        assert request is None
        if kind == "no_consumers":  # a command of its own: it splits into its words
            assert shlex.split(as_json["command"]) == ["switchyard", "worker", "--queues", AWKWARD]
        else:
            assert as_json["command"] is None
        return
    assert request["method"] == "POST" and request["path"].startswith("/")
    argv = shlex.split(as_json["command"])
    assert argv[:4] == ["curl", "-sS", "-X", "POST"]
    assert argv[4] == "$SWITCHYARD_URL" + request["path"]
    assert argv[argv.index("-H") + 1] == "Authorization: Bearer $SWITCHYARD_TOKEN"
    if request["body"] is None:
        assert "-d" not in argv
    else:
        assert payload(argv) == request["body"]
        assert "Content-Type: application/json" in argv
        # The sentence shows the same body, as JSON (one quote style).
        assert json.dumps(request["body"]) in as_json["action"]
    assert request["path"] in as_json["action"]


def test_the_event_body_carries_the_key_as_it_is():
    cause = cause_of("event")
    assert cause.request.body == {"correlation_key": AWKWARD}
    assert payload(shlex.split(cause.command)) == {"correlation_key": AWKWARD}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("kind", sorted(CALLS))
def test_a_shell_expands_the_placeholders_and_nothing_else(kind):
    """Run the line in bash with curl replaced by a function that prints its argv."""
    cause = cause_of(kind)
    script = (f'curl() {{ {shlex.quote(sys.executable)} -c "import json, sys; print(json.dumps(sys.argv[1:]))" '
              f'"$@"; }}\n{cause.command}\n')
    env = {"SWITCHYARD_URL": "http://127.0.0.1:8080/api/v1", "SWITCHYARD_TOKEN": "tok_1", "HOME": "/nowhere",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=True)
    argv = json.loads(done.stdout)
    assert argv[3] == "http://127.0.0.1:8080/api/v1" + cause.request.path
    assert "Authorization: Bearer tok_1" in argv
    if cause.request.body is not None:
        assert payload(argv) == cause.request.body
