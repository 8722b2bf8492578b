"""The BMC poller and the remediation engine together, as serve wires them (the poller's
ingest feeds the engine), with the shipped rules, fake BMCs and a fake power_cycle; a real
state store on tmp_path. No processes, no sockets: the workers are not started, the test
hands each incident to the engine itself."""

from __future__ import annotations

import pytest

from inventory.errors import BmcError
from inventory.model import Bmc, Host, Inventory
from inventory.secrets import Secret
from inventory.state import StateStore
from monitor.actions import ActionResult, Actions, Verifiers, VerifyResult
from monitor.engine import Remediator
from monitor.power import BMC_UNREACHABLE, POWERED_OFF
from monitor.rules import SHIPPED_RULES, load_rules
from orchestrate.power_watch import PowerWatch

pytestmark = pytest.mark.unit


class Bmcs:
    def __init__(self) -> None:
        self.power: str | None = "on"        # None: the BMC does not answer

    def driver(self, host: Host, timeout: float) -> Bmcs.Driver:
        return Bmcs.Driver(self)

    class Driver:
        def __init__(self, bmcs: Bmcs) -> None:
            self.bmcs = bmcs

        def power_status(self, timeout: float | None = None) -> str:
            if self.bmcs.power is None:
                raise BmcError("n1 (BMC 127.0.0.1:6230): no answer")
            return self.bmcs.power

        def close(self) -> None:
            pass


@pytest.fixture
def world(tmp_path):
    store = StateStore.open_file(tmp_path / "state.db")
    store.set_node_state("n1", "active")
    n1 = Host(name="n1", address="10.0.0.1", groups=(),
              bmc=Bmc(address="127.0.0.1", port=6230, username="a", password=Secret("x")))
    inv = Inventory(hosts={"n1": n1}, groups={}, all_vars={}, sources=[])
    bmcs = Bmcs()
    calls: list[dict] = []
    ingested: list = []

    watch = PowerWatch(lambda: inv, store, timeout=0.5, bmc_for=bmcs.driver,
                       on_ingested=ingested.extend)

    def power_cycle(call):
        calls.append(dict(call.args))
        bmcs.power = "on"
        watch.poll_once()      # the poller sees it on while the node still boots
        return ActionResult(True, "powered on (it was off)", "run-1")

    actions, verifiers = Actions(), Verifiers()
    for name in ("restart_service", "apply_role", "playbook", "reprovision", "restart_vm"):
        actions.register(name, lambda call: ActionResult(False, "not in this test"))
    actions.register("power_cycle", power_cycle)
    verifiers.register("host_ssh", lambda call: VerifyResult(bmcs.power == "on", "ssh"))
    for name in ("service_active", "prometheus"):
        verifiers.register(name, lambda call: VerifyResult(False, "not in this test"))
    rules = load_rules(SHIPPED_RULES, actions=actions.names(), verifiers=verifiers.names())
    engine = Remediator(store, rules, actions, verifiers)
    watch.on_ingested = lambda items: (ingested.extend(items), engine.on_ingested(items))
    yield store, watch, bmcs, engine, calls, ingested
    watch.stop()
    store.close()


def kinds(store, incident_id):
    return [e["kind"] for e in store.incident_timeline(incident_id)]


def test_power_off_is_healed_by_one_action_and_the_pollers_resolved_does_not_interfere(world):
    store, watch, bmcs, engine, calls, ingested = world
    assert watch.poll_once() == []
    bmcs.power = "off"
    [fired] = watch.poll_once()
    [item] = ingested
    assert item.new and fired.alertname == POWERED_OFF
    engine.process(item.incident_id)
    inc = store.incident(item.incident_id)
    assert (inc.state, inc.rule, inc.alert_status) == ("healed", "powered-off", "resolved")
    assert calls == [{"if_on": "leave"}]
    seen = kinds(store, inc.id)
    # the node is looked at once before it is cycled (it does not answer: it is off)
    assert seen == ["received", "claimed", "verify_failed", "decision", "action_started",
                    "resolved", "action_finished", "verified", "healed"], seen
    # what the poller said about it ("resolved") starts nothing, now or at the next polls
    resolved = [i for i in ingested if i.resolved]
    assert [i.incident_id for i in resolved] == [inc.id]
    engine.on_ingested(resolved)
    assert watch.poll_once() == [] and watch.poll_once() == []
    assert len(store.actions()) == 1 and store.incident(inc.id).state == "healed"


def test_a_silent_bmc_is_escalated_and_nothing_is_power_cycled(world):
    store, watch, bmcs, engine, calls, ingested = world
    watch.poll_once()
    bmcs.power = None
    assert watch.poll_once() == []                 # one miss is not yet an incident
    [fired] = watch.poll_once()
    assert fired.alertname == BMC_UNREACHABLE
    engine.process(ingested[-1].incident_id)
    inc = store.incident(ingested[-1].incident_id)
    assert (inc.state, inc.rule) == ("escalated", "bmc-unreachable")
    assert calls == [] and store.actions() == []


def test_with_the_kill_switch_on_the_node_stays_off_and_the_incident_is_suppressed(world):
    store, watch, bmcs, engine, calls, ingested = world
    store.set_remediation_setting("paused", True, actor="test")
    watch.poll_once()
    bmcs.power = "off"
    watch.poll_once()
    engine.process(ingested[-1].incident_id)
    inc = store.incident(ingested[-1].incident_id)
    assert inc.state == "suppressed" and inc.alert_status == "firing"
    assert calls == [] and store.actions() == [] and bmcs.power == "off"
    assert watch.poll_once() == []                 # still off: the same incident, no other
    assert [i.id for i in store.list_incidents()] == [inc.id]
