"""The names of the tools a definition may use.

Both the API (to refuse an unknown tool at publish time) and the workers (to run it) need this
list, and they never import each other, so the names live here. Built-ins are always present;
projects add tools through the ``switchyard.tools`` entry point group, whose names are listed
without importing the tools themselves.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

BUILTIN_TOOLS = frozenset({"echo", "sleep", "fail", "http.request", "file.write"})
# Tools only an agent may call: the engine answers them itself.
AGENT_ONLY_TOOLS = frozenset({"human.ask"})
ENTRY_POINT_GROUP = "switchyard.tools"


@cache
def project_tool_names() -> frozenset[str]:
    return frozenset(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def known_tools() -> frozenset[str]:
    """Every tool a `tool` step may name."""
    return BUILTIN_TOOLS | project_tool_names()
