"""A non-editable install works: the wheel ships the profiles and the board files.

The wheel is built from a copy of the checkout's package sources (so a stale ``build/`` in the
checkout cannot leak into it), installed with ``pip install --target T`` and run with
``PYTHONPATH=T`` from an empty directory, where the source checkout is not importable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlprune_edge.checkpoint import ModelInfo, save_checkpoint
from rlprune_edge.data import FASHION_MNIST_CLASSES
from rlprune_edge.models import build_model
from rlprune_edge.profiles import shipped_profiles_dir

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "rlprune_edge"
PROFILES = PACKAGE / "profiles_data"
CLASSIFY = PACKAGE / "board" / "classify.py"


def test_shipped_profiles_are_package_data_and_the_top_level_files_link_to_them():
    assert shipped_profiles_dir() == PROFILES.resolve()
    shipped = sorted(p.name for p in PROFILES.glob("*.toml"))
    assert len(shipped) >= 9
    assert sorted(p.name for p in (REPO / "profiles").glob("*.toml")) == shipped
    for name in shipped:
        link = REPO / "profiles" / name
        assert link.is_symlink() and link.resolve() == (PROFILES / name).resolve(), link
    link = REPO / "devices" / "classify.py"
    assert link.is_symlink() and link.resolve() == CLASSIFY.resolve()


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(target dir T, an environment with PYTHONPATH=T, an empty working directory)."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "rlprune_edge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RLPRUNE_EDGE_PROFILES_DIR")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "wheels"), str(src)],
         cwd=root, env=env)
    wheels = sorted((root / "wheels").glob("rlprune_edge-*.whl"))
    assert len(wheels) == 1, wheels
    target = root / "target"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheels[0])], cwd=root, env=env)
    work = root / "work"
    work.mkdir()
    # Other PYTHONPATH entries stay (a GPU machine puts torch-pruning and onnxslim there); the
    # checkout itself must not be importable.
    others = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep)
              if e and Path(e).resolve() != REPO.resolve()]
    env.update(PYTHONPATH=os.pathsep.join([str(target), *others]), RLPRUNE_EDGE_CACHE=str(root / "cache"))
    return target, env, work


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    target, env, work = installed
    res = _run([sys.executable, "-c", "import rlprune_edge; print(rlprune_edge.__file__)"], cwd=work, env=env)
    where = Path(res.stdout.strip()).resolve()
    assert where.is_relative_to(target.resolve()), where


def test_installed_profiles_list_shows_every_shipped_profile(installed):
    target, env, work = installed
    shipped = sorted(p.stem for p in (target / "rlprune_edge" / "profiles_data").glob("*.toml"))
    assert len(shipped) >= 9 and shipped == sorted(p.stem for p in PROFILES.glob("*.toml"))
    res = _run([sys.executable, "-m", "rlprune_edge", "profiles", "list"], cwd=work, env=env)
    listed = [line.split()[0] for line in res.stdout.splitlines() if line and not line.startswith("(")]
    assert sorted(listed) == shipped, res.stdout


def test_installed_export_writes_a_bundle_with_the_board_script(installed, tmp_path):
    target, env, work = installed
    torch.manual_seed(0)
    ckpt = tmp_path / "vgg11.pt"
    info = ModelInfo("vgg11", 0.125, 10, (3, 32, 32), (0.219,) * 3, (0.3318,) * 3, list(FASHION_MNIST_CLASSES),
                     meta={"data": "fashion-mnist"})
    save_checkpoint(ckpt, build_model("vgg11", 0.125, 10), info)
    out = tmp_path / "bundle"
    _run([sys.executable, "-m", "rlprune_edge", "export", str(ckpt), "--profile", "host-cpu", "--out", str(out),
          "--no-measure", "--verify-images", "100", "--test-limit", "100"], cwd=work, env=env)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"] == "host-cpu" and "classify.py" in manifest["files"]
    assert (out / "classify.py").read_bytes() == CLASSIFY.read_bytes()
    assert (target / "rlprune_edge" / "board" / "classify.py").is_file()


# modules of the standard library newer than some Python 3 releases: (module, first version with it)
_NEW_STDLIB = {"tomllib": (3, 11), "graphlib": (3, 9), "zoneinfo": (3, 9)}


def test_requires_python_is_true_for_the_code():
    """pyproject's requires-python is no lower than what the package's syntax and imports need."""
    import ast
    import re
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    m = re.fullmatch(r">=\s*3\.(\d+)", meta["project"]["requires-python"].strip())
    assert m, "requires-python should be a plain lower bound such as >=3.11"
    floor = (3, int(m.group(1)))
    assert meta["tool"]["ruff"]["target-version"] == f"py3{floor[1]}", "ruff's target-version must match"
    for path in sorted((REPO / "rlprune_edge").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=floor)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                need = _NEW_STDLIB.get(name.split(".")[0])
                assert need is None or need <= floor, f"{path.name} imports {name} (Python {need}) but requires-python is {floor}"
