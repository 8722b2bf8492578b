"""Resource kinds by name, and turning one recipe entry into a resource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from configure.resources.base import Resource, ResourceSpecError
from configure.resources.command import CommandResource
from configure.resources.files import Directory, File, Line
from configure.resources.system import Group, KernelModule, Package, Service, Sysctl, User

RESOURCE_KINDS: dict[str, type[Resource]] = {
    "package": Package, "file": File, "directory": Directory, "line": Line,
    "service": Service, "user": User, "group": Group, "sysctl": Sysctl,
    "kernel_module": KernelModule, "command": CommandResource,
}


def parse_resource(kind: str, spec: Any) -> Resource:
    cls = RESOURCE_KINDS.get(kind)
    if cls is None:
        import difflib

        close = difflib.get_close_matches(kind, [*RESOURCE_KINDS, "template"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ResourceSpecError(f"unknown resource kind '{kind}'{hint}")
    if kind == "command" and isinstance(spec, list):
        spec = {"argv": spec}
    if not isinstance(spec, Mapping):
        raise ResourceSpecError(f"{kind}: expected a mapping of settings")
    return cls(spec)
