"""The architecture's import rules: the two nodes meet only through the protocol in ``shared/``.

``distiller_node`` never imports ``owner_node`` (nor the reverse), ``shared`` imports neither, and
none of the three imports the launchers (``deploy``) or the benchmarks. Every import counts,
including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {"deploy", "benchmarks"}
FORBIDDEN = {
    "owner_node": {"distiller_node"} | LAUNCHERS,
    "distiller_node": {"owner_node"} | LAUNCHERS,
    "shared": {"owner_node", "distiller_node"} | LAUNCHERS,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules_hold(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    broken = {
        str(f.relative_to(ROOT)): sorted(bad) for f in files if (bad := imported_packages(f) & FORBIDDEN[package])
    }
    assert not broken, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {broken}"


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from owner_node.data import PrivateData\n    import deploy.cli\n")
    assert imported_packages(module) == {"owner_node", "deploy"}


def test_the_command_line_answers_help_without_torch_or_opacus() -> None:
    """Issue 28.4: `dpdistill --help` imported everything (11.6 s of CPU, 880 MB); heavy modules are
    imported only where a command runs."""
    import subprocess
    import sys

    code = (
        "import sys; from deploy.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'opacus', 'torchvision', 'kymatio') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
