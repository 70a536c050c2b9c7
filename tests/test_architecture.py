"""The house rules of rlprune_edge/ (issue 18): no import cycles, nothing imports a stage above it, small files.

Imports are read with ``ast`` (module level and inside functions alike: a lazy import is still a
dependency). The pipeline's layers, bottom to top; a module may import its own layer and the ones
below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rlprune_edge"

# bottom -> top: graph -> importance -> policy/reward -> prune -> distill -> export, latency plugged in
LAYERS: list[tuple[str, ...]] = [
    ("errors", "fsutil", "outputs", "limits", "config", "paths", "progress", "sshopts", "cpu_block"),
    ("board",),  # runs on the board: stdlib + numpy + the runtime only
    ("flops", "models", "model_info", "data", "layers", "blocks", "checkpoint", "profiles", "runtimes", "compute", "onnx_io"),
    ("graph_walk", "graph_rules", "graph_check", "graph"),
    ("importance", "pruning"),
    ("latency",),
    ("search", "distill", "quantize", "train", "baselines", "weights_import", "estimate"),
    ("engine", "export", "bundle", "report", "rundir"),
    ("stages",),
    ("pipeline",),
    ("cli", "commands", "__main__", "__init__"),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
    return ".".join(parts)


def _layer(module: str) -> int:
    head = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"rlprune_edge.{module} is in no layer of tests/test_architecture.py; add it to LAYERS")


def _imports(path: Path) -> set[str]:
    """rlprune_edge modules `path` imports (absolute or relative; submodule imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name[len("rlprune_edge."):] for a in node.names if a.name.startswith("rlprune_edge.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            elif node.module and (node.module == "rlprune_edge" or node.module.startswith("rlprune_edge.")):
                mod = node.module[len("rlprune_edge."):] if node.module != "rlprune_edge" else ""
            else:
                continue
            for a in node.names:  # `from rlprune_edge.latency import cache` imports the submodule
                sub = f"{mod}.{a.name}" if mod else a.name
                out.add(sub if (PKG / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (PKG / Path(*sub.split("."))).is_dir() else mod)
    return {m for m in out if m}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for m in _imports(path):
            while m and m not in files:  # a name imported from a package's __init__
                m = m.rpartition(".")[0]
            if m and m != name:
                deps.add(m)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_module_imports_a_stage_above_it():
    bad = [f"rlprune_edge.{a} imports rlprune_edge.{b}" for a, deps in sorted(_graph().items()) for b in sorted(deps)
           if _layer(b) > _layer(a) and a.split(".")[0] not in ("__init__",)]
    assert bad == []


def test_board_code_needs_no_torch_and_no_package_imports():
    for path in (PKG / "board").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert not names & {"torch", "rlprune_edge"}, path


def test_no_file_over_500_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_no_function_over_80_lines_unless_a_comment_says_why():
    """A longer function must open its body with a `# long: ...` comment giving the reason."""
    long = []
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                body = lines[node.body[0].lineno - 1: node.body[0].lineno + 12]
                if not any(line.strip().startswith("# long:") for line in body):
                    long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name}")
    assert long == []


def test_architecture_md_names_every_module():
    """ARCHITECTURE.md names every module of the package (`name.py`, or `folder/name.py`)."""
    text = (PKG.parent / "ARCHITECTURE.md").read_text()
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.name in ("__init__.py", "__main__.py") or "profiles_data" in rel.parts or "assets" in rel.parts:
            continue
        if f"`{rel.as_posix()}`" not in text and f"`{rel.name}`" not in text and f"{rel.name}" not in text:
            missing.append(rel.as_posix())
    assert not missing, f"ARCHITECTURE.md does not name: {', '.join(missing)}"


def _subparser(command: str):
    from rlprune_edge.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


def _flag_defaults(command: str) -> dict:
    return {a.dest: a.default for a in _subparser(command)._actions if a.dest not in ("help",)}


def test_compress_flags_are_the_library_defaults():
    """Every `compress` flag is a CompressConfig option with the library's default, and back."""
    from rlprune_edge.pipeline import NESTED_OPTIONS, CompressConfig

    flags = _flag_defaults("compress")
    library = CompressConfig.flag_defaults()
    assert set(flags) == set(library), f"flags without an option: {set(flags) - set(library)}; options without a flag: {set(library) - set(flags)}"
    for dest, value in library.items():
        assert flags[dest] == value, f"--{dest.replace('_', '-')} defaults to {flags[dest]!r}, the library to {value!r}"
    parsed = _subparser("compress").parse_args([])
    assert CompressConfig.from_namespace(parsed) == CompressConfig(cli_names=True)  # the same run, nested configs included
    assert len({o.dest for o in NESTED_OPTIONS}) == len(NESTED_OPTIONS)


def test_other_commands_flags_match_the_functions_they_call():
    """`train`, `export` and `import`: a flag's default is the default of the library argument it feeds."""
    import inspect

    from rlprune_edge.export import export_bundle
    from rlprune_edge.train import train_model

    pairs = [("train", train_model, {"lr": "lr", "batch_size": "batch_size", "weight_decay": "weight_decay",
                                     "seed": "seed"}),
             ("export", export_bundle, {"verify_images": "verify_images", "calib_images": "calib_images",
                                        "test_limit": "test_limit", "opset": "opset"})]
    for command, func, mapping in pairs:
        flags = _flag_defaults(command)
        params = inspect.signature(func).parameters
        for dest, arg in mapping.items():
            assert flags[dest] == params[arg].default, (
                f"{command} --{dest.replace('_', '-')} defaults to {flags[dest]!r}, {func.__name__}({arg}=) to "
                f"{params[arg].default!r}")
