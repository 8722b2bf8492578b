"""One apt transaction for the package installs of an apply.

Each ``apt-get install`` pays for reading the package lists, resolving, and running dpkg's
triggers (ldconfig, systemd, man-db) once more; on an emulated lab node that is seconds per
call, and an apply of base + node_exporter + hypervisor had four of them (each with its own
``apt-get update``). So the installs of a host's apply are joined: the first package resource
that has something to install installs everything the later ones are missing, in one
transaction, where it stands; each later one then only checks that its packages are there.

What stays per resource:

* check mode, changes and diffs: they come from each resource's own decision (untouched);
* failures: if the joined transaction fails, the first resource says so and installs only its
  own packages, and every later one installs its own where it stands, so the resource whose
  package is broken is the one that fails (the others keep their ordinary outcome). That
  holds for what apt refuses before dpkg runs (a package the mirror lacks, a conflict); a
  maintainer script that fails leaves a half-configured package that every later apt-get
  tries to configure again, so there the first resource fails, with apt's output naming the
  package;
* handlers: each resource still notifies its own, when its own action succeeds.

A join never moves an install across something that changes what apt or dpkg would do: a
removal, a package resource with ``batch: false``, or a file, directory or line under
/etc/apt/, /etc/dpkg/ or /var/cache/debconf/ (sources, keys, pinning, dpkg options), or
metalchain's own install options (/etc/metalchain/apt.conf), that is
about to change, also when it is a handler of a role in between. A command that a later
package needs first (a debconf preseed, a repository set up by a script) cannot be seen from
here: that package says ``batch: false``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from configure.resources.base import Action, Decision, Resource, q
from configure.resources.system import INSTALL_CONF, apt_install_script, apt_update_script

APT_CONFIG_DIRS = ("/etc/apt/", "/etc/dpkg/", "/var/cache/debconf/", f"{INSTALL_CONF}/")
PATH_KINDS = ("file", "directory", "line")


@dataclass(frozen=True)
class Step:
    """One resource of the act script, in the order the script runs them: its frame index,
    its label (role/identity), and what it decided. ``handler`` marks a role's handler."""

    n: int
    label: str
    resource: Resource
    decision: Decision
    handler: bool = False


def is_barrier(resource: Resource, decision: Decision) -> bool:
    """Does this action change what a later ``apt-get install`` would do?"""
    if not decision.actions or decision.apt_install is not None:
        return False
    if resource.kind == "package":
        return True     # a removal, or an install that asked not to be joined
    path = getattr(resource, "path", None)
    return (resource.kind in PATH_KINDS and isinstance(path, str)
            and (path.rstrip("/") + "/").startswith(APT_CONFIG_DIRS))


def _groups(steps: Sequence[Step]) -> list[list[Step]]:
    groups: list[list[Step]] = []
    current: list[Step] | None = None
    for s in steps:
        if not s.handler and s.decision.apt_install is not None and s.decision.actions:
            if current is None:
                current = []
                groups.append(current)
            current.append(s)
        elif is_barrier(s.resource, s.decision):
            current = None
    return [g for g in groups if len(g) > 1]


def join_installs(steps: Sequence[Step]) -> dict[int, Decision]:
    """The decisions to run instead, by frame index, for the installs that can be joined
    (empty when there is nothing to join). ``steps``: the actions and the handlers of the
    act script in its order; handlers are never joined, only looked at as barriers."""
    out: dict[int, Decision] = {}
    for group in _groups(steps):
        head = group[0]
        names: list[str] = []
        for s in group:
            info = s.decision.apt_install
            if info is not None:
                names += [n for n in info.names if n not in names]
        update = any(s.decision.apt_install is not None and s.decision.apt_install.update
                     for s in group)
        others = ", ".join(s.label for s in group[1:])
        head_script = (
            f"{apt_update_script(update)}\n"
            f"echo {q(f'one apt transaction for {head.label}, {others}')}\n"
            f"if {apt_install_script(names)}; then :; else\n"
            "echo 'the joined apt transaction failed: each package resource installs its own "
            "packages' >&2\nfi\n"
            + _own(head))
        out[head.n] = replace(head.decision, actions=[Action(
            f"install {' '.join(names)} (one transaction)", head_script)])
        for s in group[1:]:
            script = _own(s, note=f"installed by the apt transaction of {head.label}")
            out[s.n] = replace(s.decision, actions=[Action(
                f"{s.decision.actions[0].describe} (joined with {head.label})", script)])
    return out


def _own(step: Step, note: str = "") -> str:
    """Install the step's own packages unless they are there already."""
    info = step.decision.apt_install
    if info is None:      # never: groups hold installs only
        return "\n".join(a.script for a in step.decision.actions)
    own = "\n".join(a.script for a in step.decision.actions)
    said = f"echo {q(note)}" if note else ":"
    return f"if {info.check}; then {said}; else\n{own}\nfi"
