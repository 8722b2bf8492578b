"""The ``monitor`` step kind: ``monitor up`` once per run however many hosts the play has,
then each host waits (bounded) for its declared scrape targets to be up in Prometheus, and
fails naming those still down. Fakes for the stack and Prometheus; a fake clock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from inventory.errors import InputError, MetalchainError
from orchestrate.monitor_step import (
    Expected,
    MonitorArgs,
    MonitorStep,
    RunMonitoring,
    StackUp,
    host_targets,
    parse_monitor,
)

pytestmark = pytest.mark.unit

NODE = (Expected("node", 9100),)


def target(host: str, health: str = "up", job: str = "node", port: int = 9100,
           error: str = "") -> dict[str, Any]:
    return {"job": job, "host": host, "health": health, "last_error": error,
            "scrape_url": f"http://10.0.0.9:{port}/metrics"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Ctx:
    host: str
    options: dict[str, Any]
    check: bool = False
    deadline: float | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    state: Any = None

    def connection(self) -> Any:
        raise AssertionError("the monitor step never connects to the host")

    def emit(self, event: str, **fields: Any) -> None:
        pass


def test_arguments():
    assert parse_monitor(None) == parse_monitor({}) == MonitorArgs()
    assert parse_monitor({"wait": 5}) == MonitorArgs(wait=5.0)
    for bad, msg in (({"wait": -1}, "0-3600"), ({"wait": True}, "0-3600"),
                     ({"timeout": 3}, "unknown argument 'timeout'"), ([1], "a mapping")):
        with pytest.raises(ValueError, match=msg):
            parse_monitor(bad)


def test_host_targets_match_by_host_job_and_port():
    seen = host_targets("a", (Expected("node", 9100), Expected("events", 9101)),
                        [target("a"), target("b", job="events", port=9101),
                         target("a", "down", job="events", port=9101,
                                error="connection refused")])
    assert seen.up == ["node:9100"] and not seen.all_up
    assert seen.down == ["events:9101 (down: connection refused)"]
    assert host_targets("c", NODE, [target("a")]).down == [
        "node:9100 (not among Prometheus's targets yet)"]


def monitoring(changes: tuple[str, ...] = (), expected: dict | None = None,
               answers: list[list[dict]] | None = None, clock: Clock | None = None
               ) -> tuple[RunMonitoring, list[int]]:
    ups: list[int] = []
    answers = list(answers or [[target("a")]])

    def up() -> StackUp:
        ups.append(1)
        return StackUp(changes, expected if expected is not None else {"a": NODE})

    def fetch() -> list[dict]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return RunMonitoring(None, up=up, fetch=fetch, clock=clock or Clock()), ups


def test_the_stack_is_brought_up_once_for_every_host_of_the_run():
    mon, ups = monitoring(expected={f"h{i}": NODE for i in range(20)},
                          answers=[[target(f"h{i}") for i in range(20)]])
    step = MonitorStep()
    results: list[Any] = []
    threads = [threading.Thread(target=lambda i=i: results.append(step.run(
        Ctx(f"h{i}", {"monitoring": mon}), MonitorArgs()))) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(ups) == 1
    assert [r.status for r in results] == ["ok"] * 20
    assert results[0].data == {"targets_up": 1, "targets": 1, "down": []}


def test_changed_when_the_run_changed_the_stack_ok_when_not():
    mon, _ = monitoring(changes=("started prometheus",))
    out = MonitorStep().run(Ctx("a", {"monitoring": mon}), MonitorArgs())
    assert out.status == "changed" and out.changes == ["started prometheus"]
    assert out.message == "1 of 1 scrape targets up"


def test_waits_for_the_targets_to_be_up_within_its_bound():
    clock = Clock()
    mon, _ = monitoring(answers=[[], [target("a", "unknown")], [target("a")]], clock=clock)
    step = MonitorStep(sleep=clock.sleep, clock=clock)
    out = step.run(Ctx("a", {"monitoring": mon}), MonitorArgs(wait=30))
    assert out.status == "ok" and clock.now == 2.0


def test_fails_naming_the_targets_still_down_after_the_wait():
    clock = Clock()
    mon, _ = monitoring(answers=[[target("a", "down", error="connection refused")]],
                        clock=clock)
    step = MonitorStep(sleep=clock.sleep, clock=clock)
    out = step.run(Ctx("a", {"monitoring": mon}), MonitorArgs(wait=5))
    assert out.status == "failed" and clock.now == 5.0
    assert out.message == ("1 of 1 scrape targets not up after 5 s: node:9100 (down: "
                           "connection refused)")
    assert out.data["targets_up"] == 0 and out.data["targets"] == 1


def test_the_steps_timeout_bounds_the_wait_too():
    clock = Clock()
    mon, _ = monitoring(answers=[[]], clock=clock)
    step = MonitorStep(sleep=clock.sleep, clock=clock)
    out = step.run(Ctx("a", {"monitoring": mon}, deadline=11.0), MonitorArgs(wait=100))
    assert out.status == "failed" and clock.now == 10.0


def test_a_host_without_scrape_targets_is_skipped():
    mon, _ = monitoring(expected={})
    out = MonitorStep().run(Ctx("a", {"monitoring": mon}), MonitorArgs())
    assert out.status == "skipped" and out.data == {"targets_up": 0, "targets": 0}


def test_a_stack_that_does_not_come_up_fails_every_host_with_its_reason():
    calls: list[int] = []

    def up() -> StackUp:
        calls.append(1)
        raise MetalchainError("secrets.yml: no 'monitor_webhook_token' secret")

    mon = RunMonitoring(None, up=up, fetch=list)
    outs = [MonitorStep().run(Ctx(h, {"monitoring": mon}), MonitorArgs()) for h in "ab"]
    assert [o.status for o in outs] == ["failed", "failed"] and len(calls) == 1
    assert outs[1].message == ("monitoring stack not up: secrets.yml: no "
                               "'monitor_webhook_token' secret")


def test_without_the_runs_monitoring_it_says_so():
    with pytest.raises(InputError, match="run's monitoring"):
        MonitorStep().run(Ctx("a", {}), MonitorArgs())
