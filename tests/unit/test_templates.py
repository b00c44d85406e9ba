"""Templates in step fields: nested rendering, strict undefined names, the sandbox."""

from __future__ import annotations

import pytest

from orchestrator import templates
from orchestrator.errors import PermanentStepError

CONTEXT = {
    "input": {"ticket": "T-42", "tags": ["a", "b"]},
    "steps": {"fetch": {"output": {"text": "hello", "n": 3}}},
    "run": {"id": "run_1", "attempt": 2},
}


def test_render_walks_nested_structures_and_leaves_other_values_alone():
    value = {
        "title": "Ticket {{ input.ticket }}",
        "parts": ["{{ steps.fetch.output.text }}", 3, None, True, {"deep": "{{ run.id }}/{{ run.attempt }}"}],
        "plain": "no template {here}",
        "number": 1.5,
    }
    assert templates.render(value, CONTEXT) == {
        "title": "Ticket T-42",
        "parts": ["hello", 3, None, True, {"deep": "run_1/2"}],
        "plain": "no template {here}",
        "number": 1.5,
    }


def test_render_statements_and_filters():
    assert templates.render("{% for t in input.tags %}[{{ t }}]{% endfor %}", CONTEXT) == "[a][b]"
    assert templates.render("{{ input.ticket | lower }}", CONTEXT) == "t-42"
    assert templates.render("{{ steps.fetch.output.n * 2 }}", CONTEXT) == 6
    assert templates.render("n = {{ steps.fetch.output.n * 2 }}", CONTEXT) == "n = 6"


def test_a_lone_expression_keeps_its_type_and_any_other_template_is_a_string():
    assert templates.render({"tags": "{{ input.tags }}", "n": " {{ steps.fetch.output.n }} ",
                             "text": "{{ input.tags | join(',') }}", "both": "{{ input.ticket }}{{ run.id }}"},
                            CONTEXT) == {"tags": ["a", "b"], "n": 3, "text": "a,b", "both": "T-42run_1"}
    with pytest.raises(PermanentStepError, match="not a JSON value"):
        templates.render("{{ range(3) }}", CONTEXT)


def test_render_does_not_mutate_its_input():
    value = {"a": ["{{ input.ticket }}"]}
    templates.render(value, CONTEXT)
    assert value == {"a": ["{{ input.ticket }}"]}


@pytest.mark.parametrize(
    "template",
    [
        "{{ input.missing }}",
        "{{ steps.nope.output }}",
        "{{ nothing }}",
        "x {{ steps.fetch.output.missing | upper }}",
        "{% for x in undefined_list %}{{ x }}{% endfor %}",
    ],
)
def test_undefined_names_fail_for_good_with_template_error(template):
    with pytest.raises(PermanentStepError) as caught:
        templates.render({"nested": [template]}, CONTEXT)
    assert caught.value.code == "template_error"
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ input.__class__.__init__.__globals__ }}",
        "{{ input.update({'ticket': 'x'}) }}",
        "{{ input.tags.append('c') }}",
    ],
)
def test_the_sandbox_refuses_python_internals_and_mutation(template):
    context = {"input": {"ticket": "T-42", "tags": ["a"]}}
    with pytest.raises(PermanentStepError) as caught:
        templates.render(template, context)
    assert caught.value.code == "template_error"
    assert "unsafe" in caught.value.message
    assert context == {"input": {"ticket": "T-42", "tags": ["a"]}}


def test_syntax_problems_name_where_the_error_is():
    value = {"ok": "{{ input.a }}", "list": ["fine", "{{ broken "], "deep": {"x": "{% if %}"}, "n": 3}
    problems = templates.syntax_problems(value, "steps.0")
    assert len(problems) == 2
    assert problems[0].startswith("steps.0.list[1]: template syntax error")
    assert problems[1].startswith("steps.0.deep.x: template syntax error")
    assert templates.syntax_problems({"a": "{{ x }}", "b": "plain"}, "s") == []
