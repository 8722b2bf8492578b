"""What a value must look like before a resource hands it to a host command.

Every argument is shell-quoted and every operand follows ``--``, so a hostile value is at
worst a literal the host command refuses. These checks run when a recipe is loaded (and
again after per-host rendering) so that a value no host command could take is refused with
the recipe's file:line instead of failing, or meaning something else, on the host: a user
named ``--reference=/etc/shadow``, a sysctl key ``-p``, a path with a NUL byte.
"""

from __future__ import annotations

import re
from typing import Any

from configure.resources.base import ResourceSpecError

#: user and group names: what shadow's useradd accepts on Debian with --badname aside
#: (no leading '-', no ':' or ',' which separate fields and group lists), 32 bytes at most
ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\$?$")
#: Debian package names (policy 5.6.1), with an optional :architecture
PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,199}(:[a-z0-9-]{1,32})?$")
#: systemd unit names (systemd.unit(5): letters, digits, ":_.\-@"), no leading '-'
UNIT = re.compile(r"^[A-Za-z0-9_:.\\@][A-Za-z0-9_:.\\@-]{0,254}$")
#: sysctl keys: dot- or slash-separated parts, none empty (so no '..', no leading '/')
SYSCTL_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_@:-]*$")
#: kernel module names (modprobe treats '-' and '_' alike), no leading '-'
MODULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
PATH_MAX = 4096
VALUE_MAX = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shown(value: Any) -> str:
    """A value for an error message: repr (control characters escaped), cut if long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"...' ({len(str(value))} characters)"


def _match(pattern: re.Pattern[str], value: Any, kind: str, key: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ResourceSpecError(f"{kind}: {key} {shown(value)} is not {what}", key)
    return value


def account(value: Any, kind: str, key: str = "name") -> str:
    """A user or group name."""
    return _match(ACCOUNT, value, kind, key, "a user/group name (letters, digits, '_.-', "
                  "not starting with '-', at most 32 characters)")


def package(value: Any, kind: str, key: str = "name") -> str:
    return _match(PACKAGE, value, kind, key, "a Debian package name (lowercase letters, "
                  "digits, '+.-', starting with a letter or digit)")


def unit(value: Any, kind: str, key: str = "name") -> str:
    return _match(UNIT, value, kind, key, "a systemd unit name (letters, digits, "
                  "':_.\\-@', not starting with '-')")


def module(value: Any, kind: str, key: str = "name") -> str:
    return _match(MODULE, value, kind, key, "a kernel module name (letters, digits, '_-', "
                  "not starting with '-')")


def sysctl_key(value: Any, kind: str, key: str = "name") -> str:
    if not isinstance(value, str) or len(value) > 255 or not all(
            SYSCTL_PART.match(p) for p in re.split(r"[./]", value)):
        raise ResourceSpecError(f"{kind}: {key} {shown(value)} is not a sysctl key like "
                                "net.ipv4.ip_forward (parts of letters, digits, '_-', "
                                "separated by '.' or '/', none empty or starting with '-')", key)
    return value


def abs_path(value: Any, kind: str, key: str = "path") -> str:
    """An absolute path on the host: no control characters, no '..' part, PATH_MAX at most."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ResourceSpecError(f"{kind}: {key} must be absolute, got {shown(value)}", key)
    if _CONTROL.search(value) or len(value.encode("utf-8", "surrogatepass")) > PATH_MAX:
        raise ResourceSpecError(f"{kind}: {key} {shown(value)} has a control character or is "
                                f"longer than {PATH_MAX} bytes", key)
    if ".." in value.split("/"):
        raise ResourceSpecError(f"{kind}: {key} {shown(value)} has a '..' part; give the "
                                "path it means", key)
    return value


def text(value: Any, kind: str, key: str, *, forbid: str = "") -> str:
    """A one-line text value (a comment, a sysctl value): no control characters, none of
    ``forbid``, VALUE_MAX characters at most."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ResourceSpecError(f"{kind}: {key} must be a string or number, got "
                                f"{type(value).__name__}", key)
    s = str(value)
    bad = [c for c in forbid if c in s]
    if _CONTROL.search(s) or bad or len(s) > VALUE_MAX:
        extra = f" or {' '.join(repr(c) for c in forbid)}" if forbid else ""
        raise ResourceSpecError(f"{kind}: {key} {shown(s)} has a control character{extra}, "
                                f"or is longer than {VALUE_MAX} characters", key)
    return s


def number_id(value: Any, kind: str, key: str) -> int | None:
    """A uid or gid: None, or an integer 0 .. 2^32-2."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise ResourceSpecError(f"{kind}: {key} must be an integer from 0 to 4294967294, "
                                f"got {shown(value)}", key)
    return value

