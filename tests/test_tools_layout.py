"""tools/ holds what users and CI run; one-off studies live in benchmarks/studies/ (issue 47).

Both are packages run from the repository root (``python -m tools.bench_search``,
``python -m benchmarks.studies.study_plans``); a tool imports another as ``tools.NAME``, never by
editing the import path.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
STUDIES = ROOT / "benchmarks" / "studies"

# What users and CI run (set-up, the GPU check, the robustness table) and the benchmark drivers whose
# figures BENCHMARKS.md and docs/ record. A new entry needs a reason of that kind.
KEPT = {
    "__init__.py",
    "setup.sh",  # make setup / demo / test
    "gpu_check.sh",  # the GPU checks (docs/latency.md)
    "robustness_table.py",  # docs/robustness.md (tests/test_robustness_doc.py)
    "bench_search.py",  # BENCHMARKS.md: plan search vs uniform pruning
    "gain_ci.py",  # BENCHMARKS.md: how sure the gains are
    "remeasure_finals.py",  # BENCHMARKS.md: finals re-measured together
    "bench_ceiling.py",  # docs/compress.md: the dense fine-tune ceiling
    "bench_compress.py",  # docs/compress.md: compress scenarios
    "bench_int8.py",  # docs/export.md: INT8 vs fp32
    "bench_latency_model.py",  # docs/latency.md: latency-model error
    "bench_per_layer.py",  # docs/latency.md, run by gpu_check.sh
    "bench_prune_speed.py",  # docs/pruning.md
    "bench_byo.py",  # BENCHMARKS.md: bring your own model (architectures the zoo does not have)
    "make_imagefolder.py",  # BENCHMARKS.md: the 224x224 journey's image folder (from Fashion-MNIST)
    "benchmark/__init__.py",  # BENCHMARKS.md: the reward / Pareto benchmark (python -m tools.benchmark)
    "benchmark/__main__.py",
    "benchmark/cells.py",
    "benchmark/cli.py",
    "benchmark/plan.py",
    "benchmark/plots.py",
    "benchmark/render.py",
    "benchmark/store.py",
}


def _files(root: Path) -> list[Path]:
    """Every file under `root` but Python's byte-code caches."""
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _modules(root: Path, package: str) -> list[str]:
    """Dotted names of the Python modules under `root` (the package `package`)."""
    out = []
    for p in _files(root):
        if p.suffix == ".py":
            parts = p.relative_to(root).with_suffix("").parts
            out.append(".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)]))
    return out


def test_no_tool_or_study_edits_the_import_path():
    offenders = [str(p.relative_to(ROOT)) for root in (TOOLS, STUDIES) for p in _files(root)
                 if "sys.path" in p.read_text(errors="replace")]
    assert not offenders, (f"{offenders} edit sys.path; import another tool as `from tools.NAME import ...` (a study: "
                           "`from benchmarks.studies.NAME import ...`) and run it as `python -m tools.NAME` from the "
                           "repository root")


def test_tools_holds_only_what_users_and_ci_run():
    present = {p.relative_to(TOOLS).as_posix() for p in _files(TOOLS)}
    extra = sorted(present - KEPT)
    assert not extra, (f"tools/ holds {extra}, which is not among what users and CI run; put a one-off study in "
                       "benchmarks/studies/ (same file name, run as `python -m benchmarks.studies.NAME`), or, when "
                       "users or CI run it, add it to KEPT in tests/test_tools_layout.py with the reason")
    missing = sorted(KEPT - present)
    assert not missing, f"KEPT names {missing}, which tools/ no longer holds; drop them from KEPT"
    assert (STUDIES / "__init__.py").is_file()


def _imported(path: Path) -> list[str]:
    """Every module name that `path` imports (absolute imports, anywhere in the file)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_tools_and_studies_import_each_other_through_the_packages():
    """No bare `import bench_search` (it worked only with a path edit), and tools never need a study."""
    packaged = {p.stem: package for root, package in ((STUDIES, "benchmarks.studies"), (TOOLS, "tools"))
                for p in root.glob("*.py") if p.stem != "__init__"} | {"benchmark": "tools"}
    problems = []
    for root in (TOOLS, STUDIES):
        for p in _files(root):
            if p.suffix != ".py":
                continue
            for name in _imported(p):
                top = name.split(".")[0]
                if top in packaged:
                    problems.append(f"{p.relative_to(ROOT)} imports {name!r}: write {packaged[top]}.{name}")
                elif root == TOOLS and name.startswith("benchmarks"):
                    problems.append(f"{p.relative_to(ROOT)} imports the study {name!r}; tools must not need studies")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", _modules(TOOLS, "tools") + _modules(STUDIES, "benchmarks.studies"))
def test_every_tool_and_study_imports_as_a_package_module(module):
    importlib.import_module(module)
