"""Lost IPMI replies: idempotent commands are retried, the others are sent at most once.

A fake worker stands in for the pyghmi worker process: it applies a chassis command to a
simulated node (the request reached the BMC) and then, as the loss pattern says, loses the
reply. The node counts its own transitions, so "acted twice" is seen where it would happen.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import provision.bmc as bmcmod
from inventory.errors import BmcError
from provision.bmc import (
    CHASSIS_CONTROL,
    CMD_CHASSIS_CONTROL,
    CMD_GET_CHASSIS_STATUS,
    BmcDriver,
    BootSetting,
    IpmiBmc,
    safe_power_cycle,
)

pytestmark = pytest.mark.unit


class Node:
    """The simulated machine behind the BMC: power state and every transition it made."""

    def __init__(self, power: str = "on") -> None:
        self.power = power
        self.transitions: list[str] = []  # "off", "on", "cycle", "reset", "soft"

    def chassis(self, action: str) -> int:
        if action in ("off", "on"):
            if self.power != action:  # the lab BMC: a no-op in the state it asks for
                self.power = action
                self.transitions.append(action)
            return 0
        if action in ("cycle", "reset"):
            if self.power == "off":
                return 0xD5
            self.transitions.append(action)
            return 0
        self.transitions.append(action)
        return 0


class FakeWorker:
    """Applies requests to ``node``; ``losses`` pops True for each reply that is lost."""

    def __init__(self, node: Node, losses: deque[bool]) -> None:
        self.node = node
        self.losses = losses
        self.sent: list[tuple[int, list[int], bool]] = []

    def raw(self, netfn: int, command: int, data: list[int], timeout: float,
            retry: bool = True) -> dict[str, Any]:
        self.sent.append((command, list(data), retry))
        if command == CMD_CHASSIS_CONTROL:
            name = {v: k for k, v in CHASSIS_CONTROL.items()}[data[0]]
            reply: dict[str, Any] = {"code": self.node.chassis(name), "data": []}
        elif command == CMD_GET_CHASSIS_STATUS:
            reply = {"code": 0, "data": [1 if self.node.power == "on" else 0, 0, 0, 0]}
        else:
            reply = {"code": 0, "data": []}
        if self.losses and self.losses.popleft():
            raise bmcmod._WorkerLost("no answer within 1.00s")
        return reply

    def kill(self) -> None:
        pass


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real sleeping, and the sessionless ping always answers."""
    monkeypatch.setattr(bmcmod.time, "sleep", lambda _s: None)
    monkeypatch.setattr(bmcmod, "ping", lambda *a, **k: 0.001)


def driver_with(monkeypatch: pytest.MonkeyPatch, node: Node, losses: list[bool]
                ) -> tuple[IpmiBmc, FakeWorker]:
    worker = FakeWorker(node, deque(losses))
    driver = IpmiBmc("node1", "127.0.0.1", port=20800, user="admin", password=b"pw")
    monkeypatch.setattr(driver, "_ensure_worker", lambda deadline: worker)
    return driver, worker


@pytest.mark.usefixtures("fast")
@pytest.mark.parametrize(("call", "action", "consequence"), [
    ("power_reset", "reset", "may have reset"),
    ("soft_off", "soft", "may be shutting down"),
])
def test_a_command_unsafe_to_repeat_is_sent_once_and_a_lost_reply_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch, call: str, action: str, consequence: str) -> None:
    node = Node("on")
    driver, worker = driver_with(monkeypatch, node, [True])
    with pytest.raises(BmcError) as err:
        getattr(driver, call)(timeout=5)
    assert "sent, reply lost" in str(err.value) and consequence in str(err.value)
    assert "node1" in str(err.value)
    assert worker.sent == [(CMD_CHASSIS_CONTROL, [CHASSIS_CONTROL[action]], False)]
    assert node.transitions == [action]  # it did act, once


@pytest.mark.usefixtures("fast")
def test_an_idempotent_command_is_retried_after_a_lost_reply(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node("off")
    driver, worker = driver_with(monkeypatch, node, [True])
    driver.power_on(timeout=5)
    assert worker.sent == [(CMD_CHASSIS_CONTROL, [1], True)] * 2
    assert node.transitions == ["on"]  # the second "on" found it on: no second action


@pytest.mark.usefixtures("fast")
@pytest.mark.parametrize("start", ["on", "off"])
def test_power_cycle_never_sends_the_chassis_cycle_control(
        monkeypatch: pytest.MonkeyPatch, start: str) -> None:
    node = Node(start)
    driver, worker = driver_with(monkeypatch, node, [])
    driver.power_cycle(timeout=5)
    controls = [d[0] for c, d, _ in worker.sent if c == CMD_CHASSIS_CONTROL]
    assert CHASSIS_CONTROL["cycle"] not in controls
    assert node.transitions == (["off", "on"] if start == "on" else ["on"])
    assert node.power == "on"


@pytest.mark.usefixtures("fast")
@settings(max_examples=150, deadline=1000)
@given(losses=st.lists(st.booleans(), max_size=24), start=st.sampled_from(["on", "off"]))
def test_power_cycle_under_any_reply_loss_acts_once_or_fails_clearly(
        losses: list[bool], start: str) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(bmcmod.time, "sleep", lambda _s: None)
        monkeypatch.setattr(bmcmod, "ping", lambda *a, **k: 0.001)
        node = Node(start)
        driver, worker = driver_with(monkeypatch, node, losses)
        try:
            driver.power_cycle(timeout=5)
        except BmcError as exc:
            assert "node1" in str(exc)
        else:
            assert node.power == "on"
        # Never more than one off and one on, whatever was lost.
        assert node.transitions in ([], ["off"], ["off", "on"], ["on"])
        if start == "off":
            assert "off" not in node.transitions
        assert all(d[0] != CHASSIS_CONTROL["cycle"] for c, d, _ in worker.sent
                   if c == CMD_CHASSIS_CONTROL)


class FakeBmc(BmcDriver):
    """A BmcDriver whose node changes state and whose BMC can stop answering."""

    host = "node2"
    address = "192.0.2.9"

    def __init__(self, power: str, answering: bool = True) -> None:
        self.node = Node(power)
        self.answering = answering

    def _answer(self) -> None:
        if not self.answering:
            raise BmcError(f"{self.host} (BMC {self.address}): no answer")

    def ping(self, timeout: float = 1.0) -> bool:
        return self.answering

    def power_status(self, timeout: float | None = None) -> Any:
        self._answer()
        return self.node.power

    def power_on(self, timeout: float | None = None) -> None:
        self._answer()
        self.node.chassis("on")

    def power_off(self, timeout: float | None = None) -> None:
        self._answer()
        self.node.chassis("off")

    def power_cycle(self, timeout: float | None = None) -> None:
        safe_power_cycle(self, timeout or 5.0)

    def soft_off(self, timeout: float | None = None) -> None:
        self._answer()

    def get_bootdev(self, timeout: float | None = None) -> BootSetting:
        return BootSetting("default", True)

    def set_bootdev(self, device: Any, persistent: bool = True,
                    timeout: float | None = None) -> BootSetting:
        return BootSetting(device, persistent)


def test_safe_power_cycle_reports_what_it_did() -> None:
    assert safe_power_cycle(FakeBmc("on"), 5.0) == "cycled"
    assert safe_power_cycle(FakeBmc("off"), 5.0) == "powered on (it was off)"


def test_safe_power_cycle_gives_up_at_its_time_limit_naming_the_step() -> None:
    bmc = FakeBmc("on", answering=False)
    with pytest.raises(BmcError, match=r"node2 .*power cycle: could not read the power state "
                                       r"within the time limit \(last error: .*no answer"):
        safe_power_cycle(bmc, 0.3, interval=0.05)
    assert bmc.node.transitions == []


def test_worker_asks_pyghmi_not_to_retransmit_when_told() -> None:
    calls: list[dict[str, Any]] = []

    class Session:
        def __init__(self) -> None:
            self.lastresponse = None
            self.incommand = False
            self.evq: deque[Any] = deque()

        def raw_command(self, **kwargs: Any) -> None:
            calls.append(kwargs)
            kwargs["callback"]({"command": 2, "code": 0, "data": b""})

    class SessionClass:
        @staticmethod
        def wait_for_rsp(timeout: float) -> None:
            pass

    for retry in (False, True):
        request = {"netfn": 0, "command": 2, "data": [3], "retry": retry}
        bmcmod._session_command(Session(), SessionClass, request, bmcmod.time.monotonic() + 1)
    assert [c["retry"] for c in calls] == [False, True]


def test_only_lost_packets_make_a_login_worth_repeating() -> None:
    assert bmcmod.login_error_transient("timeout")
    assert bmcmod.login_error_transient("Session no longer connected")
    assert not bmcmod.login_error_transient("Incorrect password provided")
    assert not bmcmod.login_error_transient("Unauthorized name")


@pytest.mark.usefixtures("fast")
def test_an_idempotent_command_is_retried_while_the_call_has_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node("on")
    driver, worker = driver_with(monkeypatch, node, [True] * 5)
    assert driver.power_status(timeout=5) == "on"
    assert len(worker.sent) == 6


@pytest.mark.usefixtures("fast")
def test_the_power_step_and_so_the_power_cycle_remediation_use_the_safe_cycle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """orchestrate/power_remedy.py runs the ``power`` step with action ``cycle`` (when the
    node is on) or ``on``; both reach the driver's idempotent calls, never chassis cycle."""
    from provision.power_step import parse_power, power_action

    node = Node("on")
    driver, worker = driver_with(monkeypatch, node, [False, True, False, False, True])
    assert power_action(driver, parse_power({"action": "cycle"}), 5.0) == "cycled"
    assert node.transitions == ["off", "on"]
    assert all(d[0] != CHASSIS_CONTROL["cycle"] for c, d, _ in worker.sent
               if c == CMD_CHASSIS_CONTROL)
