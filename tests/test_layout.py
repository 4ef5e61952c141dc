"""The architecture's import rules: the two nodes meet only through the protocol in ``shared/``.

``distiller_node`` never imports ``owner_node`` (nor the reverse), ``shared`` imports neither, none of
the three imports the launchers (``deploy``) or the benchmarks, and ``deploy`` does not import the
benchmarks (they run the system, so they sit above it: ``dpdistill-bench`` is their own entry point).
Within a package no two modules import each other, directly or around a longer loop (issue 28.5:
``shared/datasets.py`` and ``shared/images/``, ``images/decode.py`` and ``images/dicom.py`` did).
Inside ``shared/`` the parts are layered: ``wire/`` (messages, protocol, gRPC) imports no other part,
``compute/`` (networks, subspaces, the signal kinds and their statistic) only the wire's value types,
``images/`` (readers and their types) neither. Every import counts, including those inside functions.
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
    "deploy": {"benchmarks"},
}
ACYCLIC = ("shared", "owner_node", "distiller_node", "deploy", "benchmarks")


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


def module_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Each module of ``package`` (under ``root``) and the modules of that package it imports, anywhere in
    its body. ``from a.b import c`` points at ``a.b.c`` when that is a module, else at ``a.b``; importing a
    module is not counted as importing its parent packages' ``__init__``. Imports under ``if TYPE_CHECKING:``
    never run (they name a type for an annotation) and are left out."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for stmt in node.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):  # ``import a.b.c`` runs a.b.c, which may be a package
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's own package, one level up per extra dot
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None if there is none."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_module_imports_itself_around_a_loop(package: str) -> None:
    graph = module_graph(ROOT, package)
    assert graph, f"no modules found in {package}/"
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle in {package}/: {' -> '.join(cycle)}"


def test_the_images_layer_sits_below_datasets() -> None:
    """shared/images/ holds ImageSet, DataNotFound and every reader; shared/datasets.py uses them, never the reverse."""
    graph = module_graph(ROOT, "shared")
    images = {m for m in graph if m == "shared.images" or m.startswith("shared.images.")}
    assert not [m for m in images if "shared.datasets" in graph[m]]
    assert "shared.images.image_set" in graph["shared.datasets"]
    assert not {"shared.images.decode"} & (graph["shared.images.dicom"] | graph["shared.images.nifti"])


def shared_part(module: str) -> str:
    """Which part of shared/ a module belongs to: wire, compute, images, or the top level (accounting, ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("wire", "compute", "images") else "top"


# What each part of shared/ may import from the others (issue 28.5): the wire at the bottom imports
# none; the statistic's computation only the wire's value types; image loading neither.
SHARED_PARTS_MAY_IMPORT = {"wire": set(), "compute": {"wire"}, "images": {"top"}}


@pytest.mark.parametrize("part", sorted(SHARED_PARTS_MAY_IMPORT))
def test_the_parts_of_shared_are_layered(part: str) -> None:
    graph = module_graph(ROOT, "shared")
    allowed = SHARED_PARTS_MAY_IMPORT[part] | {part}
    members = [m for m in graph if shared_part(m) == part]
    assert members, f"no modules in shared/{part}/"
    broken = {m: sorted(t for t in graph[m] if shared_part(t) not in allowed) for m in members}
    broken = {m: ts for m, ts in broken.items() if ts}
    assert not broken, f"shared/{part}/ may import only {sorted(allowed)}: {broken}"


def test_the_cycle_checker_finds_a_loop_through_a_function_and_a_relative_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("def f():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.a import thing\nimport os\nif TYPE_CHECKING:\n    from pkg.sub.c import T\n")
    graph = module_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.c"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import os\n")  # the loop broken: d -> a -> b -> c, and c imports none
    assert find_cycle(module_graph(tmp_path, "pkg")) is None


HEAVY = ("torch", "opacus", "torchvision", "kymatio")


def modules_loaded_by(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has imported after running ``code`` from the repo root."""
    import subprocess
    import sys

    script = f"import sys\n{code}\nprint([m for m in {watched!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip())


@pytest.mark.parametrize("cli", ["deploy.cli", "benchmarks.cli"])
def test_the_command_lines_answer_help_without_torch_or_opacus(cli: str) -> None:
    """Issue 28.4: `dpdistill --help` imported everything (11.6 s of CPU, 880 MB); heavy modules are
    imported only where a command runs. ``dpdistill-bench --help`` (benchmarks.cli) is as light."""
    assert modules_loaded_by(f"from {cli} import build_parser; build_parser()", HEAVY) == []


def test_a_measuring_command_asked_of_dpdistill_points_to_dpdistill_bench(capsys) -> None:
    """``dpdistill speed`` answered "invalid choice" after the measuring commands moved; it now names
    where they are. deploy cannot import benchmarks, so its list is checked against the real parser."""
    import argparse

    from benchmarks.cli import build_parser as bench_parser
    from deploy.cli import build_parser, is_measuring, main

    def commands(parser: argparse.ArgumentParser) -> list[str]:
        return list(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)

    assert commands(bench_parser()) and all(is_measuring(name) for name in commands(bench_parser()))
    assert not any(is_measuring(name) for name in commands(build_parser()))
    for name in ("speed", "bench-frontier", "audit"):
        assert main([name, "--out", "x"]) == 2
        assert f"run: dpdistill-bench {name}" in capsys.readouterr().err


def test_the_wire_loads_neither_torch_nor_the_accountants() -> None:
    """Issue 28.4: decoding a message loaded torch, kymatio and the accountants through the signal maths;
    the wire (messages, protocol) and the signal registry it checks names with are plain values."""
    code = (
        "import shared.wire.messages, shared.wire.protocol, shared.compute.signals\n"
        "from shared.wire.protocol import decode, encode\nfrom shared.wire.messages import FeatureRequest\n"
        "from shared.wire.network_spec import NetworkSpec\n"
        "r = FeatureRequest('r', NetworkSpec(), (1,), (2,), 'none', 4, 'h', 5.0, 1.0, 'kip')\n"
        "assert decode(encode(r)) == r"
    )
    watched = (*HEAVY, "scipy", "shared.accounting", "shared.compute.statistic", "shared.compute.networks")
    assert modules_loaded_by(code, watched) == []


def test_a_signal_kind_is_one_registered_object() -> None:
    """Issue 28.2: each kind answers for itself; an unknown name is refused naming the known ones."""
    from shared.compute.signals import get_signal_kind, signal_names
    from shared.run_choices import SIGNALS
    from shared.wire.network_spec import NetworkSpec

    assert SIGNALS == signal_names() == ("features", "gradients", "kip")
    spec = NetworkSpec(width=8, depth=2, image_size=16)
    assert get_signal_kind("features").released_dim(spec, 0) == 8 * 4 * 4
    assert get_signal_kind("kip").released_dim(spec, 3) == 3 * 4 // 2 + 3
    assert get_signal_kind("kip").refusal(spec, 0) is not None and get_signal_kind("features").refusal(spec, 0) is None
    with pytest.raises(ValueError, match="unknown signal kind 'moments'; known: features, gradients, kip"):
        get_signal_kind("moments")
