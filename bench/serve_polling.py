"""How much `metalchain serve` asks its own database and the BMCs while nothing happens.

Runs the watching part of `serve` (no boot server: nothing calls back) for WINDOW seconds on a
throw-away site and counts the state-store queries (SQLAlchemy ``before_cursor_execute``) and
the BMC sessions (driver objects that issued a command: for IPMI each is one pyghmi worker
process and one RMCP+ login) and BMC commands. Scenarios: ``idle`` (no node in progress) and
``installing`` (node1 installing, its 600 s timeout far away). The BMC is a counting fake, the
inventory's addresses are loopback, so nothing leaves the machine.

Works on this tree and on 210e765 (the serve loop then is ``Controller.reconcile`` every
``RECONCILE_EVERY`` seconds), so before and after are measured by the same script::

    .venv/bin/python bench/serve_polling.py --scenario idle --window 60
    mkdir /tmp/base && git archive 210e765 | tar -x -C /tmp/base
    # -S: skip the venv's editable-install hook, which would import this tree instead
    PYTHONPATH=/tmp/base:.venv/lib/python3.11/site-packages .venv/bin/python -S \
        bench/serve_polling.py --scenario installing --window 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

INVENTORY = """\
hosts:
  node1:
    address: 127.0.0.1
    ssh: {port: 1}
    bmc: {address: 127.0.0.1, port: 1, username: admin, password: {secret: bmc-node1}}
    provision: {mac: "52:54:00:77:00:11", ip: 127.0.0.1}
"""
SETTINGS = """\
boot:
  interface: lo
  address: 127.0.0.1
  subnet: 127.0.0.0/8
  http_port: 0
"""


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queries = 0
        self.sessions = 0
        self.commands = 0


class CountingBmc:
    """Stands in for IpmiBmc: a session starts at the first command, like the real driver."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.connected = False

    def __enter__(self) -> CountingBmc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.connected = False

    def _command(self) -> None:
        with self.counts.lock:
            if not self.connected:
                self.counts.sessions += 1
                self.connected = True
            self.counts.commands += 1

    def ping(self, timeout: float = 1.0) -> bool:
        return True

    def power_status(self, timeout: float | None = None) -> str:
        self._command()
        return "on"


def make_site(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "state").mkdir()
    (root / "keys").mkdir()
    (root / "inventory.yml").write_text(INVENTORY)
    (root / "metalchain.yml").write_text(SETTINGS)
    (root / "secrets.yml").write_text("bmc-node1: not-a-real-password\n")
    (root / "secrets.yml").chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(root / "keys" / "id_ed25519")], check=True, timeout=30)


def measure(scenario: str, window: float) -> dict[str, object]:
    from sqlalchemy import event

    import provision.drivers
    from inventory.site import Site

    counts = Counts()
    provision.drivers.driver_for = lambda host, timeout=5.0: CountingBmc(counts)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "site"
        make_site(root)
        site = Site.open(root)
        if scenario == "installing":
            for state in ("enrolled", "powering_on", "pxe_booting", "installing"):
                site.state.set_node_state("node1", state, "bench")

        def count(*_args: object) -> None:
            with counts.lock:
                counts.queries += 1

        event.listen(site.state._engine, "before_cursor_execute", count)
        try:
            from orchestrate.provisioning import Serve
        except ImportError:
            version = "210e765 (reconcile every RECONCILE_EVERY s)"
            from orchestrate.commands.provision_cmd import RECONCILE_EVERY, Controller

            ctl = Controller(site)
            stop = threading.Event()
            timer = threading.Timer(window, stop.set)
            timer.start()
            ctl.reconcile()                      # serve's loop, without the boot server
            while not stop.wait(RECONCILE_EVERY):
                ctl.reconcile()
        else:
            version = "this tree (watchers woken by callbacks, slow backstop)"
            srv = Serve(site)
            runner = threading.Thread(target=srv.run)
            runner.start()
            time.sleep(window)
            srv.request_stop()
            runner.join(10)
            srv.close()
        state = site.state.node("node1")
        site.close()
    per_minute = 60.0 / window
    return {"version": version, "scenario": scenario, "window_s": window,
            "db_queries_per_min": round(counts.queries * per_minute, 1),
            "bmc_sessions_per_min": round(counts.sessions * per_minute, 1),
            "bmc_commands_per_min": round(counts.commands * per_minute, 1),
            "node1_state_after": state.state if state else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("idle", "installing"), default="idle")
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.scenario, args.window)))


if __name__ == "__main__":
    main()
