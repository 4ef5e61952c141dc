"""A wheel built from the repository installs whole: every module, the generated protobuf files and the
data files the package uses (issue 27). A plain package list once left out every subpackage
(``shared.wire.rpc``, ``shared.images``, ``deploy.flower_app``...), which only a real install shows: run
from a checkout, the source tree hides what the wheel lacks. So this builds the sdist and the wheel
from it (as ``uv build`` does), installs the wheel with the locked dependencies into an empty virtual
environment, and imports every module there with the checkout off the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("owner_node", "distiller_node", "shared", "deploy", "benchmarks")
# Non-Python files the installed package reads (see [tool.setuptools.package-data]).
DATA_FILES = (
    "shared/wire/rpc/owner.proto",
    "deploy/owner.example.toml",
    "deploy/flower_app/pyproject.toml",
    *(f"deploy/roles/{p.name}" for p in sorted((ROOT / "deploy" / "roles").glob("*.sh"))),
)


def uv_binary() -> str:
    """uv as deploy/setup_env.sh finds it: on PATH, else the repository's .tools (UV overrides both)."""
    found = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.skip("uv not found (deploy/setup_env.sh installs it into .tools/)")
    return found


def repository_modules() -> list[str]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def build_wheel(uv: str, out: Path) -> Path:
    # sdist first, then the wheel from the sdist: what a user gets from either is whole.
    subprocess.run([uv, "build", "--quiet", "--out-dir", str(out), str(ROOT)], check=True, timeout=300)
    (wheel,) = out.glob("dpdistill-*.whl")
    return wheel


def test_package_discovery_finds_every_module_and_data_file(tmp_path: Path) -> None:
    wheel = build_wheel(uv_binary(), tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected_py = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert sorted(expected_py - names) == []
    assert sorted(set(DATA_FILES) - names) == []
    assert {"shared/wire/rpc/owner_pb2.py", "shared/wire/rpc/owner_pb2_grpc.py"} <= names
    # Repository tools and tests do not ship.
    assert not [n for n in names if n.startswith(("tests/", "deploy/containers/")) or n.endswith("setup_env.sh")]


@pytest.mark.slow
def test_wheel_installs_whole_into_an_empty_environment(tmp_path: Path) -> None:
    uv = uv_binary()
    wheel = build_wheel(uv, tmp_path / "dist")
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    locked = tmp_path / "locked.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = {"check": True, "env": env, "cwd": tmp_path, "timeout": 900}
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], **run)
    # The dependencies at their locked versions (from uv's cache when it has them).
    subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--quiet", "-o", str(locked)],
        **{**run, "cwd": ROOT},
    )
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), "-r", str(locked), str(wheel)], **run)
    modules = repository_modules()
    # -I: isolated, so neither the checkout nor PYTHONPATH can stand in for what the wheel lacks.
    check = (
        "import importlib, pathlib, sys\n"
        "site = pathlib.Path(sys.argv[1]).resolve()\n"
        "outside = []\n"
        "for name in sys.argv[2:]:\n"
        "    module = importlib.import_module(name)\n"
        "    if site not in pathlib.Path(module.__file__).resolve().parents:\n"
        "        outside.append(name)\n"
        "assert not outside, outside\n"
        "import deploy\n"
        "root = pathlib.Path(deploy.__file__).parent.parent\n"
        f"missing = [f for f in {list(DATA_FILES)!r} if not (root / f).is_file()]\n"
        "assert not missing, missing\n"
        "print(len(sys.argv) - 2)\n"
    )
    site = subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        **run,
    ).stdout.strip()
    done = subprocess.run([str(python), "-I", "-c", check, site, *modules], capture_output=True, text=True, **run)
    assert done.stdout.strip() == str(len(modules))
    helped = subprocess.run([str(venv / "bin" / "dpdistill"), "--help"], capture_output=True, text=True, **run)
    assert "owner-serve" in helped.stdout
    measured = subprocess.run([str(venv / "bin" / "dpdistill-bench"), "--help"], capture_output=True, text=True, **run)
    assert "bench-frontier" in measured.stdout


def test_the_cli_imports_no_torchvision() -> None:
    """``dpdistill`` (and so ``owner-serve``) must start beside a CPU-only torch, where the PyPI torchvision
    does not load: torchvision is imported only inside the functions that use it (distiller export)."""
    script = (
        "import sys; from deploy import cli; cli.build_parser(); import owner_node.grpc_server;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'matplotlib'}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
