"""One module per subcommand; the flags several of them share live here."""

from __future__ import annotations

import argparse


def add_own_model_flags(p: argparse.ArgumentParser, *, model_args: bool = True) -> None:
    """``--model-args`` (for ``--model FILE.py:FACTORY``) and ``--arch`` (to reload a checkpoint of such a model)."""
    if model_args:
        p.add_argument("--model-args", default=None, metavar="K=V,...",
                       help="keyword arguments for your own model's factory (--model FILE.py:FACTORY or "
                            "package.module:FACTORY), as Python literals: num_classes=10,width=0.5")
    p.add_argument("--arch", default=None, metavar="SPEC",
                   help="the spec of your own model class (FILE.py:FACTORY) or the ONNX file (FILE.onnx) a "
                        "checkpoint was saved from, to reload it (a checkpoint never imports code by itself; "
                        "checked against the source's sha256 recorded in it)")
