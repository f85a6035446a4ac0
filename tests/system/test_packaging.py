"""The wheel holds exactly the ``nessa`` package (with services, trainer and kernels mapped in), and the CLI runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Source directory -> its place in the wheel (pyproject's package-dir mapping).
MAPPED = {
    "nessa": "nessa",
    "services": "nessa/services",
    "trainer": "nessa/trainer",
    "fpga_kernels": "nessa/fpga_kernels",
}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    # Build from a copy so the shared checkout gets no build/ or egg-info litter (pip builds in-tree).
    work = tmp_path_factory.mktemp("pkg")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in MAPPED:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = work / "dist"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    (wheel,) = out.glob("nessa-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_holds_only_nessa(wheel_names: list[str]) -> None:
    stray = [n for n in wheel_names if not (n.startswith("nessa/") or n.split("/")[0].startswith("nessa-"))]
    assert stray == []
    assert {n.split("/")[0] for n in wheel_names if not n.startswith("nessa/")} == {"nessa-0.1.0.dist-info"}


def test_wheel_maps_services_trainer_and_kernels(wheel_names: list[str]) -> None:
    names = set(wheel_names)
    for pkg in ("nessa/services/__init__.py", "nessa/trainer/__init__.py", "nessa/store/__init__.py"):
        assert pkg in names
    sources = {p.name for p in (ROOT / "fpga_kernels").glob("*.cl")}
    shipped = {Path(n).name for n in names if n.startswith("nessa/fpga_kernels/") and n.endswith(".cl")}
    assert shipped == sources  # every kernel source ships (an empty set until kernels exist)
    assert "nessa/py.typed" in names


def test_every_python_module_is_packaged(wheel_names: list[str]) -> None:
    """A module in a package missing from pyproject's ``packages`` list would be silently left out."""
    names = set(wheel_names)
    missing = []
    for source, target in MAPPED.items():
        for path in sorted((ROOT / source).rglob("*.py")):
            rel = path.relative_to(ROOT / source)
            if "__pycache__" in rel.parts:
                continue
            if f"{target}/{rel.as_posix()}" not in names:
                missing.append(f"{source}/{rel.as_posix()}")
    assert missing == [], "add their packages to [tool.setuptools] packages in pyproject.toml"


def test_entry_point_declared(wheel_names: list[str]) -> None:
    assert "nessa-0.1.0.dist-info/entry_points.txt" in wheel_names


def test_cli_help_runs() -> None:
    script = Path(sys.executable).parent / "nessa"
    commands = [[sys.executable, "-m", "nessa.cli", "--help"]]
    if script.exists():
        commands.append([str(script), "--help"])
    for cmd in commands:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        for sub in ("ingest", "verify", "info"):
            assert sub in run.stdout
