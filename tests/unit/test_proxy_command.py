"""``ssh.proxy_command`` means the same to both SSH clients: the process paramiko starts (exec,
apply, ...) is the process OpenSSH starts from verify's ssh_config (testinfra)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import configure.ssh as ssh
from configure.ssh import SshConnection, SshTarget, proxy_argv
from configure.verify import ssh_config_text
from inventory.errors import InputError, TransportError

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def target(proxy: str) -> SshTarget:
    return SshTarget(host="web1", address="10.0.0.5", pinned_keys=(KEY,), user="deploy",
                     port=2222, proxy_command=proxy)


def paramiko_starts(t: SshTarget, monkeypatch) -> list[str]:
    """The argv paramiko would start for the proxy (it shlex-splits its string, no shell)."""
    seen: list[str] = []

    def fake(command: str):
        seen.append(command)
        raise OSError("stop here")

    monkeypatch.setattr(ssh.paramiko, "ProxyCommand", fake)
    with pytest.raises((OSError, TransportError)):
        SshConnection(t)._open()
    return shlex.split(seen[0])


def openssh_starts(t: SshTarget) -> list[str]:
    """The argv OpenSSH would start: its tokens expanded in the ProxyCommand value, then
    ``/bin/sh -c "exec VALUE"`` — for a simple command, the same as splitting VALUE."""
    config = ssh_config_text(t, Path("/kh"), Path("/cm"))
    value = next(ln.split(None, 1)[1] for ln in config.splitlines()
                 if ln.strip().startswith("ProxyCommand"))
    tokens = {"h": t.address, "p": str(t.port), "r": t.user, "n": t.host, "%": "%"}
    expanded = re.sub(r"%(.)", lambda m: tokens[m.group(1)], value)
    return shlex.split(expanded)


@pytest.mark.parametrize("proxy,line", [
    ("ssh -W %h:%p jump", "ssh -W 10.0.0.5:2222 jump"),
    ("ssh -l %r -W %h:%p 'jump host'", "ssh -l deploy -W 10.0.0.5:2222 'jump host'"),
    ("echo %n >> '/var/log/proxy log'; exec nc %h %p",
     "echo web1 >> '/var/log/proxy log'; exec nc 10.0.0.5 2222"),
    ("printf 100%% | tee /tmp/x; nc %h %p", "printf 100% | tee /tmp/x; nc 10.0.0.5 2222"),
])
def test_both_clients_start_the_same_shell_command(proxy, line, monkeypatch):
    t = target(proxy)
    assert paramiko_starts(t, monkeypatch) == openssh_starts(t) == ["/bin/sh", "-c", line]
    assert proxy_argv(t) == ["/bin/sh", "-c", line]


@pytest.mark.parametrize("proxy,message", [
    ("nc %x %p", "unknown token '%x'"),
    ("nc %h %", "unknown token '%'"),
    ("nc %h\n%p", "must be one line"),
])
def test_bad_proxy_commands_are_errors_naming_the_host(proxy, message):
    with pytest.raises(InputError, match=message) as info:
        proxy_argv(target(proxy))
    assert "host 'web1'" in str(info.value)


def test_no_proxy_no_line():
    t = SshTarget(host="web1", address="10.0.0.5", pinned_keys=(KEY,))
    assert proxy_argv(t) is None
    assert "ProxyCommand" not in ssh_config_text(t, Path("/kh"), Path("/cm"))
