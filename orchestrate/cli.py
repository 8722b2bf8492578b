"""The `metalchain` command line: global options, error handling and exit codes.

Exit codes: 0 ok, 1 a host or step failed, 2 bad input or usage, 130 interrupted (Ctrl-C).
Only ``-v``/``--debug`` prints a traceback; every other failure is one line on stderr.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from inventory.errors import MetalchainError
from inventory.secrets import Masker
from runtime.text import terminal_safe

if TYPE_CHECKING:
    from inventory.site import Site

log = logging.getLogger("metalchain")

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metalchain")
    except PackageNotFoundError:
        return "0+unknown"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"metalchain, version {_version()}")
        ctx.exit()


@dataclass
class Context:
    """What every command gets: the site (opened lazily) and the global flags.

    The global flags are set while the command line is parsed, by the options
    :func:`global_options` gives the root group and every command and subgroup, so they may
    come before or after the subcommand (``metalchain -v apply ...`` or ``metalchain apply
    ... -v``)."""

    site_option: str | None = None
    debug: bool = False
    no_color: bool = False
    _site: Site | None = field(default=None, repr=False)

    @property
    def site(self) -> Site:
        if self._site is None:
            from inventory.site import Site, find_site_dir

            self._site = Site.open(find_site_dir(self.site_option))
            _SCRUB.site = self._site
            # {env: VAR} secrets stay with the site, not in what child processes inherit.
            self._site.withhold_env_secrets()
        return self._site

    def close(self) -> None:
        if self._site is not None:
            self._site.restore_env_secrets()
            self._site.close()


class _Scrubber(logging.Filter):
    """Last line of defence: masks every secret value the site knows (the secrets file's and
    the environment variables its inventory references) in log records, errors and
    tracebacks."""

    site: Site | None = None
    _formatter = logging.Formatter()

    def masker(self) -> Masker:
        return Masker() if self.site is None else self.site.masker()

    def scrub(self, text: str) -> str:
        return self.masker().text(text)

    def filter(self, record: logging.LogRecord) -> bool:
        masker = self.masker()
        record.msg = masker.text(record.getMessage())
        record.args = ()
        # A traceback attached to the record is formatted here, masked, and kept as text, so
        # the handler's formatter prints the masked copy.
        if record.exc_info:
            record.exc_text = masker.text(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = masker.text(record.exc_text)
        if record.stack_info:
            record.stack_info = masker.text(record.stack_info)
        return True


_SCRUB = _Scrubber()


class _TerminalFormatter(logging.Formatter):
    """Log lines as data on the terminal: a record may quote a host's output or an alert's
    labels, so escape sequences in it are shown, not acted on (newlines of a traceback
    stay)."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SCRUB)
    handler.setFormatter(_TerminalFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    # paramiko's reader thread logs each failed connection as ERROR lines of a traceback
    # ("Error reading SSH protocol banner" from a guest still booting); the failure reaches
    # the caller as a TransportError that names the host, which is what is reported.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if debug else logging.CRITICAL)


def _set_site(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Context).site_option = value


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).debug = True
        _configure_logging(True)


def _set_no_color(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).no_color = True


def global_options(command: click.Command) -> click.Command:
    """Give ``command`` the global options (``--site``, ``-v/--debug``, ``--no-color``).

    Applied to the root group and, by :func:`_equip`, to every command and subgroup of
    the tree, so an option means the same wherever it is written. The options write into the
    shared :class:`Context` (never into the command's arguments); an option left out of a
    later position does not undo one given earlier."""
    for option in (
        click.option("--site", metavar="DIR", expose_value=False, callback=_set_site,
                     help="Site directory (default: $METALCHAIN_SITE, else the current "
                          "directory)."),
        click.option("-v", "--debug", is_flag=True, expose_value=False, callback=_set_debug,
                     help="Verbose logging and tracebacks on errors (before or after the "
                          "subcommand)."),
        click.option("--no-color", is_flag=True, expose_value=False, callback=_set_no_color,
                     help="No colours (also when $NO_COLOR is set, or stdout is not a "
                          "terminal)."),
    ):
        option(command)
    return command


EPILOG = """\b
Examples:
  metalchain init mysite
  metalchain --site mysite inventory list
  metalchain --site mysite apply --role base all --check --diff
  metalchain apply --role base web -v      # global options go before or after

\b
Shell completion (bash; zsh and fish likewise):
  eval "$(_METALCHAIN_COMPLETE=bash_source metalchain)"
"""


#: The root's subcommands: name -> (module, attribute). A module is imported when its command
#: is used (``metalchain apply`` loads what apply needs, not the provisioner, the monitor or
#: the lab: start-up is part of every run); ``--help``, completion and a walk of
#: ``cli.commands`` load them all.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "init": ("init_cmd", "init"),
    "inventory": ("inventory_cmd", "inventory"),
    "state": ("state_cmd", "state"),
    "run": ("run_cmd", "run"),
    "exec": ("run_cmd", "exec_"),
    "runs": ("run_cmd", "runs"),
    "facts": ("run_cmd", "facts"),
    "apply": ("apply_cmd", "apply"),
    "drift": ("apply_cmd", "drift"),
    "schedule": ("schedule_cmd", "schedule_group"),
    "lab": ("lab_cmd", "lab"),
    "power": ("power_cmd", "power"),
    "serve": ("provision_cmd", "serve"),
    "provision": ("provision_cmd", "provision"),
    "mirror": ("mirror_cmd", "mirror"),
    "image": ("image_cmd", "image"),
    "monitor": ("monitor_cmd", "monitor"),
    "verify": ("verify_cmd", "verify"),
    "incidents": ("incidents_cmd", "incidents"),
    "remediation": ("incidents_cmd", "remediation"),
}


def _with_leases(name: str) -> Callable[[click.Command], None]:
    def attach(command: click.Command) -> None:
        from orchestrate.commands import leases_cmd

        if isinstance(command, click.Group):
            command.add_command(getattr(leases_cmd, name))
    return attach


#: What a subcommand gets from elsewhere when it is loaded.
_ATTACH: dict[str, Callable[[click.Command], None]] = {
    "runs": _with_leases("leases_list"), "state": _with_leases("release")}


class _LazyGroup(click.Group):
    """A group whose subcommands in :data:`SUBCOMMANDS` are imported on first use, then
    given the global options and completion (:func:`_equip`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lazy: dict[str, tuple[str, str]] = {}
        self._loaded: dict[str, click.Command] = {}
        super().__init__(*args, **kwargs)
        self._lazy = dict(SUBCOMMANDS)

    @property   # type: ignore[override]
    def commands(self) -> dict[str, click.Command]:
        for name in list(self._lazy):
            self._load(name)
        return self._loaded

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._loaded = dict(value)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        self._loaded[name or cmd.name or ""] = cmd

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            self._load(cmd_name)
        return self._loaded.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._loaded, *self._lazy})

    def _load(self, name: str) -> None:
        module, attr = self._lazy.pop(name)
        command = getattr(importlib.import_module(f"orchestrate.commands.{module}"), attr)
        if name in _ATTACH:
            _ATTACH[name](command)
        _equip(command)
        self._loaded[name] = command


@global_options
@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EPILOG)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_version, help="Show the version and exit.")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """metalchain: from bare metal to monitored virtual machines, with one inventory."""
    obj = ctx.ensure_object(Context)
    _configure_logging(obj.debug)
    ctx.call_on_close(obj.close)


def _equip(command: click.Command) -> None:
    """The global options, and completion of the site's names (hosts, targets, roles,
    playbooks) for every parameter named as in :data:`orchestrate.completion.BY_PARAMETER`,
    on ``command`` and every command of the tree below it."""
    from orchestrate.completion import BY_PARAMETER

    global_options(command)
    for param in command.params:
        complete = BY_PARAMETER.get(param.name or "")
        # click keeps a parameter's shell_complete= here; one given by the command wins.
        if complete is not None and param._custom_shell_complete is None:
            param._custom_shell_complete = complete
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _equip(sub)


def main(argv: list[str] | None = None) -> int:
    obj = Context()
    try:
        rv = cli.main(args=argv, prog_name="metalchain", standalone_mode=False, obj=obj)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):   # click's Ctrl-C
            sys.stderr.write("interrupted\n")
            return EXIT_INTERRUPTED
        sys.stderr.write("aborted\n")
        return EXIT_FAILED
    except click.ClickException as exc:
        exc.message = terminal_safe(exc.message)   # it may quote an argument as given
        exc.show()
        return EXIT_INPUT if exc.exit_code in (1, 2) else exc.exit_code
    except MetalchainError as exc:
        if obj.debug:
            sys.stderr.write(terminal_safe(_SCRUB.scrub(traceback.format_exc())))
        # An error may quote a host's output: data, one line each (several problems).
        for text in _SCRUB.scrub(str(exc)).rstrip("\n").split("\n"):
            sys.stderr.write(f"error: {terminal_safe(text, multiline=False)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into a clean line
        if obj.debug:
            sys.stderr.write(terminal_safe(_SCRUB.scrub(traceback.format_exc())))
        why = terminal_safe(_SCRUB.scrub(str(exc)), multiline=False)
        sys.stderr.write(f"internal error: {exc.__class__.__name__}: {why}"
                         " (run with --debug for the traceback; please report it)\n")
        return EXIT_FAILED
    # Without standalone mode, click returns the code of a command's Exit(code) here.
    return rv if isinstance(rv, int) else EXIT_OK


def run() -> None:
    sys.exit(main())
