"""Fixtures for lab tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lab.sshd import LocalSshd, SitePath, addresses, keygen


@pytest.fixture
def lab_site(tmp_path):
    site = SitePath(tmp_path / "site")
    (site / "keys").mkdir(parents=True)
    (site / "playbooks").mkdir()
    pub = keygen(site / "keys" / "id_ed25519")
    sshd = LocalSshd(tmp_path / "sshd", pub, tuple(addresses()))
    sshd.start()
    try:
        yield _populate(site, sshd, tmp_path)
    finally:
        sshd.stop()


def _populate(site: SitePath, sshd: LocalSshd, tmp_path: Path) -> SitePath:
    hosts = []
    for i, addr in enumerate(addresses(), 1):
        fail = '"yes"' if i in (1, 5, 9) else '"no"'
        hosts.append(f"  h{i:02d}:\n    address: {addr}\n    groups: [fleet]\n"
                     f"    ssh: {{port: {sshd.port}, host_key: \"{sshd.host_pub}\"}}\n"
                     f"    vars: {{fail: {fail}}}\n")
    (site / "inventory.yml").write_text("groups:\n  fleet: {}\nhosts:\n" + "".join(hosts))
    (site / "secrets.yml").write_text("{}\n")
    os.chmod(site / "secrets.yml", 0o600)
    site.sshd = sshd
    site.work = tmp_path / "work"
    site.work.mkdir()
    return site
