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


def test_the_wire_loads_neither_torch_nor_the_accountants() -> None:
    """Issue 28.4: decoding a message loaded torch, kymatio and the accountants through the signal maths;
    the wire (messages, protocol) and the signal registry it checks names with are plain values."""
    import subprocess
    import sys

    code = (
        "import sys; import shared.messages, shared.protocol, shared.signals; "
        "from shared.protocol import decode, encode; from shared.messages import FeatureRequest; "
        "from shared.network_spec import NetworkSpec; "
        "r = FeatureRequest('r', NetworkSpec(), (1,), (2,), 'none', 4, 'h', 5.0, 1.0, 'kip'); "
        "assert decode(encode(r)) == r; "
        "heavy = ('torch', 'opacus', 'kymatio', 'scipy', 'shared.accounting', 'shared.statistic', 'shared.networks'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_signal_kind_is_one_registered_object() -> None:
    """Issue 28.2: each kind answers for itself; an unknown name is refused naming the known ones."""
    from shared.network_spec import NetworkSpec
    from shared.run_choices import SIGNALS
    from shared.signals import get_signal_kind, signal_names

    assert SIGNALS == signal_names() == ("features", "gradients", "kip")
    spec = NetworkSpec(width=8, depth=2, image_size=16)
    assert get_signal_kind("features").released_dim(spec, 0) == 8 * 4 * 4
    assert get_signal_kind("kip").released_dim(spec, 3) == 3 * 4 // 2 + 3
    assert get_signal_kind("kip").refusal(spec, 0) is not None and get_signal_kind("features").refusal(spec, 0) is None
    with pytest.raises(ValueError, match="unknown signal kind 'moments'; known: features, gradients, kip"):
        get_signal_kind("moments")
