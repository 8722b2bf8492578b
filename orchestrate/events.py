"""The JSON-lines event log of a run: one object per line, UTF-8, flushed as it happens.

Events: run_start, play_start, batch_start, host_step_start, host_step_end, batch_end,
play_end, run_end, plus stage-specific ones emitted by steps. Every event carries ``ts``
(epoch seconds), ``run`` and ``event``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from inventory.secrets import Masker
from orchestrate.output import to_json
from runtime.private import open_private, private_dir

Listener = Callable[[dict[str, Any]], None]


class EventLog:
    """A run's event log. With ``mask``, every known secret value in an event is replaced by
    ``***`` before it is written or handed to a listener. The file is 0600 in a 0700
    directory (it holds host output and run arguments)."""

    def __init__(self, path: Path | None, run_uid: str, mask: Masker | None = None) -> None:
        self.path = path
        self.run_uid = run_uid
        self._mask = mask or Masker()
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        self._listeners: list[Listener] = []
        if path is not None:
            private_dir(path.parent)
            self._fh = open_private(path, "a")  # closed in close()
            if _torn(path):
                # A killed run's last line may be cut (SIGKILL inside a large write): end it
                # here, so the first event of a resumed run starts a line of its own.
                self._fh.write("\n")
                self._fh.flush()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: str, **fields: Any) -> None:
        record = {"ts": round(time.time(), 6), "run": self.run_uid, "event": event,
                  **self._mask.value(fields)}
        # Round-trip through to_json so Secrets and dataclasses are encoded the same way as
        # in every other JSON document metalchain prints.
        line = json.dumps(json.loads(to_json(record)), ensure_ascii=False,
                          separators=(",", ":"))
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
                self._fh.flush()
            for listener in self._listeners:
                listener(record)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _torn(path: Path) -> bool:
    """True if ``path`` is non-empty and does not end with a newline."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            if handle.tell() == 0:
                return False
            handle.seek(-1, 2)
            return handle.read(1) != b"\n"
    except OSError:
        return False


def read_events(path: Path) -> list[dict[str, Any]]:
    """All events of a log; a torn last line (a killed run) is ignored."""
    events = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return events
