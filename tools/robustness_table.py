"""docs/robustness.md's case -> behaviour table, generated from the tests that prove each row.

Every hostile-input test carries ``@pytest.mark.hostile("case", "behaviour")``; this script reads
those markers (with ``ast``, nothing is imported or run) and renders the table between
``<!-- hostile:start -->`` and ``<!-- hostile:end -->``. ``tests/test_robustness_doc.py`` fails
when the document and the tests disagree; ``python -m tools.robustness_table --write`` updates it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "robustness.md"
START, END = "<!-- hostile:start -->", "<!-- hostile:end -->"


def _is_hostile(node: ast.expr) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return isinstance(f, ast.Attribute) and f.attr == "hostile"


def cases(tests_dir: Path = ROOT / "tests") -> list[tuple[str, str, str]]:
    """(case, behaviour, test id) for every marked test, in file and line order."""
    out = []
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for dec in node.decorator_list:
                if _is_hostile(dec) and len(dec.args) >= 2 and all(isinstance(a, ast.Constant) for a in dec.args[:2]):
                    out.append((str(dec.args[0].value), str(dec.args[1].value), f"{path.name}::{node.name}"))
    return out


def render(rows: list[tuple[str, str, str]]) -> str:
    """The markdown table (one row per marked test)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [START, "| case | behaviour | test |", "|---|---|---|"]
    lines += [f"| {cell(c)} | {cell(b)} | `{t}` |" for c, b, t in rows]
    return "\n".join([*lines, END])


def current(doc: Path = DOC) -> str:
    """The table section as it stands in the document ('' when absent)."""
    text = doc.read_text() if doc.exists() else ""
    if START not in text or END not in text:
        return ""
    return text[text.index(START): text.index(END) + len(END)]


def write(doc: Path = DOC) -> None:
    """Replace the section in the document with the rendered table."""
    text = doc.read_text()
    new = render(cases())
    text = text[: text.index(START)] + new + text[text.index(END) + len(END):]
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.robustness_table", description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="update docs/robustness.md")
    args = p.parse_args(argv)
    if args.write:
        write()
        print(f"{DOC}: {len(cases())} cases")
        return 0
    ok = current() == render(cases())
    print("docs/robustness.md is up to date" if ok else "docs/robustness.md differs: run python -m tools.robustness_table --write")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
