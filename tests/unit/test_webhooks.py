"""The webhook signature header: what parses, and what is refused with 401 rather than a crash."""

from __future__ import annotations

import pytest

from orchestrator import webhooks
from orchestrator.errors import Unauthorized

SIG = "ab" * 32


def test_a_header_with_several_v1_signatures_parses():
    assert webhooks.parse_header(f"t=1700000000, v1={SIG},v1={'cd' * 32}") == (1700000000, [SIG, "cd" * 32])


@pytest.mark.parametrize("header", [
    None, "", "t=1700000000", f"v1={SIG}", f"t=\u00b9,v1={SIG}", f"t=-1,v1={SIG}", f"t=1e9,v1={SIG}",
    f"t={'9' * 13},v1={SIG}", "t=1,v1=" + "AB" * 32, "t=1,v1=abc", "t=1,v1=" + "g" * 64, ",,,", "t=,v1=",
])
def test_malformed_headers_are_401(header):
    with pytest.raises(Unauthorized):
        webhooks.parse_header(header)


def test_the_signature_covers_timestamp_and_body():
    signed = webhooks.sign("whsec_x", 1700000000, b'{"a": 1}')
    assert signed != webhooks.sign("whsec_x", 1700000001, b'{"a": 1}')
    assert signed != webhooks.sign("whsec_x", 1700000000, b'{"a": 2}')
    assert signed != webhooks.sign("whsec_y", 1700000000, b'{"a": 1}')
    assert webhooks.signature_header("whsec_x", 1700000000, b'{"a": 1}') == f"t=1700000000,v1={signed}"
