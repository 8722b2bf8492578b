"""The package layering, read from the source with ``ast`` (every import, also inside functions).

    runtime      imports no metalchain package (the shared mechanisms: the bottom layer)
    inventory    imports runtime only
    provision, configure, monitor (the stages)
                 import inventory and runtime only: never each other, orchestrate or lab
    orchestrate  imports anything but lab; the lab CLI (orchestrate/commands/lab_cmd.py) is the
                 one module that may import lab
    lab          imports anything but orchestrate (orchestrate's lab CLI imports lab)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "inventory", "provision", "configure", "monitor", "orchestrate", "lab")
STAGES = ("provision", "configure", "monitor")

ALLOWED: dict[str, frozenset[str]] = {
    "runtime": frozenset(),
    "inventory": frozenset({"runtime"}),
    **{stage: frozenset({"inventory", "runtime"}) for stage in STAGES},
    "orchestrate": frozenset({"runtime", "inventory", *STAGES}),
    "lab": frozenset({"runtime", "inventory", *STAGES}),
}
# Module (path relative to the root) -> packages it may import beyond its package's rule.
EXCEPTIONS: dict[str, frozenset[str]] = {
    "orchestrate/commands/lab_cmd.py": frozenset({"lab"}),
}


def imported_packages(source: str, filename: str) -> set[tuple[str, int]]:
    """The top-level metalchain packages ``source`` imports, with the line of each import."""
    found = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue  # relative imports stay inside their own package
        for name in names:
            top = name.split(".", 1)[0]
            if top in PACKAGES:
                found.add((top, node.lineno))
    return found


def violations(root: Path) -> list[str]:
    """``file:line: package imports other`` for every import the layering forbids."""
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            allowed = ALLOWED[package] | {package} | EXCEPTIONS.get(rel, frozenset())
            for other, line in sorted(imported_packages(path.read_text("utf-8"), rel)):
                if other not in allowed:
                    out.append(f"{rel}:{line}: {package} imports {other}")
    return out


def test_the_tree_keeps_its_layers() -> None:
    assert violations(ROOT) == []


def test_every_package_is_checked() -> None:
    assert all((ROOT / p / "__init__.py").is_file() for p in PACKAGES)


# What a file would hold -> the violation it must be reported as.
FORBIDDEN = {
    ("monitor/alerts.py", "import orchestrate"): "monitor imports orchestrate",
    ("monitor/alerts.py", "def f():\n    from orchestrate.runner import Runner"):
        "monitor imports orchestrate",
    ("provision/x.py", "from configure.ssh import connect"): "provision imports configure",
    ("configure/x.py", "import lab.fleet"): "configure imports lab",
    ("inventory/x.py", "from provision import bmc"): "inventory imports provision",
    ("runtime/x.py", "from inventory.errors import LabError"): "runtime imports inventory",
    ("orchestrate/runner.py", "from lab.lab import Lab"): "orchestrate imports lab",
    ("lab/x.py", "import orchestrate.cli"): "lab imports orchestrate",
}
ALLOWED_CASES = [
    "orchestrate/commands/lab_cmd.py: from lab.lab import Lab",
    "orchestrate/cli.py: from monitor import rules",
    "provision/x.py: from runtime.process import run",
    "inventory/x.py: from runtime.atomicfile import write_atomic",
    "configure/x.py: from . import ssh",
    "lab/x.py: from provision.bmc import ping",
]


def _tree(root: Path, path: str, source: str) -> Path:
    for package in PACKAGES:
        (root / package).mkdir()
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(source + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize(("case", "expected"), FORBIDDEN.items())
def test_a_forbidden_import_is_reported(tmp_path: Path, case: tuple[str, str],
                                        expected: str) -> None:
    root = _tree(tmp_path, *case)
    assert [v.split(": ", 1)[1] for v in violations(root)] == [expected]


@pytest.mark.parametrize("case", ALLOWED_CASES)
def test_an_allowed_import_passes(tmp_path: Path, case: str) -> None:
    assert violations(_tree(tmp_path, *case.split(": ", 1))) == []
