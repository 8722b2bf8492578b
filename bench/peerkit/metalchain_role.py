"""A workload as a metalchain role: ``{relative path: text}`` for SITE/playbooks/roles/NAME/."""

from __future__ import annotations

from typing import Any

import yaml

from .workload import Workload


def role_files(w: Workload) -> dict[str, str]:
    """recipe.yml, handlers.yml, defaults.yml, meta.yml and templates/* of the role."""
    recipe: list[dict[str, Any]] = []
    for d in w.directories:
        recipe.append({"directory": {"path": d, "mode": "0755", "owner": "root",
                                     "group": "root"}})
    if w.packages:
        recipe.append({"package": {"name": list(w.packages)}})
    for t in w.templates:
        entry: dict[str, Any] = {"template": {"path": t.path, "source": t.name, "mode": t.mode,
                                              "owner": "root", "group": "root"}}
        if t.notify:
            entry["notify"] = t.notify
        recipe.append(entry)
    for f in w.all_files():
        recipe.append({"file": {"path": f.path, "content": f.content, "mode": f.mode,
                                "owner": "root", "group": "root"}})
    for key, value in w.sysctls:
        # persisted by the file above, in the form all three tools write
        recipe.append({"sysctl": {"name": key, "value": value, "persist": False}})
    for ln in w.lines:
        recipe.append({"line": {"path": ln.path, "line": ln.line, "create": True}})
    for u in w.users:
        recipe.append({"user": {"name": u}})
    handlers: dict[str, Any] = {}
    for s in w.services:
        recipe.append({"service": {"name": s.name, "enabled": True, "state": "started"}})
        if s.handler:
            handlers[s.handler] = {"service": {"name": s.name, "state": "restarted"}}
    out = {
        "recipe.yml": yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True),
        "meta.yml": yaml.safe_dump({"description": f"peer benchmark {w.name}: "
                                                   f"{w.description} (bench/peers.py)"}),
        "defaults.yml": yaml.safe_dump(dict(w.vars), sort_keys=True) if w.vars else "{}\n",
    }
    if handlers:
        out["handlers.yml"] = yaml.safe_dump(handlers, sort_keys=False)
    for t in w.templates:
        out[f"templates/{t.name}"] = t.text
    return out
