"""What a pinned SSH host key is, and when an offered key matches it: one meaning for every
probe (provision's "does SSH answer with the pinned key" and the lab fleet's readiness)."""

from __future__ import annotations

import base64

import pytest

from provision.sshcheck import parse_pinned_key

pytestmark = pytest.mark.unit


def _blob(key_type: str, body: bytes = b"\x00" * 32) -> bytes:
    name = key_type.encode()
    return len(name).to_bytes(4, "big") + name + len(body).to_bytes(4, "big") + body


ED = _blob("ssh-ed25519")
ED_B64 = base64.b64encode(ED).decode()


def test_a_well_formed_pin_parses_with_or_without_comment():
    assert parse_pinned_key(f"ssh-ed25519 {ED_B64}").blob == ED
    assert parse_pinned_key(f"ssh-ed25519 {ED_B64} root@node1\n").key_type == "ssh-ed25519"


@pytest.mark.parametrize("line,why", [
    ("ssh-ed25519", "not 'TYPE BASE64'"),
    ("", "not 'TYPE BASE64'"),
    # Characters outside base64 are not silently dropped (they were, by one of two probes).
    (f"ssh-ed25519 {ED_B64[:20]}*!{ED_B64[20:]}", "base64 is not valid"),
    (f"ssh-ed25519 {ED_B64[:-1]}", "base64 is not valid"),
    (f"ssh-rsa {ED_B64}", "says ssh-rsa but its data is ssh-ed25519"),
    ("ssh-ed25519 AAAA", "not an SSH public key"),
])
def test_malformed_pins_are_refused_with_a_reason(line, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_pinned_key(line)


def test_match_is_byte_equality_of_the_key_blob():
    pin = parse_pinned_key(f"ssh-ed25519 {ED_B64}")
    assert pin.matches(ED)
    assert not pin.matches(_blob("ssh-ed25519", b"\x01" * 32))
    assert not pin.matches(ED[:-1])


def test_rsa_pins_are_checked_with_sha2_signatures():
    rsa = base64.b64encode(_blob("ssh-rsa", b"\x01\x00\x01")).decode()
    assert parse_pinned_key(f"ssh-rsa {rsa}").algorithms == ("rsa-sha2-512", "rsa-sha2-256")
    assert parse_pinned_key(f"ssh-ed25519 {ED_B64}").algorithms == ("ssh-ed25519",)
