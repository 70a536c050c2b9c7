"""README.md's Python snippet runs verbatim, and `rpe.prune` stays the function when called twice."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"


pytestmark = pytest.mark.usefixtures("single_thread")


def _python_blocks() -> list[str]:
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", README.read_text(), re.S | re.M)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.hostile(
    "README's Python snippet copied and run as is, without data files",
    "works: every ```python block of README.md runs verbatim in one namespace in a few seconds "
    "(zoo model, groups, Taylor prune, prune again) and the pruned models are smaller",
)
def test_readme_python_snippet_runs_verbatim(tmp_path, monkeypatch) -> None:
    blocks = _python_blocks()
    assert len(blocks) == 1, "README.md should hold exactly one ```python snippet (the Python API)"
    monkeypatch.chdir(tmp_path)  # anything the snippet writes lands in a scratch directory
    namespace: dict = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
    model, half, quarter, x = namespace["model"], namespace["half"], namespace["quarter"], namespace["x"]
    assert _n_params(quarter) < _n_params(half) < _n_params(model)
    with torch.no_grad():
        assert model(x).shape == half(x).shape == quarter(x).shape == (1, 10)
    assert any(g.prunable for g in namespace["groups"])
    assert "parameters" in out.getvalue()  # it printed the comparison


@pytest.mark.hostile(
    "`rpe.prune` called twice as in README (the second call used to raise TypeError)",
    "works: `rlprune_edge.prune` is always the function (module renamed to `pruning.py`)",
)
def test_prune_called_twice_is_still_the_function() -> None:
    import rlprune_edge as rpe

    torch.manual_seed(0)
    model = rpe.build_model("resnet20", width=0.25).eval()
    x = torch.zeros(1, *model.input_shape)
    keep = {g.name: max(1, g.channels // 2) for g in rpe.prunable_groups(model, x) if g.prunable}
    once = rpe.prune(model, x, keep=keep, importance="l1")
    assert inspect.isfunction(rpe.prune)  # importing the engine module did not replace the name
    twice = rpe.prune(once, x, keep={n: max(1, k // 2) for n, k in keep.items()}, importance="l1")
    importlib.import_module("rlprune_edge.pruning")  # an explicit submodule import does not shadow it either
    assert inspect.isfunction(rpe.prune) and rpe.prune.__module__ == "rlprune_edge.pruning"
    from rlprune_edge import prune

    assert prune is rpe.prune
    thrice = prune(twice, x, keep={n: 1 for n in keep}, importance="random")
    assert _n_params(thrice) < _n_params(twice) < _n_params(once) < _n_params(model)
    with torch.no_grad():
        assert thrice(x).shape == (1, 10)
