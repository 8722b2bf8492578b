"""package, service, user, group, sysctl and kernel_module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from configure.resources import names as valid
from configure.resources.base import (
    Action,
    AptInstall,
    Decision,
    Probe,
    Resource,
    ResourceSpecError,
    cmd,
    flag,
    q,
)
from configure.resources.files import write_file_script

APT_ENV = "DEBIAN_FRONTEND=noninteractive"
#: apt options for metalchain's own installs only (role base writes it: dpkg_unsafe_io)
INSTALL_CONF = "/etc/metalchain/apt.conf"
APT_OPTS = ("-y", "-q", "-o", "Dpkg::Options::=--force-confdef", "-o",
            "Dpkg::Options::=--force-confold")


def _names(spec: Mapping[str, Any], kind: str, check: Any, key: str = "name") -> list[str]:
    """``spec[key]``: one name or a list of them, each passed through ``check``."""
    raw = spec.get(key)
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ResourceSpecError(f"{kind}: '{key}' must be a name or a list of names, got "
                                "an empty list")
    return [check(i, kind, key) for i in items]


def installed_check(names: list[str] | tuple[str, ...]) -> str:
    """Shell that exits 0 when every one of ``names`` is installed ("ii")."""
    return " && ".join(f"dpkg-query -W -f='${{db:Status-Abbrev}}' -- {q(n)} 2>/dev/null "
                       f"| grep -q '^ii'" for n in names)


def apt_update_script(always: bool) -> str:
    """Refresh the package lists: always, or only when the host has none yet."""
    if always:
        return f"{APT_ENV} apt-get update -q"
    return (f"ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || "
            f"{APT_ENV} apt-get update -q")


def apt_install_script(names: list[str] | tuple[str, ...]) -> str:
    """One ``apt-get install`` of ``names``: no recommends, config files kept (confold), and
    the options of :data:`INSTALL_CONF` when the host has that file."""
    return (f"if [ -r {INSTALL_CONF} ]; then set -- -c {INSTALL_CONF}; else set --; fi\n"
            + APT_ENV + " apt-get \"$@\" " + cmd("install", *APT_OPTS,
                                                  "--no-install-recommends", "--", *names))


class Package(Resource):
    """Debian packages (apt). ``update_cache`` refreshes the lists before installing.

    Installs of several package resources in one apply share one apt transaction
    (configure/apt_batch.py) unless ``batch: false``: say so for a package that needs
    something a command resource between it and the previous package resource does first
    (a debconf preseed, a repository added by a script)."""

    kind = "package"
    KEYS = ("name", "state", "update_cache", "purge", "batch")
    STATES = ("present", "absent")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.names = _names(spec, self.kind, valid.package)
        self.update_cache = flag(spec, "update_cache", self.kind, False)
        self.purge = flag(spec, "purge", self.kind, False)
        batch = spec.get("batch", True)
        if not isinstance(batch, bool):
            raise ResourceSpecError("package: batch must be true or false")
        self.batch = batch
        self.identity = f"package:{','.join(self.names)}"

    def probes(self) -> list[Probe]:
        # One line per package: "NAME STATUS-ABBREV VERSION" ("ii " = installed).
        lines = [f"printf '%s ' {q(n)}; dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}\\n'"
                 f" -- {q(n)} 2>/dev/null || echo 'un|'" for n in self.names]
        return [Probe(self.identity, "\n".join(lines))]

    def installed(self, found: Mapping[str, str]) -> dict[str, bool]:
        out = {n: False for n in self.names}
        for line in found.get(self.identity, "").splitlines():
            name, _, rest = line.partition(" ")
            if name in out:
                out[name] = rest.startswith("ii")
        return out

    def decide(self, found: Mapping[str, str]) -> Decision:
        have = self.installed(found)
        if self.state == "present":
            missing = [n for n, ok in have.items() if not ok]
            if not missing:
                return Decision()
            script = apt_update_script(self.update_cache) + "\n" + apt_install_script(missing)
            return Decision([Action(f"install {' '.join(missing)}", script)],
                            [f"install package {n}" for n in missing],
                            apt_install=AptInstall(tuple(missing), self.update_cache,
                                                   installed_check(missing))
                            if self.batch else None)
        present = [n for n, ok in have.items() if ok]
        if not present:
            return Decision()
        verb = "purge" if self.purge else "remove"
        return Decision([Action(f"{verb} {' '.join(present)}", APT_ENV + " " + cmd(
            "apt-get", verb, *APT_OPTS, "--", *present))], [f"{verb} package {n}" for n in present])


class Service(Resource):
    """A systemd unit: enabled or not, running or not; ``restarted``/``reloaded`` for handlers."""

    kind = "service"
    KEYS = ("name", "state", "enabled")
    STATES = ("started", "stopped", "restarted", "reloaded")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        if isinstance(spec.get("name"), list):
            raise ResourceSpecError("service: name is one unit name")
        self.unit = valid.unit(spec.get("name"), self.kind)
        enabled = spec.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ResourceSpecError("service: enabled must be true or false")
        self.enabled = enabled
        self.identity = f"service:{self.unit}"

    def probes(self) -> list[Probe]:
        u = q(self.unit)
        return [Probe(self.identity,
                      # no command substitution: a subshell fewer each; the echo ends a
                      # line that systemctl left empty (an unknown unit prints nothing)
                      f"printf 'enabled='; systemctl is-enabled -- {u} 2>/dev/null; echo\n"
                      f"printf 'active='; systemctl is-active -- {u} 2>/dev/null; echo")]

    def decide(self, found: Mapping[str, str]) -> Decision:
        facts = dict(ln.split("=", 1) for ln in found.get(self.identity, "").splitlines()
                     if "=" in ln)
        enabled, active = facts.get("enabled", ""), facts.get("active", "")
        lines: list[str] = []
        changes: list[str] = []
        if self.enabled is True and enabled not in ("enabled", "static", "alias", "indirect",
                                                    "generated"):
            lines.append(cmd("systemctl", "enable", "--", self.unit))
            changes.append(f"enable {self.unit}")
        elif self.enabled is False and enabled == "enabled":
            lines.append(cmd("systemctl", "disable", "--", self.unit))
            changes.append(f"disable {self.unit}")
        if self.state == "started" and active != "active":
            lines.append(cmd("systemctl", "start", "--", self.unit))
            changes.append(f"start {self.unit}")
        elif self.state == "stopped" and active in ("active", "activating", "reloading"):
            lines.append(cmd("systemctl", "stop", "--", self.unit))
            changes.append(f"stop {self.unit}")
        elif self.state in ("restarted", "reloaded"):
            verb = "restart" if self.state == "restarted" else "reload-or-restart"
            lines.append(cmd("systemctl", verb, "--", self.unit))
            changes.append(f"{verb} {self.unit}")
        if not lines:
            return Decision()
        return Decision([Action(", ".join(changes), "\n".join(lines))], changes)


class User(Resource):
    kind = "user"
    KEYS = ("name", "state", "uid", "groups", "shell", "home", "system", "comment")
    STATES = ("present", "absent")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.user = valid.account(spec.get("name"), self.kind)
        self.uid = valid.number_id(spec.get("uid"), self.kind, "uid")
        self.groups = _names(spec, self.kind, valid.account, "groups") \
            if spec.get("groups") else []
        shell, home, comment = spec.get("shell"), spec.get("home"), spec.get("comment")
        self.shell = valid.abs_path(shell, self.kind, "shell") if shell else None
        self.home = valid.abs_path(home, self.kind, "home") if home else None
        self.system = flag(spec, "system", self.kind, False)
        # ':' separates /etc/passwd fields; useradd refuses it, so refuse it here first
        self.comment = valid.text(comment, self.kind, "comment", forbid=":") \
            if comment else None
        self.identity = f"user:{self.user}"

    def probes(self) -> list[Probe]:
        u = q(self.user)
        return [Probe(self.identity, f"getent passwd -- {u} || echo absent\n"
                                     f"id -nG -- {u} 2>/dev/null || echo")]

    def decide(self, found: Mapping[str, str]) -> Decision:
        lines = found.get(self.identity, "").splitlines()
        entry = lines[0] if lines else "absent"
        groups = set(lines[1].split()) if len(lines) > 1 else set()
        if entry.strip() == "absent":
            if self.state == "absent":
                return Decision()
            argv = ["useradd", "--create-home"]
            if self.system:
                argv.append("--system")
            if self.uid is not None:
                argv += ["--uid", str(self.uid)]
            if self.shell:
                argv += ["--shell", self.shell]
            if self.home:
                argv += ["--home-dir", self.home]
            if self.comment:
                argv += ["--comment", self.comment]
            if self.groups:
                argv += ["--groups", ",".join(self.groups)]
            # A group named like the user (made earlier, e.g. by a group resource) becomes
            # its primary group; otherwise useradd refuses to create one of that name.
            script = (f"if getent group -- {q(self.user)} >/dev/null; then set -- --gid "
                      f"{q(self.user)}; else set --; fi\n{cmd(*argv)} \"$@\" -- {q(self.user)}")
            return Decision([Action(f"create user {self.user}", script)],
                            [f"create user {self.user}"])
        if self.state == "absent":
            return Decision([Action(f"remove user {self.user}", cmd("userdel", "--", self.user))],
                            [f"remove user {self.user}"])
        fields = entry.split(":")
        argv = ["usermod"]
        changes = []
        if self.uid is not None and len(fields) > 2 and fields[2] != str(self.uid):
            argv += ["--uid", str(self.uid)]
            changes.append(f"uid {fields[2]} -> {self.uid}")
        if self.shell and len(fields) > 6 and fields[6] != self.shell:
            argv += ["--shell", self.shell]
            changes.append(f"shell {fields[6]} -> {self.shell}")
        if self.home and len(fields) > 5 and fields[5] != self.home:
            argv += ["--home", self.home]
            changes.append(f"home {fields[5]} -> {self.home}")
        missing = [g for g in self.groups if g not in groups]
        if missing:
            argv += ["--append", "--groups", ",".join(missing)]
            changes.append(f"add to groups {', '.join(missing)}")
        if not changes:
            return Decision()
        return Decision([Action(f"modify user {self.user}", cmd(*argv, "--", self.user))],
                        [f"user {self.user}: {c}" for c in changes])


class Group(Resource):
    kind = "group"
    KEYS = ("name", "state", "gid", "system")
    STATES = ("present", "absent")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.group = valid.account(spec.get("name"), self.kind)
        self.gid = valid.number_id(spec.get("gid"), self.kind, "gid")
        self.system = flag(spec, "system", self.kind, False)
        self.identity = f"group:{self.group}"

    def probes(self) -> list[Probe]:
        return [Probe(self.identity, f"getent group -- {q(self.group)} || echo absent")]

    def decide(self, found: Mapping[str, str]) -> Decision:
        entry = found.get(self.identity, "absent").strip()
        if entry == "absent":
            if self.state == "absent":
                return Decision()
            argv = ["groupadd"] + (["--system"] if self.system else []) + (
                ["--gid", str(self.gid)] if self.gid is not None else [])
            return Decision([Action(f"create group {self.group}", cmd(*argv, "--", self.group))],
                            [f"create group {self.group}"])
        if self.state == "absent":
            return Decision([Action(f"remove group {self.group}",
                                    cmd("groupdel", "--", self.group))],
                            [f"remove group {self.group}"])
        fields = entry.split(":")
        if self.gid is not None and len(fields) > 2 and fields[2] != str(self.gid):
            return Decision([Action(f"gid of {self.group}", cmd("groupmod", "--gid",
                                                                 str(self.gid), "--", self.group))],
                            [f"group {self.group}: gid {fields[2]} -> {self.gid}"])
        return Decision()


class Sysctl(Resource):
    """A kernel parameter, set now and persisted in /etc/sysctl.d/."""

    kind = "sysctl"
    KEYS = ("name", "value", "persist")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.key = valid.sysctl_key(self.require(spec, "name", self.kind), self.kind)
        value = spec.get("value")
        if value is None or isinstance(value, (dict, list)):
            raise ResourceSpecError("sysctl: 'value' is required (a string or number)")
        # whitespace (tabs, newlines) is one space to sysctl; other control characters are
        # refused
        self.value = valid.text(" ".join(str(value).split()), self.kind, "value")
        self.persist = flag(spec, "persist", self.kind, True)
        self.conf = f"/etc/sysctl.d/90-metalchain-{self.key.replace('/', '.')}.conf"
        self.identity = f"sysctl:{self.key}"

    def probes(self) -> list[Probe]:
        # One process per sysctl: cat of its /proc/sys file, and the shell's read for the
        # file in sysctl.d (before: sysctl -n and cat in command substitutions, four forks,
        # most of a W3 host's probe). Not read for /proc/sys: dash reads a byte at a time,
        # and the kernel answers reads past offset 0 of an integer sysctl with nothing.
        return [Probe(self.identity,
                      f"printf 'runtime='; cat -- {q(proc_sys_path(self.key))} 2>/dev/null; echo\n"
                      f"{_read_lines('persisted', self.conf)}")]

    def decide(self, found: Mapping[str, str]) -> Decision:
        facts = dict(ln.split("=", 1) for ln in found.get(self.identity, "").splitlines()
                     if "=" in ln)
        runtime = " ".join(facts.get("runtime", "").split())
        line = f"{self.key} = {self.value}"
        actions, changes = [], []
        if runtime != self.value:
            actions.append(Action(f"sysctl {self.key}", cmd("sysctl", "-q", "-w", "--",
                                                            f"{self.key}={self.value}")))
            changes.append(f"{self.key}: {runtime or '(unset)'} -> {self.value}")
        if self.persist and facts.get("persisted", "").strip() != line:
            actions.append(Action(f"persist {self.key}", write_file_script(
                self.conf, (line + "\n").encode(), "644", "root", "root",
                exists=False)))
            changes.append(f"persist {self.key} in {self.conf}")
        return Decision(actions, changes)


def proc_sys_path(key: str) -> str:
    """The /proc/sys file of a sysctl key, as sysctl(8) maps it: when the key's first
    separator is '.', dots are the path's slashes and slashes are literal dots
    (net.ipv4.conf.eth0/100.forwarding); a key that starts with '/'-parts is a path."""
    dot, slash = key.find("."), key.find("/")
    if dot != -1 and (slash == -1 or dot < slash):
        key = key.translate(str.maketrans("./", "/."))
    return f"/proc/sys/{key}"


def _read_lines(label: str, path: str) -> str:
    """Shell that prints ``label=`` and the file's lines joined by spaces (nothing when the
    file cannot be read), with builtins only (for files that read() like files: not /proc)."""
    return (f"printf '%s=' {label}; while IFS= read -r mc_l || [ -n \"$mc_l\" ]; do "
            f"printf '%s ' \"$mc_l\"; done < {q(path)}; echo")


class KernelModule(Resource):
    """A kernel module loaded now (built-in counts) and at every boot."""

    kind = "kernel_module"
    KEYS = ("name", "persist")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.module = valid.module(self.require(spec, "name", self.kind), self.kind)
        self.persist = flag(spec, "persist", self.kind, True)
        self.conf = f"/etc/modules-load.d/metalchain-{self.module}.conf"
        self.identity = f"kernel_module:{self.module}"

    def probes(self) -> list[Probe]:
        sysname = self.module.replace("-", "_")
        return [Probe(self.identity, f"[ -d /sys/module/{q(sysname)} ] && echo loaded=yes || "
                                     f"echo loaded=no\n"
                                     f"echo \"persisted=$(cat {q(self.conf)} 2>/dev/null)\"")]

    def decide(self, found: Mapping[str, str]) -> Decision:
        facts = dict(ln.split("=", 1) for ln in found.get(self.identity, "").splitlines()
                     if "=" in ln)
        actions, changes = [], []
        if facts.get("loaded") != "yes":
            actions.append(Action(f"load {self.module}", cmd("modprobe", "--", self.module)))
            changes.append(f"load module {self.module}")
        if self.persist and facts.get("persisted", "").strip() != self.module:
            actions.append(Action(f"persist {self.module}", write_file_script(
                self.conf, (self.module + "\n").encode(), "644", "root", "root",
                exists=False)))
            changes.append(f"load {self.module} at boot ({self.conf})")
        return Decision(actions, changes)
