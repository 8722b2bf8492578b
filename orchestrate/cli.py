"""The `metalchain` command line: global options, error handling and exit codes.

Exit codes: 0 ok, 1 a host or step failed, 2 bad input or usage. Only ``--debug`` prints a
traceback; every other failure is one line on stderr.
"""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import click

from inventory.errors import MetalchainError
from inventory.secrets import Masker
from inventory.site import Site, find_site_dir

log = logging.getLogger("metalchain")

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def _version() -> str:
    try:
        return version("metalchain")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Context:
    """What every command gets: the site (opened lazily) and the global flags."""

    site_option: str | None
    debug: bool
    _site: Site | None = field(default=None, repr=False)

    @property
    def site(self) -> Site:
        if self._site is None:
            self._site = Site.open(find_site_dir(self.site_option))
            _SCRUB.site = self._site
        return self._site

    def close(self) -> None:
        if self._site is not None:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="metalchain")
@click.option("--site", "site", metavar="DIR", envvar=None,
              help="Site directory (default: $METALCHAIN_SITE, else the current directory).")
@click.option("--debug", is_flag=True, help="Verbose logging and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, site: str | None, debug: bool) -> None:
    """metalchain: from bare metal to monitored virtual machines, with one inventory."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SCRUB)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    ctx.obj = Context(site_option=site, debug=debug)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from orchestrate.commands import (
        apply_cmd,
        init_cmd,
        inventory_cmd,
        lab_cmd,
        leases_cmd,
        mirror_cmd,
        power_cmd,
        provision_cmd,
        run_cmd,
        schedule_cmd,
        state_cmd,
        verify_cmd,
    )

    cli.add_command(init_cmd.init)
    cli.add_command(inventory_cmd.inventory)
    cli.add_command(state_cmd.state)
    cli.add_command(run_cmd.run)
    cli.add_command(run_cmd.exec_)
    cli.add_command(run_cmd.runs)
    cli.add_command(run_cmd.facts)
    cli.add_command(apply_cmd.apply)
    cli.add_command(apply_cmd.drift)
    cli.add_command(schedule_cmd.schedule_group)
    cli.add_command(lab_cmd.lab)
    cli.add_command(power_cmd.power)
    cli.add_command(provision_cmd.serve)
    cli.add_command(provision_cmd.provision)
    cli.add_command(mirror_cmd.mirror)
    cli.add_command(verify_cmd.verify)
    run_cmd.runs.add_command(leases_cmd.leases_list)
    state_cmd.state.add_command(leases_cmd.release)


_register()


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="metalchain", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        return EXIT_FAILED
    except click.ClickException as exc:
        exc.show()
        return EXIT_INPUT if exc.exit_code in (1, 2) else exc.exit_code
    except MetalchainError as exc:
        if debug:
            sys.stderr.write(_SCRUB.scrub(traceback.format_exc()))
        sys.stderr.write(f"error: {_SCRUB.scrub(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into a clean line
        if debug:
            sys.stderr.write(_SCRUB.scrub(traceback.format_exc()))
        sys.stderr.write(f"internal error: {exc.__class__.__name__}: {_SCRUB.scrub(str(exc))}"
                         " (run with --debug for the traceback; please report it)\n")
        return EXIT_FAILED
    # Without standalone mode, click returns the code of a command's Exit(code) here.
    return rv if isinstance(rv, int) else EXIT_OK


def run() -> None:
    sys.exit(main())
