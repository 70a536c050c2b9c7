"""One-off studies whose figures BENCHMARKS.md and docs/ record (not what users or CI run: that is tools/).

Run from the repository root as modules, e.g.

    .venv/bin/python -m benchmarks.studies.study_plans --model vgg19:0.25 --target 0.45

A study imports only ``rlprune_edge``, ``tools.*`` and ``benchmarks.studies.*``, never by editing the import path
(tests/test_tools_layout.py).
"""
