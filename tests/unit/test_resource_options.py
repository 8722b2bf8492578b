"""Option injection (issue 13): a value that looks like an option is refused when the recipe
is loaded, naming its file:line, and every host command puts its operands after ``--``."""

from __future__ import annotations

import re
import shlex

import pytest

from configure.resources import ResourceSpecError, parse_resource
from configure.resources.system import proc_sys_path
from configure.roles import RoleError, blocks_for_host, load_role
from inventory.errors import InputError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kind,spec,says", [
    ("file", {"path": "/etc/x", "content": "", "owner": "--reference=/etc/shadow"}, "owner"),
    ("file", {"path": "/etc/x", "content": "", "group": "--reference=/etc/shadow"}, "group"),
    ("directory", {"path": "/srv/d", "owner": "-R"}, "owner"),
    ("directory", {"path": "/srv/d", "group": "root:root"}, "group"),
    ("sysctl", {"name": "-p", "value": 1}, "sysctl key"),
    ("sysctl", {"name": "-a", "value": 1}, "sysctl key"),
    ("sysctl", {"name": "net..ipv4", "value": 1}, "sysctl key"),
    ("sysctl", {"name": "/proc/sys/x", "value": 1}, "sysctl key"),
    ("sysctl", {"name": "net.ipv4.ip_forward", "value": "1\x00"}, "control character"),
    ("kernel_module", {"name": "-r"}, "kernel module name"),
    ("kernel_module", {"name": "--remove-dependencies"}, "kernel module name"),
    ("package", {"name": "-oAPT::Get::AllowUnauthenticated=true"}, "Debian package name"),
    ("package", {"name": ["curl", "--allow-downgrades"]}, "Debian package name"),
    ("service", {"name": "--global"}, "systemd unit name"),
    ("service", {"name": ["a", "b"]}, "one unit name"),
    ("user", {"name": "-o"}, "user/group name"),
    ("user", {"name": "root:x"}, "user/group name"),
    ("user", {"name": "u", "groups": ["--root=/tmp"]}, "user/group name"),
    ("user", {"name": "u", "shell": "sh"}, "shell must be absolute"),
    ("user", {"name": "u", "home": "--prefix=/x"}, "home must be absolute"),
    ("user", {"name": "u", "comment": "a:b"}, "control character or ':'"),
    ("user", {"name": "u", "uid": "0"}, "uid must be an integer"),
    ("user", {"name": "u", "uid": -1}, "uid must be an integer"),
    ("group", {"name": "--system"}, "user/group name"),
    ("group", {"name": "g", "gid": "--help"}, "gid must be an integer"),
    ("file", {"path": "/etc/../shadow", "content": ""}, "'..' part"),
    ("file", {"path": "/etc/x\x00y", "content": ""}, "control character"),
    ("file", {"path": "/" + "a" * 5000, "content": ""}, "longer than 4096"),
    ("file", {"path": "/etc/x", "content": "", "mode": "-x"}, "octal mode"),
    ("line", {"path": "/etc/x", "line": "a", "create": "yes"}, "create must be true or false"),
    ("package", {"name": "curl", "update_cache": "; touch /tmp/x"}, "true or false"),
    ("command", {"argv": ["echo", "a\x00b"]}, "NUL byte"),
    ("command", {"argv": ["true"], "creates": "/tmp/x\ny"}, "absolute path"),
])
def test_a_value_no_host_command_could_take_is_refused(kind, spec, says):
    with pytest.raises(ResourceSpecError, match=re.escape(says)):
        parse_resource(kind, spec)


def test_a_rendered_boolean_counts_and_names_that_pass_still_pass():
    assert parse_resource("line", {"path": "/e", "line": "a", "create": "True"}).create is True
    assert parse_resource("sysctl", {"name": "net.ipv4.ip_forward", "value": 1,
                                     "persist": "False"}).persist is False
    for kind, spec in [("user", {"name": "_apt", "groups": ["adm", "sudo"]}),
                       ("user", {"name": "svc$"}), ("group", {"name": "Debian-exim"}),
                       ("package", {"name": ["libc6:amd64", "g++", "python3.11"]}),
                       ("service", {"name": "getty@tty1.service"}),
                       ("service", {"name": "metalchain-event@x\\x2dy.service"}),
                       ("sysctl", {"name": "net/ipv4/conf/eth0.1/forwarding", "value": 0}),
                       ("kernel_module", {"name": "vhost_net"}),
                       ("file", {"path": "/etc/a b/c", "content": "", "owner": "www-data"})]:
        parse_resource(kind, spec)


def _after_dashdash(script: str, operand: str) -> bool:
    """Every command line of ``script`` that has ``operand`` (shell-quoted) has ``--`` before
    it."""
    lines = [ln for ln in script.splitlines() if shlex.quote(operand) in ln.split()]
    return bool(lines) and all("--" in ln.split()[:ln.split().index(shlex.quote(operand))]
                               for ln in lines)


@pytest.mark.parametrize("kind,spec,found,operand", [
    ("file", {"path": "/etc/x", "content": "a", "owner": "u1", "group": "g1", "mode": "0600"},
     "regular file|644|root|root\n" + "0" * 64, "u1:g1"),
    ("file", {"path": "/etc/x", "content": "a", "mode": "0600"},
     "regular file|644|root|root\n" + "0" * 64, "600"),
    ("directory", {"path": "/srv/d", "owner": "u1"}, "directory|755|root|root", "u1"),
    ("directory", {"path": "/srv/d"}, "absent", "/srv/d"),
    ("package", {"name": "curl"}, "curl un|\n", "curl"),
    ("package", {"name": "curl", "state": "absent"}, "curl ii |1\n", "curl"),
    ("service", {"name": "ssh", "enabled": True}, "enabled=disabled\nactive=inactive", "ssh"),
    ("user", {"name": "u1", "shell": "/bin/sh"}, "absent", "u1"),
    ("user", {"name": "u1", "shell": "/bin/sh"}, "u1:x:5:5::/h:/bin/bash\n", "u1"),
    ("user", {"name": "u1", "state": "absent"}, "u1:x:5:5::/h:/bin/bash\n", "u1"),
    ("group", {"name": "g1"}, "absent", "g1"),
    ("group", {"name": "g1", "gid": 7}, "g1:x:5:", "g1"),
    ("group", {"name": "g1", "state": "absent"}, "g1:x:5:", "g1"),
    ("sysctl", {"name": "net.ipv4.ip_forward", "value": 1, "persist": False}, "runtime=0",
     "net.ipv4.ip_forward=1"),
    ("kernel_module", {"name": "tun", "persist": False}, "loaded=no", "tun"),
])
def test_operands_follow_dashdash_in_probes_and_actions(kind, spec, found, operand):
    res = parse_resource(kind, spec)
    decision = res.decide({res.identity: found})
    script = "\n".join(a.script for a in decision.actions)
    assert _after_dashdash(script, operand), script
    probe = "\n".join(p.script for p in res.probes())
    # (a sysctl's probe reads its /proc/sys file: cat -- PATH)
    name = spec.get("name") if kind != "sysctl" else proc_sys_path(spec["name"])
    # (a kernel module's probe reads /sys/module/NAME: a path, no command's operand)
    if isinstance(name, str) and kind not in ("file", "directory", "kernel_module"):
        assert _after_dashdash(probe.replace("$(", "$( ").replace(")", " )"), name), probe


RECIPE = """\
- directory: {path: /srv/app, owner: root}
- file:
    path: /etc/app.conf
    content: "x"
    owner: "--reference=/etc/shadow"
"""


def test_the_error_names_the_recipe_file_and_line(tmp_path):
    role = tmp_path / "roles" / "app"
    role.mkdir(parents=True)
    (role / "recipe.yml").write_text(RECIPE)
    with pytest.raises(RoleError) as err:
        load_role("app", [tmp_path / "roles"])
    text = str(err.value)
    assert f"{role / 'recipe.yml'}:5" in text and "owner '--reference=/etc/shadow'" in text


def test_a_value_rendered_per_host_is_checked_too_naming_the_entry(tmp_path):
    role = tmp_path / "roles" / "app"
    role.mkdir(parents=True)
    (role / "recipe.yml").write_text("- sysctl: {name: '{{ key }}', value: 1}\n")
    loaded = load_role("app", [tmp_path / "roles"])   # templated: checked after rendering
    with pytest.raises(InputError, match=r"recipe\.yml:1: sysctl: name '-p' is not a sysctl"):
        blocks_for_host([loaded], {"key": "-p", "facts": {}})


@pytest.mark.parametrize("key,path", [
    ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    ("net/ipv4/ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    # sysctl(8): after a '.' first, a '/' is a literal dot (a VLAN interface's name)
    ("net.ipv4.conf.eth0/100.forwarding", "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
    ("net/ipv4/conf/eth0.100/forwarding", "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
    ("kernel", "/proc/sys/kernel"),
])
def test_a_sysctl_key_maps_to_its_proc_sys_file_as_sysctl_maps_it(key, path):
    assert proc_sys_path(key) == path
