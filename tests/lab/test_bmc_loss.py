"""BMC under loss (issue 13), CI size: one idle QEMU machine behind its lab BMC and a lossy
UDP relay dropping 10 %, 30 % and 50 % of the packets in each direction and delaying the
others by up to 50 ms. Power on/off/cycle/reset and boot-device calls through the relay
succeed or fail with a clear error within their limits, never hang, and never act twice,
counted on the QEMU side (tests/lab/bmcloss.py). Full size: bench/bmc_loss.py."""

from __future__ import annotations

import pytest

from tests.lab import bmcloss

pytestmark = pytest.mark.lab

BMC_PORT = 20801
RELAY_PORT = 20802
DELAY = (0.0, 0.05)


#: Shorter than the bench's limits: a call that fails takes all of its limit (CI budget).
LIMITS = {"bootdev": 4.0, "on": 4.0, "off": 4.0, "cycle": 8.0, "reset": 4.0}
#: Calls per loss level: above 10 % most logins are lost (see bench/bmc_loss.py), so fewer.
CALLS = {0.1: 6, 0.3: 4, 0.5: 4}


@pytest.fixture(scope="module")
def rig():
    with bmcloss.rig(BMC_PORT, RELAY_PORT, seed=1301) as r:
        r.limits = dict(LIMITS)
        yield r


@pytest.mark.parametrize("call", ["cycle", "reset"])
def test_a_request_whose_replies_are_all_lost_acts_at_most_once(rig, call):
    """The deterministic form of "IPMI's own retransmission must not cycle the node twice":
    the session is up, then every reply from the BMC is lost. The request and pyghmi's
    retransmissions reach the BMC; before issue 13 a cycle or reset ran once per copy."""
    rig.relay.set_loss(0.0, 0.0)
    driver = rig.driver()
    try:
        driver.power_on(timeout=10)
        assert rig.events.power() == "on"
        rig.relay.set_loss(0.0, 1.0)
        r = rig.call(driver, call, 1.0, 0)
    finally:
        rig.relay.set_loss(0.0, 0.0)
        driver.close()
    detail = f"{r}"
    assert r.outcome == "failed" and "lossnode (BMC 127.0.0.1" in r.error, detail
    assert not r.double, detail
    if call == "reset":
        assert r.resets == 1 and "sent, reply lost" in r.error, detail
        assert "may have reset" in r.error, detail
    else:  # it reads the state first (lost too), so nothing was sent; never on before off
        assert r.stops <= 1 and r.resumes == 0, detail
        assert "power cycle: could not" in r.error, detail


@pytest.mark.parametrize("loss", [0.1, 0.3, 0.5])
def test_calls_through_a_lossy_link_succeed_or_fail_clearly_and_never_act_twice(rig, loss):
    results = rig.level(loss, CALLS[loss], DELAY, seed=int(loss * 100))
    table = [f"{r.call} from {r.before}: {r.outcome} {r.seconds}s stop={r.stops} "
             f"resume={r.resumes} reset={r.resets} -> {r.after} {r.error}" for r in results]
    assert rig.relay.stats.dropped_up + rig.relay.stats.dropped_down > 0  # the relay did drop
    assert not [r for r in results if r.outcome == "hung"], table
    assert not [r for r in results if r.double], table
    assert not [r for r in results if r.wrong], table
    assert not [r for r in results if r.seconds > r.limit + 0.5], table
    for r in results:
        if r.outcome == "failed":  # a clear one: ours, naming the host and the BMC
            assert not r.error.startswith("UNEXPECTED"), table
            assert "lossnode (BMC 127.0.0.1:" in r.error, table
    if loss == 0.1:
        assert sum(r.outcome == "ok" for r in results) >= len(results) // 2, table


def test_the_relay_forwards_both_ways_and_drops_what_it_is_told():
    """The relay itself (no QEMU): an echo server behind it; all lost up, none lost, delays."""
    import socket
    import threading

    from lab.udprelay import UdpRelay

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 20803))
    echo.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, addr = echo.recvfrom(512)
            except TimeoutError:
                continue
            echo.sendto(data, addr)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        with UdpRelay(("127.0.0.1", 20803), listen_port=20804, drop_up=1.0, seed=1) as relay, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(0.3)
            client.sendto(b"lost", ("127.0.0.1", relay.port))
            with pytest.raises(TimeoutError):
                client.recvfrom(512)
            assert relay.stats.dropped_up == 1
            relay.set_loss(0.0, 0.0, (0.01, 0.03))
            for n in range(5):
                client.sendto(b"x%d" % n, ("127.0.0.1", relay.port))
            got = sorted(client.recvfrom(512)[0] for _ in range(5))
            assert got == [b"x%d" % n for n in range(5)]
            assert relay.stats.up == 6 and relay.stats.down == 5
    finally:
        stop.set()
        server.join(timeout=2)
        echo.close()
