"""Pure IPMI encoding/decoding used by the BMC driver and the lab BMC."""

from __future__ import annotations

import pytest

from lab.bmc import (
    decode_boot_request,
    encode_boot_reply,
    proposed_algorithms,
    suite_acceptable,
)
from provision.bmc import (
    BootSetting,
    build_auth_cap_request,
    completion_text,
    decode_boot_flags,
    decode_power_state,
    encode_boot_flags,
    ipmi_checksum,
    parse_auth_cap_response,
    scrub,
)

pytestmark = pytest.mark.unit


def auth_cap_reply(seq: int, *, code: int = 0, channel: int = 1) -> bytes:
    """A reply shaped like the one pyghmi's server (and real BMCs) send."""
    header = bytes([0x81, (0x07 << 2)])
    body = bytes([0x20, seq << 2, 0x38, code, channel, 0x80, 0x04, 0x02, 0, 0, 0, 0])
    message = header + bytes([ipmi_checksum(header)]) + body + bytes([ipmi_checksum(body)])
    return b"\x06\x00\xff\x07" + b"\x00" * 9 + bytes([len(message)]) + message


def test_checksum_makes_the_sum_zero() -> None:
    data = bytes([0x20, 0x18])
    assert (sum(data) + ipmi_checksum(data)) & 0xFF == 0


def test_auth_cap_request_layout_matches_what_a_bmc_parses() -> None:
    packet = build_auth_cap_request(5)
    assert packet[:4] == b"\x06\x00\xff\x07"
    assert packet[4] == 0  # no authentication, sessionless
    assert packet[13] == len(packet) - 14
    assert packet[19] == 0x38  # command, where pyghmi's server looks for it
    assert packet[20] == 0x8E and packet[18] >> 2 == 5
    assert (sum(packet[14:17])) & 0xFF == 0 and (sum(packet[17:])) & 0xFF == 0


@pytest.mark.parametrize(("packet", "expected"), [
    (auth_cap_reply(5), 1),
    (auth_cap_reply(6), None),              # someone else's sequence number
    (auth_cap_reply(5, code=0xC1), None),   # an error answer is not "up"
    (auth_cap_reply(5)[:-4], None),         # truncated
    (b"\x06\x00\xff\x06" + auth_cap_reply(5)[4:], None),  # ASF, not IPMI
    (b"", None),
])
def test_parse_auth_cap_response(packet: bytes, expected: int | None) -> None:
    assert parse_auth_cap_response(packet, 5) == expected


@pytest.mark.parametrize(("data", "state"), [([0x01, 0, 0], "on"), ([0x00, 0, 0], "off"),
                                             ([0x61, 0x10, 0], "on")])
def test_decode_power_state(data: list[int], state: str) -> None:
    assert decode_power_state(data) == state


def test_decode_power_state_rejects_empty() -> None:
    with pytest.raises(ValueError):
        decode_power_state([])


@pytest.mark.parametrize(("device", "persistent", "data"), [
    ("network", True, [5, 0xC0, 0x04, 0, 0, 0]),
    ("network", False, [5, 0x80, 0x04, 0, 0, 0]),
    ("disk", True, [5, 0xC0, 0x08, 0, 0, 0]),
    ("default", True, [5, 0x00, 0x00, 0, 0, 0]),
])
def test_encode_boot_flags(device: str, persistent: bool, data: list[int]) -> None:
    assert encode_boot_flags(device, persistent) == data


def test_encode_boot_flags_rejects_unknown_devices() -> None:
    with pytest.raises(ValueError):
        encode_boot_flags("floppy", True)


@pytest.mark.parametrize(("data", "setting"), [
    ([1, 5, 0xC0, 0x04, 0, 0, 0], BootSetting("network", True)),
    ([1, 5, 0x80, 0x08, 0, 0, 0], BootSetting("disk", False)),
    ([1, 5, 0x80, 0x0C, 0, 0, 0], BootSetting("disk", False)),     # "safe mode" disk
    ([1, 5, 0x00, 0x04, 0, 0, 0], BootSetting("default", True)),   # flags not valid
    ([1, 5, 0x80, 0x14, 0, 0, 0], BootSetting(5, False)),          # optical: unnamed
])
def test_decode_boot_flags(data: list[int], setting: BootSetting) -> None:
    assert decode_boot_flags(data) == setting


def test_decode_boot_flags_rejects_other_parameters() -> None:
    with pytest.raises(ValueError):
        decode_boot_flags([1, 4, 0, 0])


@pytest.mark.parametrize(("device", "persistent"), [("network", True), ("network", False),
                                                    ("disk", True), ("default", True)])
def test_server_reply_and_client_request_round_trip(device: str, persistent: bool) -> None:
    assert decode_boot_flags(encode_boot_reply(device, persistent)) == BootSetting(
        device, persistent)
    assert decode_boot_request(encode_boot_flags(device, persistent)) == (device, persistent)


def test_decode_boot_request_refuses_unsupported_devices_with_a_completion_code() -> None:
    assert decode_boot_request([5, 0x80, 0x14, 0, 0]) == 0xCC
    assert decode_boot_request([5]) == 0xC7


def open_session_request(auth: int, integrity: int, confidentiality: int,
                         *, wildcard: bool = False) -> bytearray:
    length = 0 if wildcard else 8
    request = bytearray([7, 0, 0, 0, 0xA4, 0xA3, 0xA2, 0xA0])
    for kind, algorithm in ((0, auth), (1, integrity), (2, confidentiality)):
        request += bytearray([kind, 0, 0, length, algorithm, 0, 0, 0])
    return request


@pytest.mark.parametrize(("proposal", "ok"), [
    ((1, 1, 1), True),      # cipher suite 3 (ipmitool -C 3, pyghmi's fallback)
    ((3, 4, 1), False),     # cipher suite 17, SHA-256: pyghmi's server cannot do it
    ((1, 1, 0), False),     # suite 2, no encryption: refuse rather than silently upgrade
    ((0, 0, 0), False),     # suite 0, no authentication at all
])
def test_only_cipher_suite_3_is_accepted(proposal: tuple[int, int, int], ok: bool) -> None:
    parsed = proposed_algorithms(open_session_request(*proposal))
    assert parsed == proposal
    assert suite_acceptable(parsed) is ok


def test_wildcard_proposals_are_accepted() -> None:
    assert proposed_algorithms(open_session_request(0, 0, 0, wildcard=True)) is None
    assert suite_acceptable(None)
    assert suite_acceptable((-1, 1, -1))


def test_completion_text_and_scrub() -> None:
    assert completion_text(0xD5) == "0xd5 (command not supported in present state)"
    assert scrub("bad password s3cr3t given", b"s3cr3t") == "bad password *** given"
    assert scrub("nothing here", b"") == "nothing here"
