"""Running a command: an argument list (never a shell), a timeout, the exit status checked.

Failures become the caller's error (``error=``) with one line that names the command, the
limit hit or the exit status and the tail of its output. The message shows the argument list,
never ``input`` or ``env``: those are where a secret may go; a secret never goes in argv
(it would show in ``ps`` too).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from runtime.errors import ErrorFactory

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT

#: How much of a command line and of its output a message repeats.
SHOWN_ARGV_CHARS = 200
SHOWN_OUTPUT_LINES = 8
SHOWN_OUTPUT_CHARS = 800


class CommandError(Exception):
    """Raised when the caller did not name its own error class."""


def describe(argv: Sequence[str | os.PathLike[str]]) -> str:
    """The command line as a shell would read it, cut to :data:`SHOWN_ARGV_CHARS`."""
    text = shlex.join(str(a) for a in argv)
    return text if len(text) <= SHOWN_ARGV_CHARS else text[:SHOWN_ARGV_CHARS - 3] + "..."


def output_tail(*streams: str | bytes | None) -> str:
    """The last lines of the first non-empty stream, for an error message."""
    for stream in streams:
        if isinstance(stream, bytes):
            stream = stream.decode("utf-8", errors="replace")
        if stream and stream.strip():
            tail = "\n".join(stream.strip().splitlines()[-SHOWN_OUTPUT_LINES:])
            return tail[-SHOWN_OUTPUT_CHARS:]
    return ""


def run(argv: Sequence[str | os.PathLike[str]], *, timeout: float,
        input: str | bytes | None = None, check: bool = True,
        error: ErrorFactory = CommandError, what: str | None = None,
        text: bool = True, cwd: Path | str | None = None, env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = PIPE,
        stderr: int | IO[Any] | None = PIPE) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` and return the completed process; raise ``error`` when it cannot run,
    runs past ``timeout`` seconds, or (with ``check``) exits non-zero.

    ``what`` names the command in messages instead of its argument list (e.g.
    ``"extlinux install"``). Standard input is ``input`` or ``/dev/null``, never the caller's
    terminal. ``timeout <= 0`` (a spent deadline) fails without starting anything.

    Example::

        out = run(["dnsmasq", "--test", f"--conf-file={conf}"], timeout=10,
                  error=BootServerError).stdout
    """
    args = [str(a) for a in argv]
    name = what or describe(args)
    if timeout <= 0:
        raise error(f"no time left to run {name}")
    try:
        proc = subprocess.run(args, input=input, stdin=None if input is not None else DEVNULL,
                              stdout=stdout, stderr=stderr, text=text, cwd=cwd,
                              env=None if env is None else dict(env), timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise error(f"{name} did not finish within {timeout:g} s") from None
    except OSError as exc:
        context = f" ({what})" if what else ""
        raise error(f"cannot run {args[0]}{context}: {exc.strerror or exc}") from exc
    if check and proc.returncode != 0:
        tail = output_tail(proc.stderr, proc.stdout)
        raise error(f"{name} failed (exit {proc.returncode})" + (f": {tail}" if tail else ""))
    return proc


def stop_child(proc: subprocess.Popen[Any], *, timeout: float, kill_timeout: float = 10.0,
               sig: int = signal.SIGTERM, error: ErrorFactory = CommandError) -> int:
    """Stop a child we started: ``sig`` (SIGTERM), SIGKILL if it is still running after
    ``timeout`` s; return its exit status. Raises ``error`` if it survives SIGKILL for
    ``kill_timeout`` s. Safe on a child that has already exited."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        return proc.wait(timeout=kill_timeout)
    except subprocess.TimeoutExpired:
        raise error(f"pid {proc.pid} ({describe(proc.args)}) survived SIGKILL") from None
