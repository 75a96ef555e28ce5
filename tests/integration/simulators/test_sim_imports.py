"""Import structure of the simulators package: no cycles, no dependency on the connector."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import simulators

PACKAGE = Path(simulators.__file__).resolve().parent  # wherever this test file lives


def imported_modules(path: Path) -> set[str]:
    """Modules a file imports (relative ones as ``.name``), at any level of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.add(module)
            if node.level and not node.module:
                found.update("." + alias.name for alias in node.names)
    return found


def test_hull_never_imports_seed_but_seed_imports_hull():
    assert not {m for m in imported_modules(PACKAGE / "hull.py") if m.endswith("seed")}
    assert ".hull" in imported_modules(PACKAGE / "seed.py")


def test_no_simulator_module_imports_the_connector():
    for path in PACKAGE.glob("*.py"):
        roots = {m.split(".")[0] for m in imported_modules(path) if not m.startswith(".")}
        assert not roots & {"cio_sync", "flows", "tasks", "connectors"}, path.name


def test_seed_route_is_there_whichever_module_is_imported_first():
    code = (
        "from simulators.hull import HullSimulator\n"
        "import requests\n"
        "with HullSimulator() as sim:\n"
        "    r = requests.post(sim.url + '/_sim/seed', json={'n_users': 3})\n"
        "    print(r.status_code, r.json()['users'], len(sim.users))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["200", "3", "3"], out.stderr
