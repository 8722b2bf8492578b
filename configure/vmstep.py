"""The ``vm`` step kind: on a hypervisor, every guest the inventory puts there (or
``guests:``) made to match its ``vm:`` section, each reported on its own.

Round trips to the hypervisor: the KVM verdict (cached there per boot, only when a guest's
``domain_type`` is ``auto``), one probe for all guests, then per guest that changes: the seed
staged through stdin, the actions, and one probe at the end for the state each guest is in.
A converged hypervisor costs two round trips and one HTTP GET of the image store's index.

What the controller does itself: it reads the image store's index (the sha256 the
hypervisor must verify), generates a new guest's ed25519 host key, builds the seed with it,
pins the public key in the state store (before the guest boots: no trust on first use) and,
after a start, waits until the guest's SSH answers with that key. The private key is never
in an argument list, an action, an outcome or an event: it travels only inside the seed, on
the stdin of one command. A guest keeps its key as long as its domain and seed exist; a
rebuilt guest (``replace: true``, or one made again after ``state: absent``) gets a new key,
and its pin replaces the old one (one pinned key per type and host).

Args: ``{guests: [NAME, ...], replace: false}`` (both optional).
Vars (the hypervisor's): ``hypervisor_bridge`` (br-guests), ``vm_image_store_url`` (default:
``http://ADDRESS:PORT`` of the inventory's ``image_store`` host, or its ``image_store_url``),
``vm_images_dir``, ``vm_guests_dir``, ``vm_console_dir``, ``vm_boot_timeout`` (s, 300),
``vm_stop_timeout`` (s, 60), ``vm_kvm_probe_timeout`` (s, 20).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from configure.engine import build_probe_script, parse_frames, script_finished
from configure.guestkey import new_host_key
from configure.resources.vm import (
    BaseImage,
    GuestFound,
    GuestWant,
    VmDecision,
    VmProbeError,
    VmResource,
    parse_found,
    seed_meta_doc,
)
from configure.vmdomain import GuestPaths, domain_xml, spec_doc, spec_hash
from inventory.contracts import HostContext, StepOutcome, time_left
from inventory.errors import InputError, TransportError
from inventory.model import Host, Inventory
from inventory.variables import host_variables

PROBE_TIMEOUT_S = 120.0
ACT_TIMEOUT_S = 3600.0
INDEX_TIMEOUT_S = 15.0
SSH_PROBE_TIMEOUT_S = 3.0
DEFAULTS = {
    "hypervisor_bridge": "br-guests",
    "vm_images_dir": "/var/lib/metalchain/images",
    "vm_guests_dir": "/var/lib/metalchain/guests",
    "vm_console_dir": "/var/log/metalchain/guests",
    # A tiny guest under TCG inside an emulated lab node reaches SSH in ~1-3 minutes.
    "vm_boot_timeout": 300,
    "vm_stop_timeout": 60,
    "vm_kvm_probe_timeout": 20,
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

#: (address, pinned 'TYPE BASE64', port, timeout) -> (answers with that key?, why not)
HostKeyProbe = Callable[..., tuple[bool, str]]
#: the seed's fields (configure.vmseed.GuestSeed's) -> the ISO's bytes
SeedBuilder = Callable[[dict[str, Any]], bytes]
IndexFetcher = Callable[[str, float], list[Any]]


def vmseed_iso(fields: dict[str, Any]) -> bytes:
    """The NoCloud seed ISO for ``fields`` (configure.vmseed)."""
    from configure.vmseed import GuestSeed, build_seed_iso

    return build_seed_iso(GuestSeed(**fields))


def fetch_index(base_url: str, timeout: float) -> list[Any]:
    """The image store's ``index.json`` (a JSON list); InputError saying what went wrong."""
    url = base_url.rstrip("/") + "/index.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            body = resp.read(4 * 1024 * 1024)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(f"image store {url}: {getattr(exc, 'reason', exc)}") from None
    try:
        doc = json.loads(body.decode("utf-8"))
    except ValueError:
        raise InputError(f"image store {url}: the index is not JSON") from None
    if not isinstance(doc, list):
        raise InputError(f"image store {url}: the index is not a list")
    return doc


def image_entry(index: list[Any], name: str, store_url: str) -> tuple[str, str, str]:
    """(sha256, url, disk_format) of image ``name`` in the store's index."""
    for entry in index:
        if isinstance(entry, dict) and entry.get("name") == name:
            sha, url, fmt = entry.get("sha256"), entry.get("url"), entry.get("disk_format")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise InputError(f"image store {store_url}: {name} has no valid sha256")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise InputError(f"image store {store_url}: {name} has no http(s) url")
            if fmt not in ("qcow2", "raw"):
                raise InputError(f"image store {store_url}: {name}: disk_format {fmt!r} is "
                                 "not qcow2 or raw")
            return sha, url, fmt
    raise InputError(f"image store {store_url} does not serve '{name}' (is it in "
                     "image_store_images and did the image_store role sync?)")


def image_store_url(inventory: Inventory, variables: Mapping[str, Any]) -> str:
    """``vm_image_store_url``, else the URL of the inventory's first ``image_store`` host."""
    url = variables.get("vm_image_store_url")
    if url:
        return str(url)
    for name, host in inventory.hosts.items():
        if "image_store" not in inventory.roles_of(name):
            continue
        hv = host_variables(inventory, name)
        if hv.get("image_store_url"):
            return str(hv["image_store_url"])
        if host.address:
            return f"http://{host.address}:{int(hv.get('image_store_port', 9292))}"
    raise InputError("no image store: set vm_image_store_url, or give a host the "
                     "image_store role")


#: Is KVM usable on this hypervisor? A test launch decides (an existing /dev/kvm can still
#: fail: nested "PVM" KVM); the verdict is cached in /run (per boot).
KVM_PROBE = r"""
cache=/run/metalchain/kvm-verdict
boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
if [ -r "$cache" ] && read -r b v < "$cache" && [ "$b" = "$boot" ]; then
  echo "kvm=$v"; exit 0
fi
verdict=no
if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] &&
    command -v qemu-system-x86_64 >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  printf '\370\003' > "$tmp/sercon"
  qemu-system-x86_64 -accel kvm -cpu host -m 64 -nodefaults -display none -vga none \
    -chardev "file,id=s0,path=$tmp/serial.log" -serial chardev:s0 \
    -fw_cfg "name=etc/sercon-port,file=$tmp/sercon" \
    -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 \
    -boot order=n,menu=off -no-reboot </dev/null >/dev/null 2>&1 &
  pid=$!
  i=0
  while [ $i -lt "$1" ] && kill -0 "$pid" 2>/dev/null; do
    # iPXE prints "net0:" only after its timed wait: the guest's timers work under KVM.
    if grep -q 'net0:' "$tmp/serial.log" 2>/dev/null; then verdict=yes; break; fi
    sleep 0.1; i=$((i + 1))
  done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  rm -rf -- "$tmp"
fi
mkdir -p /run/metalchain && echo "$boot $verdict" > "$cache"
echo "kvm=$verdict"
"""


@dataclass(frozen=True)
class VmArgs:
    guests: tuple[str, ...] | None = None
    replace: bool = False


@dataclass
class _Guest:
    host: Host
    want: GuestWant
    resource: VmResource
    found: GuestFound | None = None
    decision: VmDecision | None = None
    status: str = "ok"            # ok | changed | failed
    message: str = ""
    host_key: str | None = None   # the public key pinned for it (new or from its seed)
    ssh_seconds: float | None = None
    state: str | None = None      # observed at the end
    #: a new guest's key, pinned once its boot was waited for (see VmStep._pin_new)
    pin_pending: bool = False

    def doc(self, check: bool) -> dict[str, Any]:
        d = self.decision
        return {
            "name": self.host.name,
            "hypervisor": self.host.vm.hypervisor if self.host.vm else None,
            "state": self.state or (self.found.reported_state if self.found else "unknown"),
            "wanted": self.want.state, "status": self.status,
            "check": check, "changes": list(d.changes) if d else [],
            "diff": d.diff if d else "", "message": self.message,
            "domain_type": self.want.doc.get("domain_type"),
            "image": self.want.image.name if self.want.image else None,
            "image_sha256": self.want.image.sha256 if self.want.image else None,
            "host_key": self.host_key, "ssh_seconds": self.ssh_seconds,
        }


class VmStep:
    name = "vm"
    description = "define and run the hypervisor's guests (libvirt) from the inventory"

    def __init__(self, *, host_key_probe: HostKeyProbe | None = None,
                 seed_builder: SeedBuilder = vmseed_iso,
                 index_fetcher: IndexFetcher = fetch_index,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.host_key_probe = host_key_probe
        self.seed_builder = seed_builder
        self.index_fetcher = index_fetcher
        self.clock = clock
        self.sleep = sleep

    def parse(self, raw: Any) -> VmArgs:
        if raw in (None, {}, True):
            return VmArgs()
        if not isinstance(raw, dict):
            raise ValueError("expected {} or {guests: [NAME, ...], replace: true|false}")
        unknown = set(raw) - {"guests", "replace"}
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                             "allowed: guests, replace")
        guests = raw.get("guests")
        if isinstance(guests, str):
            guests = [guests]
        if guests is not None and (not isinstance(guests, list) or not guests or not all(
                isinstance(g, str) and g for g in guests)):
            raise ValueError("guests: a list of inventory host names")
        replace = raw.get("replace", False)
        if not isinstance(replace, bool):
            raise ValueError("replace: true or false")
        return VmArgs(tuple(guests) if guests is not None else None, replace)

    # -- the run ---------------------------------------------------------------------------
    def run(self, ctx: HostContext, args: VmArgs) -> StepOutcome:
        inventory = ctx.options.get("inventory")
        if inventory is None:
            raise InputError("the vm step needs the inventory in the run's options")
        hosts = self._guests(inventory, ctx.host, args)
        if not hosts:
            return StepOutcome("ok", f"no guests on {ctx.host}", data={"vms": []})
        settings = _settings(ctx.vars)
        conn = ctx.connection()
        try:
            guests = self._plan(ctx, conn, inventory, hosts, settings, args)
            self._probe(ctx, conn, guests)
        except (InputError, VmProbeError, TransportError) as exc:
            return StepOutcome("failed", f"{ctx.host}: {exc}",
                               data={"vms": [{"name": h.name, "state": "unknown",
                                              "status": "failed"} for h in hosts]})
        for g in guests:
            self._decide(ctx, g)
        if not ctx.check:
            for g in guests:
                if g.status != "failed" and g.decision and g.decision.actions:
                    self._act(ctx, conn, g)
            try:
                self._wait_ssh(ctx, [g for g in guests if g.status == "changed" and
                                     g.decision and g.decision.starts], settings)
            finally:
                self._pin_new(ctx, guests)
            if any(g.decision and g.decision.actions for g in guests):
                self._observe(ctx, conn, guests)
        return _outcome(ctx, guests)

    def _guests(self, inventory: Inventory, hypervisor: str, args: VmArgs) -> list[Host]:
        mine = inventory.guests_of(hypervisor)
        if args.guests is None:
            return mine
        by_name = {h.name: h for h in mine}
        out = []
        for name in args.guests:
            if name not in by_name:
                where = inventory.hosts.get(name)
                why = ("not an inventory host" if where is None else
                       "not a guest" if where.vm is None else
                       f"a guest of {where.vm.hypervisor}")
                raise InputError(f"vm: guest '{name}' is {why}, not a guest of {hypervisor}")
            out.append(by_name[name])
        return out

    def _plan(self, ctx: HostContext, conn: Any, inventory: Inventory, hosts: list[Host],
              settings: dict[str, Any], args: VmArgs) -> list[_Guest]:
        live = [h for h in hosts if h.vm is not None and h.vm.state != "absent"]
        verdict = None
        if any(h.vm.domain_type == "auto" for h in live if h.vm):
            verdict = self._kvm_verdict(ctx, conn, settings)
        index: list[Any] = []
        store = ""
        if live:
            store = image_store_url(inventory, ctx.vars)
            index = self.index_fetcher(store, INDEX_TIMEOUT_S)
        out = []
        for h in hosts:
            vm = h.vm
            if vm is None:
                continue
            dtype = vm.domain_type if vm.domain_type != "auto" else (
                "kvm" if verdict else "qemu")
            paths = GuestPaths.under(settings["vm_guests_dir"], settings["vm_console_dir"],
                                     h.name, vm.console_log)
            doc = spec_doc(h.name, vm, domain_type=dtype, bridge=settings["hypervisor_bridge"],
                           paths=paths)
            image = None
            if vm.state != "absent":
                sha, url, fmt = image_entry(index, vm.image, store)
                image = BaseImage(vm.image, sha, url, fmt,
                                  f"{settings['vm_images_dir'].rstrip('/')}/{sha}")
            want = GuestWant(name=h.name, state=vm.state, autostart=vm.autostart, paths=paths,
                             doc=doc, hash=spec_hash(doc), xml=domain_xml(doc), image=image,
                             disk_mib=vm.disk_mib, replace=args.replace,
                             stop_timeout=int(settings["vm_stop_timeout"]))
            out.append(_Guest(h, want, VmResource(want)))
        return out

    def _kvm_verdict(self, ctx: HostContext, conn: Any, settings: dict[str, Any]) -> bool:
        limit = int(settings["vm_kvm_probe_timeout"])
        result = conn.run(["sh", "-c", KVM_PROBE, "sh", str(limit * 10)],
                          timeout=time_left(ctx.deadline, limit + 30.0), become=True)
        words = dict(ln.split("=", 1) for ln in result.stdout.splitlines() if "=" in ln)
        if result.exit_code != 0 or words.get("kvm") not in ("yes", "no"):
            raise VmProbeError(f"the KVM test launch did not finish (exit "
                               f"{result.exit_code}): {result.tail(3)}")
        return words["kvm"] == "yes"

    def _probe(self, ctx: HostContext, conn: Any, guests: list[_Guest]) -> None:
        token = "MC" + secrets.token_hex(6)
        scripts = [(i, "\n".join(p.script for p in g.resource.probes()))
                   for i, g in enumerate(guests)]
        result = conn.run(["sh", "-s"], stdin=build_probe_script(scripts, token).encode(),
                          timeout=time_left(ctx.deadline, PROBE_TIMEOUT_S), become=True)
        frames = parse_frames(result.stdout, token)
        if not script_finished(result, token) or any(
                frames.get(i, ("", None))[1] is None for i, _ in scripts):
            raise VmProbeError(f"the guests' probe did not finish (exit {result.exit_code}): "
                               f"{result.tail(3)}")
        for i, g in enumerate(guests):
            g.found = parse_found(frames[i][0])

    def _decide(self, ctx: HostContext, g: _Guest) -> None:
        if g.found is None:
            return
        try:
            g.decision = g.resource.decide_found(g.found)
        except VmProbeError as exc:
            g.status, g.message = "failed", str(exc)
            return
        d = g.decision
        if d.blocked:
            g.status, g.message = "failed", f"{g.host.name}: needs replace: {d.blocked}"
            return
        pinned = _pinned(ctx, g.host.name)
        g.host_key = g.found.seed_pub
        if not d.needs_seed and g.found.seed_pub and g.found.defined and \
                g.found.seed_pub not in pinned:
            # The seed on the (authenticated) hypervisor is what the guest holds: the pin
            # follows it (a state store restored from a backup, a pin lost).
            d.changes.append(f"pin {g.host.name}'s host key from its seed on {ctx.host}")
            if not ctx.check and ctx.state is not None:
                ctx.state.pin_host_key(g.host.name, g.found.seed_pub,
                                       source=f"vm seed on {ctx.host}")
            g.status = "changed"
        if d.actions:
            g.status = "changed"

    def _act(self, ctx: HostContext, conn: Any, g: _Guest) -> None:
        d = g.decision
        if d is None:
            return
        try:
            if d.needs_seed:
                g.host_key = self._stage_seed(ctx, conn, g)
            script = "set -e\numask 022\n" + "\n".join(a.script for a in d.actions) + "\n"
            result = conn.run(["sh", "-s"], stdin=script.encode(),
                              timeout=time_left(ctx.deadline, ACT_TIMEOUT_S), become=True)
        except (TransportError, InputError) as exc:
            g.status, g.message = "failed", f"{g.host.name}: {exc}"
            return
        if result.exit_code != 0:
            g.status = "failed"
            g.message = (f"{g.host.name}: {'; '.join(a.describe for a in d.actions)}: "
                         f"exit {result.exit_code}: {result.tail(8)}")
            return
        # A new guest's key is pinned after its boot was waited for (_pin_new): serve watches
        # (probes, scrapes, alerts on) a guest from its pin on, and a guest still booting is
        # not down. Its first SSH answer is checked against this key all the same.
        g.pin_pending = bool(d.needs_seed and g.host_key)
        ctx.emit("vm_changed", guest=g.host.name, changes=list(d.changes))

    @staticmethod
    def _pin_new(ctx: HostContext, guests: list[_Guest]) -> None:
        """Pin the keys of the guests this run created, whether or not their SSH answered in
        time (the key is what the guest holds; one that did not come up is then watched,
        alerted on and remediated). A rebuilt guest's pin replaces the old one (one key per
        type and host). Lost before this (a crash), it is pinned again from the seed's
        record on the hypervisor by the next run."""
        for g in guests:
            if g.pin_pending and g.host_key and ctx.state is not None:
                ctx.state.pin_host_key(g.host.name, g.host_key,
                                       source=f"vm seed on {ctx.host}")
                g.pin_pending = False

    def _stage_seed(self, ctx: HostContext, conn: Any, g: _Guest) -> str:
        """A new host key and its seed staged on the hypervisor (mode 0600). Returns the
        public key (pinned once the actions succeed)."""
        host, vm, want = g.host, g.host.vm, g.want
        if vm is None:
            raise InputError(f"{host.name} is not a guest")
        key = new_host_key()
        instance_id = f"{host.name}-{hashlib.sha256(key.public.encode()).hexdigest()[:12]}"
        authorized = [*_controller_keys(ctx), *vm.ssh_authorized_keys]
        if not authorized:
            raise InputError("no SSH key to authorize in the guest (the site's "
                             "keys/id_ed25519.pub, or vm.ssh_authorized_keys)")
        iso = self.seed_builder({
            "instance_id": instance_id, "hostname": vm.hostname or host.name, "mac": vm.mac,
            "ipv4": vm.network.address, "gateway": vm.network.gateway,
            "nameservers": tuple(vm.network.nameservers), "host_key": key.private,
            "host_key_pub": key.public, "authorized_keys": tuple(authorized)})
        public = key.public
        del key  # only the public half is kept from here on
        # The directories must be traversable by libvirt's qemu user (it checks access as
        # that user before it hands it the files): 0755 parents, a 0711 guest directory.
        # The seed holds the private key: written under umask 077, it stays 0600.
        stage = ('umask 022 && mkdir -p -- "$1" && chmod 0711 -- "$1" && umask 077 && '
                 'cat > "$2.tmp" && mv -f -- "$2.tmp" "$2"')
        for path, data in ((want.staged_seed, iso),
                           (want.staged_seed_meta, seed_meta_doc(want, public, instance_id))):
            result = conn.run(["sh", "-c", stage, "sh", want.guest_dir, path], stdin=data,
                              timeout=time_left(ctx.deadline, PROBE_TIMEOUT_S), become=True)
            if result.exit_code != 0:
                raise InputError(f"staging {path} failed (exit {result.exit_code}): "
                                 f"{result.tail(3)}")
        return public

    def _wait_ssh(self, ctx: HostContext, guests: list[_Guest],
                  settings: dict[str, Any]) -> None:
        """Until each started guest's SSH answers with its pinned key (bounded)."""
        if self.host_key_probe is None or not guests:
            return
        start = self.clock()
        limit = float(settings["vm_boot_timeout"])
        deadline = start + limit
        if ctx.deadline is not None:
            deadline = min(deadline, ctx.deadline)
        pending = {g.host.name: g for g in guests}
        why: dict[str, str] = {}
        while pending:
            for name, g in list(pending.items()):
                # a guest made by this run answers with its new key (pinned after the wait)
                pins = [g.host_key] if g.pin_pending and g.host_key else [
                    k for k in _pinned(ctx, name) if k.startswith("ssh-ed25519 ")] or (
                    [g.host_key] if g.host_key else [])
                if not pins or not g.host.address:
                    why[name] = "no pinned key or no address"
                    continue
                ok, reason = self.host_key_probe(g.host.address, pins[0],
                                                 port=g.host.ssh.port,
                                                 timeout=SSH_PROBE_TIMEOUT_S)
                if ok:
                    g.ssh_seconds = round(self.clock() - start, 1)
                    ctx.emit("vm_ssh_up", guest=name, seconds=g.ssh_seconds)
                    del pending[name]
                else:
                    why[name] = reason
            if not pending or self.clock() >= deadline:
                break
            self.sleep(1.0)
        for name, g in pending.items():
            g.status = "failed"
            g.message = (f"{name}: started, but its SSH did not answer with the pinned key "
                         f"within {self.clock() - start:.0f} s (vm_boot_timeout {limit:g}): "
                         f"{why.get(name, '')}; console log on {ctx.host}: "
                         f"{g.want.paths.console_log}")

    def _observe(self, ctx: HostContext, conn: Any, guests: list[_Guest]) -> None:
        """The state each guest is in after the actions (what the summary reports)."""
        try:
            self._probe(ctx, conn, guests)
        except (VmProbeError, TransportError) as exc:
            for g in guests:
                g.state = "unknown"
                if g.status != "failed":
                    g.status, g.message = "failed", f"{g.host.name}: state unknown: {exc}"
            return
        for g in guests:
            g.state = g.found.reported_state if g.found else "unknown"


def _settings(variables: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: variables.get(k, v) for k, v in DEFAULTS.items()}
    for key in ("vm_images_dir", "vm_guests_dir", "vm_console_dir"):
        if not isinstance(out[key], str) or not _PATH.match(out[key]) or ".." in out[key]:
            raise InputError(f"{key} must be an absolute path, got {out[key]!r}")
    if not isinstance(out["hypervisor_bridge"], str) or not _BRIDGE.match(
            out["hypervisor_bridge"]):
        raise InputError(f"hypervisor_bridge is not an interface name: "
                         f"{out['hypervisor_bridge']!r}")
    for key in ("vm_boot_timeout", "vm_stop_timeout", "vm_kvm_probe_timeout"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{key} must be a positive number of seconds, got {value!r}")
    return out


def _pinned(ctx: HostContext, name: str) -> list[str]:
    if ctx.state is None:
        return []
    return list(ctx.state.host_keys_of(name))


def _controller_keys(ctx: HostContext) -> list[str]:
    text = ctx.options.get("ssh_public_key") or ""
    return [ln.strip() for ln in str(text).splitlines() if ln.strip()]


def _outcome(ctx: HostContext, guests: list[_Guest]) -> StepOutcome:
    docs = [g.doc(ctx.check) for g in guests]
    data: dict[str, Any] = {"vms": docs}
    if len(docs) == 1:
        data["vm"] = docs[0]
    changes = [f"{g.host.name}: {c}" for g in guests if g.decision
               for c in g.decision.changes]
    diff = "".join(f"{g.host.name}:\n{g.decision.diff}" for g in guests
                   if g.decision and g.decision.diff)
    if diff:
        data["diff"] = diff
    failed = [g for g in guests if g.status == "failed"]
    if failed:
        return StepOutcome("failed", "; ".join(g.message for g in failed)[:2000],
                           changes=changes, data=data)
    changed = [g for g in guests if g.status == "changed"]
    if changed:
        verb = "would change" if ctx.check else "changed"
        booted = [f"{g.host.name} SSH after {g.ssh_seconds:g} s" for g in changed
                  if g.ssh_seconds is not None]
        msg = f"{verb} {', '.join(g.host.name for g in changed)}"
        if booted:
            msg += f" ({'; '.join(booted)})"
        return StepOutcome("changed", msg, changes=changes, data=data)
    return StepOutcome("ok", f"{len(guests)} guest(s) as specified", data=data)
