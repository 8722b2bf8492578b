"""An apply brings the facts its recipes read (issue 9, defect 7).

On fresh fleet hosts, with no ``metalchain facts`` run first, ``apply --role base`` used to
evaluate ``when: facts.get('virtualization') ...`` against empty facts: the hosts (containers)
were taken for machines, and ``start systemd-timesyncd`` was a change on every run. Now the
first apply gathers the facts (and stores them), and the second one changes nothing, in one
round trip per host."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from inventory.site import Site
from tests.lab.fleetsite import fleet_site, metalchain

pytestmark = pytest.mark.lab

SUBNET = "10.89.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
MIRROR_PORT = 8089
CACHE = "/var/cache/metalchain/mirror-debs"
HOSTS = ("fleet01", "fleet02")


def mc(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return metalchain(*args, timeout=timeout)


def apply_base(site: Path) -> dict:
    r = mc("--site", str(site), "apply", "--role", "base", "fleet", "--json")
    doc = json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr}
    doc["rc"] = r.returncode
    return doc


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Fresh fleet hosts and a mirror with what base installs; no facts gathered."""
    with fleet_site(tmp_path_factory.mktemp("applyfacts") / "site", len(HOSTS), SUBNET,
                    timeout=900) as root:
        r = mc("--site", str(root), "mirror", "build", "--packages", "sudo,systemd-timesyncd",
               "--sign", "--cache-dir", CACHE, "--json")
        assert r.returncode == 0, r.stderr
        r = mc("--site", str(root), "mirror", "serve", "--address", CONTROLLER, "--port",
               str(MIRROR_PORT), "--daemon")
        assert r.returncode == 0, r.stderr
        yield root


def test_base_twice_without_facts_first_changes_nothing_the_second_time(site):
    assert Site.open(site).state.all_facts() == {}          # nobody ran `metalchain facts`
    first = apply_base(site)
    assert first["rc"] == 0, json.dumps(first, indent=1)[-3000:]
    again = apply_base(site)
    assert again["rc"] == 0, json.dumps(again, indent=1)[-3000:]
    changes = {h: v["steps"][0]["changes"] for h, v in again["hosts"].items()}
    assert again["counts"]["changed"] == 0 and again["counts"]["ok"] == len(HOSTS), changes
    assert {h: v["steps"][0]["round_trips"] for h, v in again["hosts"].items()} == \
        dict.fromkeys(HOSTS, 1)
    # The first apply gathered and stored the facts; the hosts are containers, and the apply
    # knew it (timesyncd enabled, not started).
    facts = Site.open(site).state.all_facts()
    assert sorted(facts) == list(HOSTS)
    assert all(f["virtualization"] not in ("", "none", "unknown") for f in facts.values()), facts
    assert {h: v["steps"][0]["round_trips"] for h, v in first["hosts"].items()} == \
        dict.fromkeys(HOSTS, 3)       # facts, probe, act
