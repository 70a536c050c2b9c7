"""What users and CI run beside the `rlprune-edge` command: set-up, the GPU check, the benchmark drivers
whose figures BENCHMARKS.md and docs/ record, and the robustness table.

A package (not part of the installed `rlprune_edge`), run from the repository root as a module:

    .venv/bin/python -m tools.bench_search --quick --work /tmp/b
    .venv/bin/python -m tools.benchmark --list

A tool imports another as ``from tools.bench_search import base_checkpoint``, never by editing the import path
(tests/test_tools_layout.py). One-off studies live in ``benchmarks/studies/``.
"""
