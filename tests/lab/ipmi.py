"""The real ipmitool against a lab node's BMC on loopback: an independent IPMI client."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def ipmitool(site: Path, node: str, *args: str) -> str:
    """``ipmitool -I lanplus ... ARGS`` for ``node`` of the lab site; its stdout (rc 0 asserted).
    The password goes by environment (-E), never on the command line."""
    bmc = yaml.safe_load((site / "inventory.yml").read_text())["hosts"][node]["bmc"]
    password = yaml.safe_load((site / "secrets.yml").read_text())[f"bmc-{node}"]
    r = subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(bmc["port"]),
                        "-U", "admin", "-E", *args], capture_output=True, text=True, timeout=30,
                       env={"IPMI_PASSWORD": password, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return r.stdout
