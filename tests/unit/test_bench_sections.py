"""`make bench --only`: its help lists every section the bench runs (both come from one list), and a name
that is no section is refused, naming them, instead of running nothing."""

from __future__ import annotations

import sys

import pytest

from tests.bench import bench_engine


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["bench_engine", *argv])
    monkeypatch.setenv("COLUMNS", "300")  # the list on one line
    with pytest.raises(SystemExit) as done:
        bench_engine.main()
    out, err = capsys.readouterr()
    return done.value.code, out + err


def test_the_help_of_only_lists_every_section_the_bench_runs(monkeypatch, capsys):
    names = [name for name, _ in bench_engine.SECTIONS]
    assert "retention" in names and len(set(names)) == len(names)
    assert all(callable(getattr(bench_engine.Bench, method)) for _, method in bench_engine.SECTIONS)
    code, said = _main(monkeypatch, capsys, "--help")
    assert code == 0 and f"comma-separated sections to run: {','.join(names)}" in said, said


def test_only_refuses_a_name_that_is_no_section(monkeypatch, capsys):
    code, said = _main(monkeypatch, capsys, "--only", "throughput,retension")
    assert code == 2 and "no section retension; the sections are front,chain," in said, said
    assert bench_engine.sections("retention,census") == {"retention", "census"} and bench_engine.sections("") == set()
