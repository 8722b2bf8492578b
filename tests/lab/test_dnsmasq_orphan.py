"""A dnsmasq left behind by a controller killed with SIGKILL (no atexit ran) is stopped by the
next boot server start and by ``lab down`` (``stop_orphan``), and only if its command line
names this state directory's config: a recycled pid or another site's dnsmasq is left alone.
The crash campaign found one still running an hour after its lab was gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from provision.bootserver.dnsmasq import DnsmasqFiles, stop_orphan
from runtime.pidfile import process_alive

pytestmark = pytest.mark.lab


def fake_dnsmasq(conf: str) -> subprocess.Popen[bytes]:
    """A process whose command line is a dnsmasq's as far as the pid check can tell."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "--keep-in-foreground", f"--conf-file={conf}"])


def test_the_orphan_of_this_state_dir_is_stopped_and_nothing_else(tmp_path):
    mine, other = DnsmasqFiles(tmp_path / "mine"), DnsmasqFiles(tmp_path / "other")
    for files in (mine, other):
        files.state_dir.mkdir()
    orphan = fake_dnsmasq(str(mine.conf))
    stranger = fake_dnsmasq(str(other.conf))
    try:
        mine.pid.write_text(f"{orphan.pid}\n")
        assert stop_orphan(mine.state_dir) == orphan.pid
        assert orphan.wait(10) is not None and not mine.pid.exists()
        # Another state dir's dnsmasq under our pid file (a recycled pid): not ours, left.
        mine.pid.write_text(f"{stranger.pid}\n")
        assert stop_orphan(mine.state_dir) is None
        assert stranger.poll() is None and process_alive(stranger.pid)
        # No pid file, or this very process's pid: nothing happens.
        assert stop_orphan(mine.state_dir) is None
        mine.pid.write_text(f"{os.getpid()}\n")
        assert stop_orphan(mine.state_dir) is None
    finally:
        for proc in (orphan, stranger):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
