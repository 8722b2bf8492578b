"""vm: one libvirt guest on the hypervisor the connection reaches.

Probe (read-only, one snippet per guest): is libvirt answering, is the domain defined, its
state, autostart flag and the spec hash in its metadata; do its overlay and seed exist, and
what public host key the seed carries (``seed.json`` beside it: no secret); is the base image
there with the checksum that was verified when it was downloaded.

Decide (pure): same spec -> leave it (start it again if it is off and should run: that is
how a guest whose qemu was killed is healed); changed spec -> refuse with the diff unless
``replace``; missing -> download and verify the base image, make the overlay, install the
seed, define, set autostart, start.

The seed holds the guest's private host key, so it never appears in an action: the step
stages it beforehand (``SEED.new``, mode 0600, through stdin) and an action moves it in place.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from configure.resources.base import Action, Decision, Probe, Resource, cmd, q
from configure.resources.files import write_file_script
from configure.vmdomain import GuestPaths, read_domain, spec_changes

VIRSH = ("virsh", "-c", "qemu:///system")
#: virsh domstate words -> what the resource reasons with
_RUNNING = {"running", "idle", "blocked", "in shutdown"}
_PAUSED = {"paused", "pmsuspended"}
VM_STATES = ("running", "stopped", "absent")


class VmProbeError(Exception):
    """The hypervisor could not tell (libvirt not answering, a probe's output unreadable)."""


@dataclass(frozen=True)
class BaseImage:
    """An image of the store, as the hypervisor keeps it: one file per checksum."""

    name: str
    sha256: str
    url: str
    disk_format: str       # qcow2 | raw (the overlay's backing format)
    path: str              # on the hypervisor: IMAGES_DIR/SHA256

    @property
    def verified_marker(self) -> str:
        return self.path + ".verified"


@dataclass(frozen=True)
class GuestWant:
    """Everything the resource needs, as plain data (the step computes it)."""

    name: str
    state: str                              # running | stopped | absent
    autostart: bool
    paths: GuestPaths
    doc: dict[str, Any] = field(default_factory=dict)   # spec document (vmdomain.spec_doc)
    hash: str = ""
    xml: str = ""
    image: BaseImage | None = None
    disk_mib: int = 0
    replace: bool = False
    stop_timeout: int = 60

    @property
    def guest_dir(self) -> str:
        return self.paths.overlay.rsplit("/", 1)[0]

    @property
    def seed_meta(self) -> str:
        return self.paths.seed + ".json"

    @property
    def staged_seed(self) -> str:
        return self.paths.seed + ".new"

    @property
    def staged_seed_meta(self) -> str:
        return self.seed_meta + ".new"

    @property
    def xml_file(self) -> str:
        return f"{self.guest_dir}/domain.xml"


@dataclass(frozen=True)
class GuestFound:
    """What the probe found for one guest."""

    defined: bool
    state: str                  # running | paused | off | absent
    autostart: bool | None
    hash: str | None
    spec: dict[str, Any] | None
    overlay: bool
    seed: bool
    seed_pub: str | None        # the public host key the seed on the hypervisor carries
    image_ok: bool

    @property
    def reported_state(self) -> str:
        """running | stopped | absent, for the run summary."""
        if not self.defined:
            return "absent"
        return "running" if self.state in ("running", "paused") else "stopped"


@dataclass
class VmDecision(Decision):
    """A Decision plus what only the vm step acts on."""

    #: the guest gets a new seed (a new host key, pinned before it starts)
    needs_seed: bool = False
    #: why a wanted change is not applied (a changed spec without ``replace``), or ""
    blocked: str = ""
    #: the guest is started by the actions (the step then waits for its SSH)
    starts: bool = False


def parse_found(text: str) -> GuestFound:
    """The probe's ``key=value`` lines -> GuestFound; VmProbeError when libvirt did not
    answer or the output is not the probe's."""
    facts: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key] = value
    if "virsh" not in facts:
        raise VmProbeError("the probe printed nothing it was expected to")
    if facts["virsh"] != "ok":
        raise VmProbeError(f"libvirt does not answer (virsh -c qemu:///system): "
                           f"{facts['virsh'].removeprefix('failed:')[:300]}")
    defined = facts.get("defined") == "yes"
    spec_hash, spec = None, None
    if defined:
        try:
            xml_text = base64.b64decode(facts.get("xml", ""), validate=True).decode(
                "utf-8", "replace")
        except (binascii.Error, ValueError):
            raise VmProbeError("the domain's XML could not be read") from None
        if not xml_text.strip():
            raise VmProbeError("virsh dumpxml printed nothing for a defined domain")
        dom = read_domain(xml_text)
        spec_hash, spec = dom.hash, dom.spec
    word = facts.get("domstate", "").strip().lower()
    if not defined:
        state = "absent"
    elif word in _RUNNING:
        state = "running"
    elif word in _PAUSED:
        state = "paused"
    elif word in ("shut off", "crashed", "shutoff"):
        state = "off"
    else:
        raise VmProbeError(f"unknown domain state {word!r}")
    autostart = {"enable": True, "disable": False}.get(facts.get("autostart", "").strip())
    seed_pub = None
    meta = facts.get("seedmeta", "").strip()
    if meta:
        try:
            doc = json.loads(meta)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("host_key_pub"), str):
            seed_pub = doc["host_key_pub"].strip()
            # It is pinned from here when the store lost the pin: only a well-formed key.
            if not _SEED_KEY.match(seed_pub):
                raise VmProbeError("the seed's record on the hypervisor holds no valid "
                                   "ssh-ed25519 public key")
    return GuestFound(defined=defined, state=state, autostart=autostart, hash=spec_hash,
                      spec=spec, overlay=facts.get("overlay") == "yes",
                      seed=facts.get("seed") == "yes", seed_pub=seed_pub,
                      image_ok=facts.get("image") == "ok")


_SEED_KEY = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]{16,}={0,3}$")


def virsh(*args: object) -> str:
    return cmd(*VIRSH, *args)


class VmResource(Resource):
    """The desired state of one guest; probes and decide like every resource."""

    kind = "vm"
    KEYS = None
    STATES = VM_STATES

    def __init__(self, want: GuestWant) -> None:
        super().__init__({"name": want.name, "state": want.state})
        self.want = want
        self.identity = f"vm:{want.name}"

    # -- probe -----------------------------------------------------------------------------
    def probes(self) -> list[Probe]:
        w = self.want
        n = q(w.name)
        v = " ".join(q(a) for a in VIRSH)
        lines = [
            # libvirt must answer before anything it says (or does not say) is believed.
            f"if mc_list=$({v} list --all --name 2>&1); then echo virsh=ok; else",
            "  echo \"virsh=failed:$(printf '%s' \"$mc_list\" | tr '\\n' ' ')\"; exit 0; fi",
            f"if printf '%s\\n' \"$mc_list\" | grep -qxF -- {n}; then",
            "  echo defined=yes",
            f"  echo \"domstate=$({v} domstate -- {n} | head -n 1)\"",
            f"  echo \"xml=$({v} dumpxml -- {n} | base64 -w0)\"",
            f"  echo \"autostart=$({v} dominfo -- {n} | sed -n 's/^Autostart: *//p')\"",
            "else echo defined=no; fi",
            f"[ -f {q(w.paths.overlay)} ] && echo overlay=yes || echo overlay=no",
            f"[ -f {q(w.paths.seed)} ] && echo seed=yes || echo seed=no",
            f"echo \"seedmeta=$(cat {q(w.seed_meta)} 2>/dev/null | head -n 1)\"",
        ]
        if w.image is not None:
            img = q(w.image.path)
            lines.append(
                f"if [ -f {img} ] && [ \"$(cat {q(w.image.verified_marker)} 2>/dev/null)\" = "
                f"\"{w.image.sha256} $(stat -c '%s %Y' {img})\" ]; then echo image=ok; "
                "else echo image=missing; fi")
        return [Probe(self.identity, "\n".join(lines))]

    # -- decide ----------------------------------------------------------------------------
    def decide(self, found: Mapping[str, str]) -> VmDecision:
        return self.decide_found(parse_found(found.get(self.identity, "")))

    def decide_found(self, f: GuestFound) -> VmDecision:
        w = self.want
        if w.state == "absent":
            if not (f.defined or f.overlay or f.seed):
                return VmDecision()
            return VmDecision([Action(f"remove guest {w.name}", self._teardown(f))],
                              [f"remove guest {w.name} (domain, overlay, seed)"])
        recreate = False
        changes: list[str] = []
        diff = ""
        if f.defined:
            if f.hash != w.hash:
                lines = spec_changes(f.spec, w.doc)
                diff = "".join(f"  {ln}\n" for ln in lines)
                if not w.replace:
                    return VmDecision(changes=[f"spec of {w.name} changed"], diff=diff,
                                      blocked="the guest's spec changed (see the diff); "
                                              "'replace: true' rebuilds it (a new disk from "
                                              "the image, a new host key)")
                recreate = True
                changes.append(f"replace guest {w.name}: {'; '.join(lines)}")
            elif not (f.overlay and f.seed and f.seed_pub):
                missing = ", ".join(what for what, ok in (
                    ("overlay", f.overlay), ("seed", f.seed), ("seed.json", f.seed_pub))
                    if not ok)
                if not w.replace:
                    return VmDecision(changes=[f"files of {w.name} missing: {missing}"],
                                      blocked=f"the domain is defined but its {missing} "
                                              "is missing; 'replace: true' rebuilds it")
                recreate = True
                changes.append(f"replace guest {w.name}: {missing} missing")
        if recreate or not f.defined:
            return self._create(f, recreate, changes, diff)
        actions: list[Action] = []
        starts = False
        if f.autostart is not w.autostart:
            actions.append(Action(f"autostart {w.autostart}", virsh(
                "autostart", *(() if w.autostart else ("--disable",)), "--", w.name)))
            changes.append(f"autostart {'on' if w.autostart else 'off'}")
        if w.state == "running" and f.state == "paused":
            actions.append(Action(f"resume {w.name}", virsh("resume", "--", w.name)))
            changes.append(f"resume {w.name} (was paused)")
        elif w.state == "running" and f.state == "off":
            actions.append(Action(f"start {w.name}", virsh("start", "--", w.name)))
            changes.append(f"start {w.name} (was shut off)")
            starts = True
        elif w.state == "stopped" and f.state in ("running", "paused"):
            actions.append(Action(f"stop {w.name}", self._stop()))
            changes.append(f"stop {w.name}")
        return VmDecision(actions, changes, starts=starts)

    # -- actions ---------------------------------------------------------------------------
    def _create(self, f: GuestFound, recreate: bool, changes: list[str],
                diff: str) -> VmDecision:
        w = self.want
        if w.image is None:
            raise VmProbeError(f"guest {w.name}: no base image to create it from")
        actions: list[Action] = []
        if recreate:
            actions.append(Action(f"remove guest {w.name}", self._teardown(f)))
        else:
            changes.append(f"create guest {w.name} ({w.doc.get('vcpus')} vCPU, "
                           f"{w.doc.get('memory_mib')} MiB, {w.disk_mib} MiB disk on "
                           f"{w.image.name})")
        if not f.image_ok:
            actions.append(Action(f"download {w.image.name}", self._download()))
            changes.append(f"download image {w.image.name} (sha256 {w.image.sha256[:12]}…)")
        actions.append(Action(f"overlay for {w.name}", "\n".join([
            cmd("mkdir", "-p", "--", w.guest_dir),
            cmd("chmod", "0711", "--", w.guest_dir),
            cmd("rm", "-f", "--", w.paths.overlay),
            cmd("qemu-img", "create", "-q", "-f", "qcow2", "-F", w.image.disk_format, "-b",
                w.image.path, w.paths.overlay, f"{w.disk_mib}M"),
        ])))
        actions.append(Action(f"seed for {w.name}", "\n".join([
            f"[ -f {q(w.staged_seed)} ] && [ -f {q(w.staged_seed_meta)} ] || "
            "{ echo 'the seed was not staged' >&2; exit 1; }",
            cmd("chmod", "0600", "--", w.staged_seed),
            cmd("mv", "-f", "--", w.staged_seed, w.paths.seed),
            cmd("mv", "-f", "--", w.staged_seed_meta, w.seed_meta),
        ])))
        console_dir = w.paths.console_log.rsplit("/", 1)[0] or "/"
        actions.append(Action(f"define {w.name}", "\n".join([
            cmd("mkdir", "-p", "--", console_dir),
            write_file_script(w.xml_file, w.xml.encode("utf-8"), "600", None, None,
                              exists=False),
            virsh("define", "--", w.xml_file),
            virsh("autostart", *(() if w.autostart else ("--disable",)), "--", w.name),
        ])))
        starts = w.state == "running"
        if starts:
            actions.append(Action(f"start {w.name}", virsh("start", "--", w.name)))
        return VmDecision(actions, changes, diff=diff, needs_seed=True, starts=starts)

    def _teardown(self, f: GuestFound) -> str:
        w = self.want
        lines = []
        if f.defined:
            n = q(w.name)
            v = " ".join(q(a) for a in VIRSH)
            lines += [
                f"case \"$({v} domstate -- {n} | head -n 1)\" in",
                f"  'shut off'|crashed) ;; *) {v} destroy -- {n} >/dev/null ;; esac",
                virsh("undefine", "--", w.name),
            ]
        # The seed's staged successor is kept: the step staged it for the rebuild.
        lines.append(cmd("rm", "-f", "--", w.paths.overlay, w.paths.seed, w.seed_meta,
                         w.xml_file))
        if w.state == "absent":
            lines.append(cmd("rm", "-f", "--", w.staged_seed, w.staged_seed_meta))
            lines.append(f"rmdir -- {q(w.guest_dir)} 2>/dev/null || true")
        return "\n".join(lines)

    def _stop(self) -> str:
        """Graceful shutdown (ACPI), a bounded wait, then power off."""
        w = self.want
        n = q(w.name)
        v = " ".join(q(a) for a in VIRSH)
        return "\n".join([
            f"{v} shutdown -- {n} >/dev/null || true",
            "mc_i=0",
            f"while [ \"$({v} domstate -- {n} | head -n 1)\" != 'shut off' ]; do",
            f"  mc_i=$((mc_i + 1)); if [ $mc_i -gt {int(w.stop_timeout) * 2} ]; then",
            f"    echo 'no clean shutdown within {int(w.stop_timeout)} s: powering off' >&2",
            f"    {v} destroy -- {n} >/dev/null; break; fi",
            "  sleep 0.5",
            "done",
        ])

    def _download(self) -> str:
        """Fetch the base image once per hypervisor, refuse it unless its sha256 matches."""
        img = self.want.image
        if img is None:
            return ":"
        images_dir = img.path.rsplit("/", 1)[0] or "/"
        part = f"{img.path}.part"
        return "\n".join([
            cmd("mkdir", "-p", "--", images_dir),
            cmd("chmod", "0755", "--", images_dir),
            cmd("rm", "-f", "--", part),
            # Retried, also when refused (an image store that is restarting), and on failure
            # a line that says what failed (wget -q said nothing and exited 4).
            f"mc_fail() {{ printf 'fetching %s from the image store failed (%s exit %s)\\n' "
            f"{q(img.name)} \"$1\" \"$2\" >&2; rm -f -- {q(part)}; exit 1; }}",
            "if command -v wget >/dev/null 2>&1; then",
            f"  {cmd('wget', '-nv', '--tries=5', '--retry-connrefused', '--waitretry=2', '--timeout=30', '-O', part, '--', img.url)} || mc_fail wget $?",  # noqa: E501
            "elif command -v curl >/dev/null 2>&1; then",
            f"  {cmd('curl', '-fsS', '--retry', '5', '--retry-connrefused', '--connect-timeout', '30', '-o', part, '--', img.url)} || mc_fail curl $?",  # noqa: E501
            # Every Debian host has apt's own downloader, even without wget or curl.
            "elif [ -x /usr/lib/apt/apt-helper ]; then",
            f"  {cmd('/usr/lib/apt/apt-helper', '-o', 'APT::Sandbox::User=root', '-o', 'Acquire::http::Timeout=30', 'download-file', img.url, part)} >/dev/null || mc_fail apt-helper $?",  # noqa: E501
            "else echo 'no wget, curl or apt-helper on the hypervisor: cannot fetch the "
            "image' >&2; exit 1; fi",
            f"mc_sum=$(sha256sum < {q(part)}); mc_sum=${{mc_sum%% *}}",
            f"if [ \"$mc_sum\" != {q(img.sha256)} ]; then",
            f"  rm -f -- {q(part)}",
            f"  echo \"{img.name}: sha256 $mc_sum does not match the image store's "
            f"{img.sha256}: refused\" >&2; exit 1; fi",
            cmd("chmod", "0644", "--", part),
            cmd("mv", "-f", "--", part, img.path),
            f"echo \"{img.sha256} $(stat -c '%s %Y' {q(img.path)})\" > "
            f"{q(img.verified_marker)}",
        ])


def seed_meta_doc(want: GuestWant, host_key_pub: str, instance_id: str) -> bytes:
    """``seed.json``: public data only, what the seed on this hypervisor carries."""
    return (json.dumps({"host_key_pub": host_key_pub, "instance_id": instance_id,
                        "spec_hash": want.hash}, sort_keys=True) + "\n").encode()
