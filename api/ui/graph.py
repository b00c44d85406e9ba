"""The step graph of a workflow, laid out for drawing — pure: a definition and step statuses in,
positioned nodes and edges out.

The layering is grandalf's Sugiyama layout (layers, crossing reduction, dummy nodes for long
edges); this module only turns it left-to-right, places separate components side by side, and
names each node's status the way the UI shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

from orchestrator import steptypes

NODE_W, NODE_H = 150, 46
GAP_X, GAP_Y = 70, 22  # between layers (left to right), between nodes of a layer
MARGIN = 12

# Step status -> (the label operators read, the CSS class that colours it).
LABELS = {
    "succeeded": ("Success", "ok"),
    "failed": ("Failed", "bad"),
    "cancelled": ("Cancelled", "cancel"),
    "skipped": ("Skipped (Blocked)", "skip"),
    "running": ("Running", "run"),
    "queued": ("Queued", "queue"),  # dispatched, no worker has it yet
    "retrying": ("Retrying", "retry"),  # failed, waits out its backoff before the next attempt
    "waiting": ("Waiting", "wait"),
    "pending": ("Pending", "pend"),
}
# Every step status, in the order the legend lists them.
LEGEND = ("pending", "queued", "running", "retrying", "waiting", "succeeded", "failed", "cancelled", "skipped")


def label(status: str | None) -> tuple[str, str]:
    """The (label, css class) of a step status; an unknown or missing status reads as Pending."""
    return LABELS.get(status or "pending", LABELS["pending"])


def type_label(step_type: str | None) -> str:
    """The short label of a step type (its registered label; an unknown type reads as its name)."""
    registered = steptypes.find(step_type or "")
    return registered.label if registered is not None else (step_type or "?")


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    status: str
    label: str
    css: str
    x: float  # top-left corner
    y: float
    w: float = NODE_W
    h: float = NODE_H
    type_label: str = ""  # the step type as people read it: "Approval", "Wait for event"
    note: str = ""  # what else a run's page shows on the node: a for-each step's progress
    href: str = ""  # where the node leads: a for-each step's items, a sub-run step's child run


@dataclass(frozen=True)
class Link:
    source: str
    target: str
    points: tuple[tuple[float, float], ...]  # from the source's right side to the target's left side

    @property
    def svg_points(self) -> str:
        """The points as an SVG ``points`` attribute (one string: the page has hundreds of edges)."""
        return " ".join(f"{x},{y}" for x, y in self.points)


@dataclass(frozen=True)
class Layout:
    nodes: tuple[Node, ...]
    edges: tuple[Link, ...]
    width: float
    height: float


class _View:
    """grandalf reads w/h and writes xy (centre) here; top-to-bottom, so w is our height."""

    def __init__(self):
        self.w, self.h, self.xy = NODE_H, NODE_W, (0.0, 0.0)


class _EdgeView:
    def __init__(self):
        self.points: list[tuple[float, float]] = []

    def setpath(self, points):
        self.points = [tuple(p) for p in points]


def layout(steps: list[dict], statuses: dict[str, str] | None = None) -> Layout:
    """Lay out ``steps`` (a definition's ``steps``: ``id``, ``type``, ``needs``) left to right.

    ``statuses`` maps step id -> step status (missing: pending). Needs naming unknown steps are
    ignored (a stored definition was validated; this never raises on one).
    """
    statuses = statuses or {}
    vertices = {s["id"]: Vertex(s["id"]) for s in steps}
    for v in vertices.values():
        v.view = _View()
    edges = []
    for s in steps:
        for need in s.get("needs") or []:
            if need in vertices and need != s["id"]:
                edge = Edge(vertices[need], vertices[s["id"]])
                edge.view = _EdgeView()
                edges.append(edge)
    graph = Graph(list(vertices.values()), edges)
    centres: dict[str, tuple[float, float]] = {}
    offset = 0.0  # components go one under the other
    for component in graph.C:
        sug = SugiyamaLayout(component)
        sug.xspace, sug.yspace = GAP_Y, GAP_X
        roots = [v for v in component.sV if not v.e_in()]
        sug.init_all(roots=roots)
        sug.draw()
        xs = [v.view.xy[0] for v in component.sV]
        low, top = min(xs) - NODE_H / 2, min(v.view.xy[1] for v in component.sV) - NODE_W / 2
        for v in component.sV:
            gx, gy = v.view.xy  # grandalf: x across a layer, y down the layers
            centres[v.data] = (gy - top + MARGIN, gx - low + offset + MARGIN)
        for e in component.sE:
            e.view.offset = (low, top, offset)
        # The component's extent includes the dummy nodes that route its long edges.
        bottom = max(xs + [p[0] for e in component.sE for p in e.view.points])
        offset += bottom - low + NODE_H / 2 + GAP_Y
    nodes = tuple(
        Node(s["id"], s.get("type", "?"), statuses.get(s["id"], "pending"), *label(statuses.get(s["id"])),
             x=centres[s["id"]][0] - NODE_W / 2, y=centres[s["id"]][1] - NODE_H / 2,
             type_label=type_label(s.get("type")))
        for s in steps
    )
    links = tuple(_link(e, centres) for e in edges)
    width = max((n.x + n.w for n in nodes), default=0) + MARGIN
    height = max((n.y + n.h for n in nodes), default=0) + MARGIN
    return Layout(nodes, links, width, height)


def _link(edge: Edge, centres: dict[str, tuple[float, float]]) -> Link:
    source, target = edge.v[0].data, edge.v[1].data
    (sx, sy), (tx, ty) = centres[source], centres[target]
    low, top, offset = edge.view.offset
    # The route through grandalf's dummy nodes (long edges), turned like the nodes.
    inner = [(gy - top + MARGIN, gx - low + offset + MARGIN) for gx, gy in edge.view.points[1:-1]]
    points = ((sx + NODE_W / 2, sy), *inner, (tx - NODE_W / 2, ty))
    return Link(source, target, tuple((round(x, 1), round(y, 1)) for x, y in points))


def with_statuses(drawn: Layout, statuses: dict[str, str], steps: dict[str, dict] | None = None,
                  links: dict[str, str] | None = None) -> Layout:
    """``drawn`` with each node showing its step's status (the positions depend on the definition alone,
    so a run's page lays a version out once and only recolours it). With the run's ``steps`` (by id, as
    GET /runs/{id} answers them), a skipped step says why and a for-each step shows its items' progress;
    ``links``: where a node leads (by step id)."""
    steps, links = steps or {}, links or {}
    nodes = []
    for n in drawn.nodes:
        step = steps.get(n.id, {})
        text, css = label(statuses.get(n.id))
        if step.get("skipped_reason"):
            text = f"Skipped ({step['skipped_reason'].replace('_', ' ').capitalize()})"
        nodes.append(replace(n, status=statuses.get(n.id, "pending"), label=text, css=css,
                             note=items_note(step.get("items")), href=links.get(n.id, "")))
    return replace(drawn, nodes=tuple(nodes))


def items_note(items: dict | None) -> str:
    """A for-each step's progress as its node shows it: "12/40, 2 failed" (succeeded of all)."""
    if not items:
        return ""
    note = f"{items['succeeded']}/{items['total']}"
    return note + (f", {items['failed']} failed" if items["failed"] else "")
