"""Signed file URLs with a clock the test controls, and the local store's name checks."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from orchestrator import artifacts
from orchestrator.errors import NotFound, Unauthorized

KEY = "k" * 32
RUN = "run_0123456789abcdef0123"
T0 = 1_800_000_000.0


def _parts(path: str) -> tuple[str, str, str, str]:
    url = urlsplit(path)
    run_id, name = url.path.split("/")[-2:]
    query = parse_qs(url.query)
    return run_id, name, query["expires"][0], query["sig"][0]


def test_a_url_is_valid_for_15_minutes_and_refused_after():
    path, expires = artifacts.signed_path(KEY, RUN, "report.txt", T0, 900)
    assert expires == T0 + 900
    run_id, name, exp, sig = _parts(path)
    for now in (T0, T0 + 899, T0 + 900):
        artifacts.verify(KEY, run_id, name, expires=exp, sig=sig, now=now)
    with pytest.raises(Unauthorized, match="expired"):
        artifacts.verify(KEY, run_id, name, expires=exp, sig=sig, now=T0 + 901)


def _variants(text: str):
    """``text`` with each character changed in turn."""
    for i, char in enumerate(text):
        yield text[:i] + ("0" if char != "0" else "1") + text[i + 1:]


def test_changing_any_character_of_signature_path_or_expiry_is_refused():
    run_id, name, exp, sig = _parts(artifacts.signed_path(KEY, RUN, "report.txt", T0, 900)[0])
    tampered = [(run_id, name, exp, s) for s in _variants(sig)]
    tampered += [(r, name, exp, sig) for r in _variants(run_id)]
    tampered += [(run_id, n, exp, sig) for n in _variants(name)]
    tampered += [(run_id, name, e, sig) for e in _variants(exp)]
    tampered += [(run_id, name, str(int(exp) + 3600), sig), (run_id, name, None, sig), (run_id, name, exp, None)]
    assert len(tampered) > 100
    for t_run_id, t_name, t_expires, t_sig in tampered:
        with pytest.raises(Unauthorized):
            artifacts.verify(KEY, t_run_id, t_name, expires=t_expires, sig=t_sig, now=T0)
    with pytest.raises(Unauthorized):
        artifacts.verify("another key" * 3, run_id, name, expires=exp, sig=sig, now=T0)


@pytest.mark.parametrize("name", ["../etc", ".hidden", "a/b", "", "x" * 201, "-rf", "nul\x00"])
def test_the_store_refuses_names_that_could_leave_its_folder(tmp_path, name):
    store = artifacts.LocalStore(tmp_path)
    with pytest.raises(NotFound):
        store.write(RUN, name, b"x")
    with pytest.raises(NotFound):
        store.write("../run_x", "ok.txt", b"x")


def test_the_store_writes_lists_and_replaces(tmp_path):
    store = artifacts.LocalStore(tmp_path)
    store.write(RUN, "a.txt", b"one")
    store.write(RUN, "a.txt", b"three")
    store.write(RUN, "b.bin", b"\x00\x01")
    assert store.list(RUN) == [artifacts.StoredFile("a.txt", 5), artifacts.StoredFile("b.bin", 2)]
    assert store.path(RUN, "a.txt").read_bytes() == b"three"
    with pytest.raises(NotFound):
        store.path(RUN, "c.txt")


@pytest.mark.parametrize("expires", ["\u00b9", "\u0663", "1e9", "-1", " 1", "1" * 13, ""])
def test_an_expiry_that_is_not_plain_digits_is_refused_not_a_crash(expires):
    # '¹' and '٣' are digits to str.isdigit() but not numbers to int(); schemathesis found the first.
    with pytest.raises(Unauthorized):
        artifacts.verify(KEY, RUN, "a.txt", expires=expires, sig="0" * 64, now=T0)
