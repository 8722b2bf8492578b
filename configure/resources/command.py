"""command as a resource: guards become probes, the command an action."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from configure.command import CommandArgs, parse_command
from configure.resources.base import Action, Decision, Probe, Resource, ResourceSpecError, cmd, q
from configure.ssh import Shell


class CommandResource(Resource):
    kind = "command"

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        body = {k: v for k, v in spec.items() if k not in Resource.COMMON}
        raw: Any = body.get("argv") if set(body) == {"argv"} else body
        try:
            self.args: CommandArgs = parse_command(raw)
        except ValueError as exc:
            raise ResourceSpecError(f"command: {exc}") from None
        self.label = spec.get("name") or self.args.describe()
        self.identity = f"command:{self.label}"

    def _line(self) -> str:
        c = self.args.command
        return cmd("sh", "-c", c.script) if isinstance(c, Shell) else cmd(*c)

    def probes(self) -> list[Probe]:
        lines = []
        if self.args.creates:
            lines.append(f"[ -e {q(self.args.creates)} ] && echo creates=yes || echo creates=no")
        if self.args.unless:
            lines.append(f"{cmd(*self.args.unless)} >/dev/null 2>&1 && echo unless=yes || "
                         "echo unless=no")
        if self.args.onlyif:
            lines.append(f"{cmd(*self.args.onlyif)} >/dev/null 2>&1 && echo onlyif=yes || "
                         "echo onlyif=no")
        return [Probe(self.identity, "\n".join(lines))] if lines else []

    def decide(self, found: Mapping[str, str]) -> Decision:
        facts = dict(ln.split("=", 1) for ln in found.get(self.identity, "").splitlines()
                     if "=" in ln)
        if facts.get("creates") == "yes" or facts.get("unless") == "yes" or \
                facts.get("onlyif") == "no":
            return Decision()
        action = Action(f"run {self.args.describe()}", self._line())
        if not self.args.guarded:
            return Decision([action], [f"run {self.args.describe()}"],
                            unknown="no creates/unless/onlyif guard: runs every time, "
                                    "cannot be predicted")
        return Decision([action], [f"run {self.args.describe()}"])
