"""The ``command`` step/resource: run a command, made idempotent by guards.

::

    command: [touch, /var/lib/app/initialised]              # argv shorthand
    command:
      argv: [/usr/local/bin/init-db]
      creates: /var/lib/db/ready     # skip if this path exists
      unless: [test, -f, /etc/x]     # skip if this command succeeds
      onlyif: [systemctl, is-active, db]   # run only if this command succeeds
      shell: "echo a | tee /tmp/b"   # raw shell instead of argv, chosen explicitly

Without a guard the command runs every time and reports "changed"; in check mode an unguarded
command cannot be predicted and is reported as such, never silently skipped.

Arguments may be templates over the host's variables, secrets included (``{{ db_password }}``):
the host gets the real value, but everything the step reports — message, changes, output,
streamed output events and errors — has each of the host's secret values masked as ``***``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from configure.ssh import Shell
from inventory.contracts import HostContext, StepOutcome, time_left
from inventory.errors import TransportError
from inventory.secrets import Masker, secret_values_in

KEYS = ("argv", "shell", "creates", "unless", "onlyif", "timeout", "become")


@dataclass(frozen=True)
class CommandArgs:
    command: tuple[str, ...] | Shell
    creates: str | None = None
    unless: tuple[str, ...] | None = None
    onlyif: tuple[str, ...] | None = None
    timeout: float = 600.0
    become: bool = False

    @property
    def guarded(self) -> bool:
        return bool(self.creates or self.unless or self.onlyif)

    def describe(self) -> str:
        if isinstance(self.command, Shell):
            return f"sh -c {self.command.script!r}"
        return " ".join(self.command)


def _argv(value: Any, what: str) -> tuple[str, ...]:
    # The message names the type, never the value: after rendering it may hold a secret.
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of arguments, got "
                         f"{'an empty list' if value == [] else type(value).__name__}")
    for i, a in enumerate(value):
        if isinstance(a, bool) or not isinstance(a, (str, int, float)):
            raise ValueError(f"{what} must be a non-empty list of arguments; item {i} is a "
                             f"{type(a).__name__}")
        if isinstance(a, str) and "\x00" in a:
            raise ValueError(f"{what}: item {i} has a NUL byte, which no command argument "
                             "can hold")
    return tuple(str(a) for a in value)


def parse_command(raw: Any) -> CommandArgs:
    if isinstance(raw, list):
        return CommandArgs(_argv(raw, "command"))
    if isinstance(raw, str):
        raise ValueError("a command is an argument list like [systemctl, restart, nginx]; "
                         "for raw shell write {shell: '...'}")
    if not isinstance(raw, dict):
        raise ValueError("expected an argument list or a mapping")
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}'; allowed: {', '.join(KEYS)}")
    if ("argv" in raw) == ("shell" in raw):
        raise ValueError("give exactly one of argv or shell")
    if "shell" in raw:
        if not isinstance(raw["shell"], str) or not raw["shell"].strip():
            raise ValueError("shell must be a non-empty string")
        if "\x00" in raw["shell"]:
            raise ValueError("shell has a NUL byte, which sh cannot read")
        command: tuple[str, ...] | Shell = Shell(raw["shell"])
    else:
        command = _argv(raw["argv"], "argv")
    creates = raw.get("creates")
    if creates is not None and (not isinstance(creates, str) or not creates.startswith("/")
                                or any(c in creates for c in "\x00\n")):
        raise ValueError("creates must be an absolute path (one line, no NUL byte)")
    timeout = raw.get("timeout", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    become = raw.get("become", False)
    if not isinstance(become, bool):
        raise ValueError("become must be true or false")
    return CommandArgs(
        command=command, creates=creates,
        unless=_argv(raw["unless"], "unless") if "unless" in raw else None,
        onlyif=_argv(raw["onlyif"], "onlyif") if "onlyif" in raw else None,
        timeout=float(timeout), become=become)


def host_masker(ctx: HostContext) -> Masker:
    """Masks the values of every secret among the host's variables (what a rendered
    argument can contain)."""
    return Masker(secret_values_in(ctx.vars))


def _run(ctx: HostContext, mask: Masker, command: list[str] | Shell, **kw: Any) -> Any:
    try:
        return ctx.connection().run(command, **kw)
    except TransportError as exc:
        # The transport names the command line it failed to run; that line holds the
        # rendered arguments.
        raise TransportError(mask.text(str(exc))) from None


def guard_satisfied(ctx: HostContext, args: CommandArgs,
                    mask: Masker | None = None) -> str | None:
    """Probe the guards; return why the command need not run, or None if it must."""
    mask = host_masker(ctx) if mask is None else mask
    if args.creates:
        if _run(ctx, mask, ["test", "-e", args.creates], timeout=30).ok:
            return mask.text(f"{args.creates} exists")
    if args.unless:
        if _run(ctx, mask, list(args.unless), timeout=args.timeout, become=args.become).ok:
            return mask.text(f"'{' '.join(args.unless)}' succeeded")
    if args.onlyif:
        if not _run(ctx, mask, list(args.onlyif), timeout=args.timeout,
                    become=args.become).ok:
            return mask.text(f"'{' '.join(args.onlyif)}' failed")
    return None


class CommandStep:
    name = "command"
    description = "run a command (argv list or explicit shell), idempotent with guards"

    def parse(self, raw: Any) -> CommandArgs:
        return parse_command(raw)

    def run(self, ctx: HostContext, args: CommandArgs) -> StepOutcome:
        mask = host_masker(ctx)
        shown = mask.text(args.describe())
        if args.guarded:
            reason = guard_satisfied(ctx, args, mask)
            if reason is not None:
                return StepOutcome("ok", f"not run: {reason}")
        if ctx.check:
            if args.guarded:
                return StepOutcome("changed", f"would run: {shown}", changes=[f"run {shown}"])
            return StepOutcome("skipped", f"unknown in check mode (no creates/unless/onlyif "
                                          f"guard): {shown}",
                               data={"unknown": True})
        command = args.command if isinstance(args.command, Shell) else list(args.command)

        streams = {"stdout": mask.stream(), "stderr": mask.stream()}

        def sink(stream: str, text: str) -> None:
            shown = streams[stream].feed(text) if stream in streams else mask.text(text)
            if shown:
                ctx.emit("host_output", stream=stream, text=shown)

        try:
            result = _run(ctx, mask, command, timeout=time_left(ctx.deadline, args.timeout),
                          become=args.become, sink=sink)
        finally:
            for name, masked in streams.items():
                rest = masked.flush()
                if rest:
                    ctx.emit("host_output", stream=name, text=rest)
        stdout, stderr = mask.text(result.stdout), mask.text(result.stderr)
        output = stdout + (("\n" + stderr) if stderr else "")
        if not result.ok:
            tail = mask.text(result.tail(5))
            return StepOutcome("failed", f"exit code {result.exit_code}: {shown}"
                                         + (f": {tail}" if tail else ""),
                               output=output, data={"exit_code": result.exit_code})
        return StepOutcome("changed", shown, changes=[f"ran {shown}"],
                           output=output, data={"exit_code": 0, "stdout": stdout,
                                                "stderr": stderr})

    def recheck(self, ctx: HostContext, args: CommandArgs) -> bool:
        """A guarded command in doubt is done when its guard says so; unguarded ones rerun."""
        return args.guarded and guard_satisfied(ctx, args) is not None
