"""file, directory and line: content, mode and ownership of paths."""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from configure.resources.base import (
    Action,
    Decision,
    Probe,
    Resource,
    ResourceSpecError,
    cmd,
    flag,
    mode_string,
    q,
)
from configure.resources.names import abs_path, account

MAX_DIFF_BYTES = 256 * 1024


def _stat_probe(path: str) -> str:
    # One line: "absent", or "TYPE|MODE|OWNER|GROUP" (TYPE from stat's %F, e.g. regular file).
    return (f"if [ -e {q(path)} ] || [ -L {q(path)} ]; then "
            f"stat -c '%F|%a|%U|%G' -- {q(path)}; else echo absent; fi")


def _parse_stat(line: str) -> dict[str, str] | None:
    line = line.strip()
    if not line or line == "absent":
        return None
    parts = line.split("|")
    if len(parts) != 4:
        return None
    return {"type": parts[0], "mode": parts[1], "owner": parts[2], "group": parts[3]}


def _ownership_actions(path: str, have: Mapping[str, str] | None, mode: str | None,
                       owner: str | None, group: str | None) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    changes: list[str] = []
    if mode is not None and (have is None or have["mode"] != mode):
        lines.append(cmd("chmod", "--", mode, path))
        changes.append(f"mode {have['mode'] if have else '-'} -> {mode}")
    owner_differs = owner is not None and (have is None or have["owner"] != owner)
    group_differs = group is not None and (have is None or have["group"] != group)
    if owner_differs or group_differs:
        spec = f"{owner or ''}:{group or ''}".rstrip(":")
        lines.append(cmd("chown", "--", spec, path))
        changes.append(f"owner {have['owner'] if have else '-'}:{have['group'] if have else '-'}"
                       f" -> {owner or '(same)'}:{group or '(same)'}")
    return lines, changes


def write_file_script(path: str, content: bytes, mode: str | None, owner: str | None,
                      group: str | None, exists: bool) -> str:
    """Write atomically: a temp file in the same directory, then rename over the target."""
    b64 = base64.b64encode(content).decode()
    lines = [
        f"mc_tmp=$(mktemp -- {q(path + '.mc-XXXXXX')})",
        f"printf '%s' {q(b64)} | base64 -d > \"$mc_tmp\"",
    ]
    if exists:
        lines.append(f"chmod --reference={q(path)} -- \"$mc_tmp\"")
        lines.append(f"chown --reference={q(path)} -- \"$mc_tmp\"")
    else:
        lines.append("chmod -- 644 \"$mc_tmp\"")
    if mode is not None:
        lines.append(f"chmod -- {q(mode)} \"$mc_tmp\"")
    if owner is not None or group is not None:
        ownership = f"{owner or ''}:{group or ''}".rstrip(":")
        lines.append(f"chown -- {q(ownership)} \"$mc_tmp\"")
    lines.append(f"mv -f -- \"$mc_tmp\" {q(path)}")
    return "\n".join(lines)


def unified_diff(old: bytes | None, new: bytes | None, path: str) -> str:
    if (old is not None and len(old) > MAX_DIFF_BYTES) or \
            (new is not None and len(new) > MAX_DIFF_BYTES):
        return f"(content of {path} differs; too large to diff)\n"
    try:
        a = (old or b"").decode("utf-8").splitlines(keepends=True)
        b = (new or b"").decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"(binary content of {path} differs)\n"
    return "".join(difflib.unified_diff(a, b, f"{path} (host)" if old is not None else
                                        "/dev/null", f"{path} (wanted)" if new is not None
                                        else "/dev/null"))


def _host_base64(text: str, path: str) -> bytes:
    """A file's content as the host sent it (``base64 -w0``); what is not base64 is the
    host's fault, reported as such (the item fails, the run goes on)."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ResourceSpecError(f"the host's answer for {path} is not valid base64 "
                                "(its probe output is malformed)") from None


def _check_path(spec: Mapping[str, Any], kind: str) -> str:
    return abs_path(Resource.require(spec, "path", kind), kind)


def _owner_group(spec: Mapping[str, Any], kind: str) -> tuple[str | None, str | None]:
    owner, group = spec.get("owner"), spec.get("group")
    return (None if owner is None else account(owner, kind, "owner"),
            None if group is None else account(group, kind, "group"))


class File(Resource):
    """A file with exact content (``content``; roles turn ``source``/``template`` into it).

    ``diff: false`` for a file that holds a credential: neither its content on the host
    (which may be an old credential no masker knows) nor the wanted one is read or shown."""

    kind = "file"
    KEYS = ("path", "content", "content_base64", "mode", "owner", "group", "state", "diff")
    STATES = ("present", "absent")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.path = _check_path(spec, self.kind)
        if "content_base64" in spec:
            if "content" in spec:
                raise ResourceSpecError("file: give content or content_base64, not both")
            try:
                spec = {**spec, "content": base64.b64decode(str(spec["content_base64"]),
                                                            validate=True)}
            except ValueError:
                raise ResourceSpecError("file: content_base64 is not valid base64") from None
        content = spec.get("content")
        if self.state == "present":
            if content is None:
                raise ResourceSpecError("file: 'content' (or source/template) is required")
            if not isinstance(content, (str, bytes)):
                raise ResourceSpecError("file: content must be text")
        self.content = content.encode("utf-8") if isinstance(content, str) else content
        self.mode = mode_string(spec.get("mode"), self.kind)
        self.owner, self.group = _owner_group(spec, self.kind)
        self.sha = hashlib.sha256(self.content or b"").hexdigest()
        self.show_diff = spec.get("diff", True)
        if not isinstance(self.show_diff, bool):
            raise ResourceSpecError("file: diff must be true or false")
        self.identity = f"file:{self.path}"

    def probes(self) -> list[Probe]:
        p = q(self.path)
        # The content comes back only when it differs (for the diff), and only if small.
        script = (f"{_stat_probe(self.path)}\n"
                  f"if [ -f {p} ]; then s=$(sha256sum < {p}); s=${{s%% *}}; echo \"$s\"; "
                  f"if [ \"$s\" != {q(self.sha)} ] && [ $(stat -c %s -- {p}) -le "
                  f"{MAX_DIFF_BYTES if self.show_diff else -1} ]; then base64 -w0 < {p}; "
                  f"echo; fi; fi")
        return [Probe(self.identity, script)]

    def decide(self, found: Mapping[str, str]) -> Decision:
        lines = found.get(self.identity, "").splitlines()
        have = _parse_stat(lines[0] if lines else "")
        if self.state == "absent":
            if have is None:
                return Decision()
            return Decision([Action(f"remove {self.path}", cmd("rm", "-f", "--", self.path))],
                            [f"remove {self.path}"], unified_diff(None, None, self.path))
        if have is not None and have["type"] not in ("regular file", "regular empty file"):
            raise ResourceSpecError(f"file: {self.path} exists and is a {have['type']}")
        sha = lines[1].strip() if len(lines) > 1 else ""
        old = _host_base64(lines[2].strip(), self.path) if len(lines) > 2 and lines[2].strip() \
            else None
        if have is None or sha != self.sha:
            action = Action(f"write {self.path}", write_file_script(
                self.path, self.content or b"", self.mode, self.owner, self.group,
                exists=have is not None))
            what = "create" if have is None else "content"
            diff = unified_diff(old if have is not None else None, self.content, self.path) \
                if self.show_diff else f"(content of {self.path} not shown: diff is false)\n"
            return Decision([action], [f"{what} {self.path}"], diff)
        own, changes = _ownership_actions(self.path, have, self.mode, self.owner, self.group)
        if not own:
            return Decision()
        return Decision([Action(f"fix mode/owner of {self.path}", "\n".join(own))],
                        [f"{self.path}: {c}" for c in changes])


class Directory(Resource):
    kind = "directory"
    KEYS = ("path", "mode", "owner", "group", "state")
    STATES = ("present", "absent")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.path = _check_path(spec, self.kind)
        self.mode = mode_string(spec.get("mode"), self.kind)
        self.owner, self.group = _owner_group(spec, self.kind)
        self.identity = f"directory:{self.path}"

    def probes(self) -> list[Probe]:
        return [Probe(self.identity, _stat_probe(self.path))]

    def decide(self, found: Mapping[str, str]) -> Decision:
        have = _parse_stat(found.get(self.identity, ""))
        if self.state == "absent":
            if have is None:
                return Decision()
            return Decision([Action(f"remove {self.path}", cmd("rm", "-rf", "--", self.path))],
                            [f"remove directory {self.path}"])
        if have is not None and have["type"] != "directory":
            raise ResourceSpecError(f"directory: {self.path} exists and is a {have['type']}")
        lines: list[str] = []
        changes: list[str] = []
        if have is None:
            lines.append(cmd("mkdir", "-p", "--", self.path))
            changes.append(f"create directory {self.path}")
        own, own_changes = _ownership_actions(self.path, have, self.mode, self.owner,
                                              self.group)
        lines += own
        changes += [f"{self.path}: {c}" for c in own_changes] if have is not None else []
        if not lines:
            return Decision()
        return Decision([Action(f"directory {self.path}", "\n".join(lines))], changes)


class Line(Resource):
    """A line in a file: present (replacing the line that matches ``regexp``) or absent."""

    kind = "line"
    KEYS = ("path", "line", "regexp", "state", "create")
    STATES = ("present", "absent")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self.path = _check_path(spec, self.kind)
        self.line = spec.get("line")
        if self.state == "present" and not isinstance(self.line, str):
            raise ResourceSpecError("line: 'line' (a string) is required")
        if isinstance(self.line, str) and "\n" in self.line:
            raise ResourceSpecError("line: 'line' must be a single line")
        regexp = spec.get("regexp")
        try:
            self.regexp = re.compile(regexp) if regexp else None
        except re.error as exc:
            raise ResourceSpecError(f"line: bad regexp {regexp!r}: {exc}") from None
        if self.state == "absent" and self.line is None and self.regexp is None:
            raise ResourceSpecError("line: absent needs 'line' or 'regexp'")
        self.create = flag(spec, "create", self.kind, False)
        self.identity = f"line:{self.path}:{self.regexp.pattern if self.regexp else self.line}"

    def probes(self) -> list[Probe]:
        p = q(self.path)
        return [Probe(self.identity, f"if [ -f {p} ]; then base64 -w0 < {p}; echo; "
                                     f"else echo absent; fi")]

    def _matches(self, text: str) -> bool:
        return bool(self.regexp.search(text)) if self.regexp else text == self.line

    def wanted(self, old: str) -> str:
        lines = old.splitlines()
        if self.state == "absent":
            kept = [ln for ln in lines if not self._matches(ln) and ln != self.line]
        else:
            kept = list(lines)
            hits = [i for i, ln in enumerate(kept) if self._matches(ln)]
            if hits:
                kept[hits[-1]] = self.line or ""
                for i in reversed(hits[:-1]):
                    if kept[i] != self.line:
                        del kept[i]
            elif self.line not in kept:
                kept.append(self.line or "")
        return "\n".join(kept) + ("\n" if kept else "")

    def leaves(self, found: Mapping[str, str]) -> str:
        """What this resource's probe would print after its action: the next line resource
        on the same file (see :func:`configure.engine.converge`) decides from this, since
        every probe ran before any action."""
        raw = found.get(self.identity, "").strip()
        if raw == "absent" and self.state == "absent":
            return raw
        text = (_host_base64(raw, self.path) if raw and raw != "absent" else b"").decode(
            "utf-8", "replace")
        return base64.b64encode(self.wanted(text).encode("utf-8")).decode("ascii")

    def decide(self, found: Mapping[str, str]) -> Decision:
        raw = found.get(self.identity, "").strip()
        if raw == "absent":
            if self.state == "absent":
                return Decision()
            if not self.create:
                raise ResourceSpecError(f"line: {self.path} does not exist (create: true to "
                                        "create it)")
            old = b""
            exists = False
        else:
            old = _host_base64(raw, self.path) if raw else b""
            exists = True
        text = old.decode("utf-8", "replace")
        new = self.wanted(text)
        if new == text or (not text and self.state == "absent"):
            return Decision()
        guard = ""
        if exists:
            # Refuse to write if the file changed between probe and act.
            guard = (f"echo {q(hashlib.sha256(old).hexdigest() + '  ' + self.path)} | "
                     "sha256sum -c --status || { echo "
                     f"{q(self.path + ' changed since it was probed')} >&2; exit 1; }}\n")
        action = Action(f"edit {self.path}", guard + write_file_script(
            self.path, new.encode("utf-8"), None, None, None, exists=exists))
        return Decision([action], [f"{'set' if self.state == 'present' else 'remove'} line "
                                   f"in {self.path}"],
                        unified_diff(old if exists else None, new.encode("utf-8"), self.path))
