"""The `switchyard` commands that talk to a running API, built on ``switchyard.client``
(docs/cli.md). ``register`` adds them to the `switchyard` group."""

from __future__ import annotations

import click

from switchyard.cli.others import approvals, events, questions, schedules, workflows
from switchyard.cli.runs import runs

GROUPS = (workflows, runs, approvals, questions, events, schedules)


def register(main: click.Group) -> None:
    for group in GROUPS:
        main.add_command(group)
