"""The web UI's pure parts: the step graph layout, the start form from an input schema, the charts."""

from __future__ import annotations

import pytest

from api.ui import charts, forms, graph

DIAMOND = [{"id": "a"}, {"id": "b", "needs": ["a"]}, {"id": "c", "needs": ["a"]}, {"id": "d", "needs": ["b", "c"]},
           {"id": "e", "needs": ["a", "d"]}, {"id": "alone"}]


def overlap(p, q) -> bool:
    return p.x < q.x + q.w and q.x < p.x + p.w and p.y < q.y + q.h and q.y < p.y + p.h


def test_layers_run_left_to_right_and_nodes_do_not_overlap():
    layout = graph.layout(DIAMOND)
    at = {n.id: n for n in layout.nodes}
    assert at["a"].x < at["b"].x == at["c"].x < at["d"].x < at["e"].x
    assert at["b"].y != at["c"].y
    assert not any(overlap(p, q) for p in layout.nodes for q in layout.nodes if p is not q)
    assert all(n.x >= 0 and n.y >= 0 and n.x + n.w <= layout.width and n.y + n.h <= layout.height
               for n in layout.nodes)


def test_edges_go_from_the_sources_right_side_to_the_targets_left_side():
    layout = graph.layout(DIAMOND)
    at = {n.id: n for n in layout.nodes}
    assert {(e.source, e.target) for e in layout.edges} == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"),
                                                           ("a", "e"), ("d", "e")}
    for e in layout.edges:
        (x0, y0), (x1, y1) = e.points[0], e.points[-1]
        assert x0 == at[e.source].x + at[e.source].w and y0 == at[e.source].y + at[e.source].h / 2
        assert x1 == at[e.target].x and y1 == at[e.target].y + at[e.target].h / 2
    long = next(e for e in layout.edges if (e.source, e.target) == ("a", "e"))
    assert len(long.points) > 2  # routed around the layers it skips
    assert not any(n.y < y < n.y + n.h and n.x < x < n.x + n.w for n in layout.nodes for x, y in long.points[1:-1])


@pytest.mark.parametrize(("status", "label", "css"), [
    ("succeeded", "Success", "ok"), ("failed", "Failed", "bad"), ("cancelled", "Cancelled", "cancel"),
    ("skipped", "Skipped (Blocked)", "skip"), ("running", "Running", "run"),
    ("waiting", "Waiting", "wait"), ("queued", "Queued", "queue"), ("retrying", "Retrying", "retry"), ("pending", "Pending", "pend"),
    (None, "Pending", "pend"), ("unheard-of", "Pending", "pend"),
])
def test_each_status_has_its_label_and_colour(status, label, css):
    assert graph.label(status) == (label, css)
    node = graph.layout([{"id": "s", "type": "tool"}], {"s": status} if status else {}).nodes[0]
    assert (node.label, node.css, node.type) == (label, css, "tool")


def test_unknown_needs_and_empty_definitions_do_not_raise():
    assert graph.layout([]).nodes == ()
    layout = graph.layout([{"id": "x", "needs": ["ghost", "x"]}])
    assert [n.id for n in layout.nodes] == ["x"] and layout.edges == ()


SCHEMA = {"type": "object", "required": ["ticket"], "properties": {
    "ticket": {"type": "string"}, "n": {"type": "integer"}, "ratio": {"type": "number"},
    "urgent": {"type": "boolean"}, "tags": {"type": "array"}, "team": {"enum": ["a", "b"]}}}


def test_the_form_has_a_field_per_property():
    fields = {f.name: f for f in forms.fields(SCHEMA)}
    assert {n: f.kind for n, f in fields.items()} == {"ticket": "string", "n": "integer", "ratio": "number",
                                                     "urgent": "boolean", "tags": "json", "team": "enum"}
    assert fields["ticket"].required and not fields["n"].required
    assert [f.name for f in forms.fields({})] == ["input"]


@pytest.mark.parametrize(("form", "expected"), [
    ({"ticket": "T-1"}, {"ticket": "T-1", "urgent": False}),
    ({"ticket": "T", "n": "3", "ratio": "0.5", "urgent": "on", "tags": '["x"]', "team": "b"},
     {"ticket": "T", "n": 3, "ratio": 0.5, "urgent": True, "tags": ["x"], "team": "b"}),
])
def test_the_form_parses_to_the_input(form, expected):
    assert forms.parse(SCHEMA, form) == expected


def test_every_field_that_cannot_be_read_or_breaks_the_schema_is_named():
    strict = {**SCHEMA, "properties": {**SCHEMA["properties"], "ticket": {"type": "string", "minLength": 3}}}
    with pytest.raises(forms.FormErrors) as raised:
        forms.parse(strict, {"ticket": "T", "n": "three", "tags": "[oops", "team": "c"})
    assert raised.value.errors == {"n": "n must be an integer", "tags": "tags must be valid JSON",
                                   "ticket": "'T' is too short", "team": "'c' is not one of ['a', 'b']"}
    with pytest.raises(forms.FormErrors) as raised:
        forms.parse({**SCHEMA, "required": ["ticket", "n"]}, {"ticket": "T-1"})
    assert raised.value.errors == {"n": "n is required"}
    assert forms.schema_errors({**SCHEMA, "required": ["ticket", "n"]}, {"ticket": "T"}) == {
        "n": "'n' is a required property"}


def test_the_apis_input_problems_go_beside_their_fields():
    problems = ["input['ticket']: 'ab' is too short", "input: 'n' is a required property",
                "input['tags'][0]: 1 is not of type 'string'", "something else"]
    assert forms.api_errors(problems, "refused") == {
        "ticket": "'ab' is too short", "n": "'n' is a required property", "tags": "1 is not of type 'string'",
        "": "something else"}
    assert forms.api_errors([], "workflow archived") == {"": "workflow archived"}


def test_a_schema_without_properties_takes_the_input_as_json():
    assert forms.parse({}, {"input": '{"a": 1}'}) == {"a": 1}
    with pytest.raises(ValueError):
        forms.parse({}, {"input": "[1]"})


def test_success_rate_series_and_totals():
    ok = [{"t": "2026-12-03T10:00:00Z", "value": 3}, {"t": "2026-12-03T11:00:00Z", "value": 0},
          {"t": "2026-12-03T12:00:00Z", "value": 0}]
    bad = [{"t": p["t"], "value": v} for p, v in zip(ok, (1, 2, 0), strict=True)]
    rate = charts.success_rate(ok, bad)
    assert [p["value"] for p in rate] == [0.75, 0.0, None]
    assert charts.overall_rate(ok, bad) == 0.5 and charts.overall_rate(ok[1:2], ok[1:2]) is None
    chart = charts.series("Success rate", rate, percent=True)
    assert chart.total is None and chart.values == (0.75, 0.0, None) and not chart.empty
    assert chart.t[1] - chart.t[0] == 3600
    steps = charts.series("Steps", [{"t": ok[0]["t"], "value": 42}, {"t": ok[1]["t"], "value": 4}])
    assert steps.total == 46 and steps.as_json()["v"] == [42, 4]
    credits = charts.series("Credits", [{"t": ok[0]["t"], "value": 0}, {"t": ok[1]["t"], "value": 0.0}])
    assert credits.empty and credits.total == 0
    assert charts.series("x", [{"t": ok[0]["t"], "value": 0.1}, {"t": ok[1]["t"], "value": 0.2}]).total == 0.3


def test_a_run_graph_says_why_a_step_was_skipped_shows_for_each_progress_and_leads_on():
    from api.ui import graph as ui_graph

    drawn = ui_graph.layout([{"id": "a", "type": "tool"}, {"id": "b", "type": "tool", "needs": ["a"]},
                             {"id": "c", "type": "tool", "needs": ["a"]}])
    steps = {"a": {"id": "a"}, "b": {"id": "b", "skipped_reason": "upstream_skipped"},
             "c": {"id": "c", "items": {"total": 40, "succeeded": 12, "failed": 2, "running": 3, "pending": 23,
                                        "cancelled": 0}}}
    nodes = {n.id: n for n in ui_graph.with_statuses(drawn, {"a": "succeeded", "b": "skipped", "c": "running"},
                                                     steps, {"c": "/runs/r/steps/c/items"}).nodes}
    assert nodes["b"].label == "Skipped (Upstream skipped)" and nodes["b"].css == "skip"
    assert (nodes["c"].note, nodes["c"].href) == ("12/40, 2 failed", "/runs/r/steps/c/items")
    assert (nodes["a"].note, nodes["a"].href) == ("", "")
