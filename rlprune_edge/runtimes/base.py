"""A runtime plug-in: everything the package knows about one runtime, in one class.

A :class:`Runtime` subclass owns, for its runtime:

* the profile's ``[runtime]`` keys besides ``name`` and ``precision`` (:attr:`Runtime.options`, one
  :class:`Option` each: name, type = the default's type, default, choices, bounds) and the
  precisions a profile may name (:attr:`Runtime.precisions`); extra checks in :meth:`Runtime.check`;
* how those options reach the board code: :meth:`Runtime.board_options` (the options dict of an
  in-process ``board/*_measure`` call), :meth:`Runtime.runner_args` (the flags of ``runner.py
  measure`` on a board; ``on_board`` says whether the runner runs this runtime at all) and, for
  runtimes that build engines, :meth:`Runtime.engine_args`;
* what export needs: :attr:`Runtime.artifact` (its backend measures an exported ONNX file or the
  ``nn.Module`` itself) and :attr:`Runtime.bundles` (per precision: the fp32 graph, a QDQ INT8
  graph, or an engine built on the device);
* its latency backend on this machine (:meth:`Runtime.backend`).

Plug-in modules are imported when a profile is loaded, so they import their runtime (torch,
onnxruntime, tensorrt) inside functions only. This module imports no runtime and no other package
module but ``errors``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rlprune_edge.errors import DeviceError, UserError

ONNX_FILE, MODULE = "onnx", "module"  # what a backend measures (Runtime.artifact)
FP32_GRAPH, QDQ_INT8, ENGINE = "onnx", "qdq", "engine"  # what a bundle ships (Runtime.bundles values)


@dataclass(frozen=True)
class Option:
    """One profile key: its type is the type of `default` (bool, int, float, str, or a tuple of `item`).

    A value must be one of `choices` (when given), >= 0 (`non_negative`), > 0 (`positive`) and at
    most `at_most`; :meth:`check` turns every violation into one sentence naming the file, section and key.
    """

    name: str
    default: Any
    choices: tuple[str, ...] = ()
    non_negative: bool = False
    positive: bool = False
    at_most: int | float | None = None
    item: type = str  # element type of a list-valued key
    help: str = ""

    def check(self, value: Any, where: str) -> Any:
        """`value` converted to the option's type (floats from integers), or a UserError naming `where`."""
        value = _typed(self, value, where)
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{where} must be one of {', '.join(self.choices)}, got {value!r}{hint}; fix the profile.")
        if self.non_negative and value < 0:
            raise UserError(f"{where} must be >= 0, got {value!r}; fix the profile.")
        if self.positive and value <= 0:
            raise UserError(f"{where} must be > 0, got {value!r}; fix the profile.")
        if self.at_most is not None and value > self.at_most:
            unit = " seconds (a day)" if self.name.endswith("_s") else ""
            raise UserError(f"{where} must be at most {self.at_most:,}{unit}, got {value!r}; fix the profile.")
        return value


def _type_name(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _typed(opt: Option, value: Any, where: str) -> Any:
    """`value` checked against the type of the option's default."""
    default = opt.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {_type_name(value)}; fix the profile.")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {_type_name(value)}; fix the profile.")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {_type_name(value)}; fix the profile.")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range
            value = math.inf
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}; fix the profile.")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {_type_name(value)}; fix the profile.")
    elif isinstance(default, tuple):
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, got {_type_name(value)}; fix the profile.")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, opt.item):
                raise UserError(
                    f"{where} must be a list of {'integers' if opt.item is int else 'strings'}, "
                    f"got item {_type_name(item)}; fix the profile."
                )
        value = tuple(value)
    return value


class Runtime:
    """One runtime. Subclass it, set the class attributes, implement :meth:`backend`, and register an
    instance (``rlprune_edge.runtimes.register_runtime``; a module of this package that defines
    ``RUNTIME`` is registered by itself)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how messages name it ("TensorRT"); the name when empty
    options: ClassVar[tuple[Option, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # what [runtime] precision may say
    artifact: ClassVar[str] = ONNX_FILE  # ONNX_FILE or MODULE: what its backend measures
    on_board: ClassVar[bool] = False  # the board runner (board/runner.py) runs it: ssh profiles may name it
    bundles: ClassVar[Mapping[str, str]] = {"fp32": FP32_GRAPH}  # precision -> what export ships
    cpu_hint: ClassVar[str] = ""  # e.g. "torch on cpu": when it can run on this machine's CPU (see on_host_cpu)

    @property
    def title(self) -> str:
        """The runtime as messages name it."""
        return self.label or self.name

    def option(self, name: str) -> Option | None:
        """The option called `name`, or None."""
        return next((o for o in self.options if o.name == name), None)

    def defaults(self) -> dict[str, Any]:
        """Every option at its default."""
        return {o.name: o.default for o in self.options}

    # -- profiles -----------------------------------------------------------------------------------
    def check(self, profile: Any, file: str) -> None:
        """Refuse (UserError naming `file`) a profile this runtime cannot run. Called after its options
        and sections are valid and after the general checks (an ssh profile names an ``on_board`` runtime)."""

    def on_host_cpu(self, runtime: Any) -> bool:
        """True when these settings (a profile's RuntimeSpec) run on this machine's CPU."""
        return False

    # -- the board code -------------------------------------------------------------------------------
    def board_options(self, runtime: Any) -> dict[str, Any]:
        """The options dict of an in-process board measurement (``board/*_measure``): precision and every option."""
        return {"precision": runtime.precision, **runtime.options}

    def runner_options(self, runtime: Any) -> list[str]:
        """This runtime's flags for ``runner.py measure``: each board option but precision as
        ``--key-name value`` (empty strings left out)."""
        args: list[str] = []
        for key, value in self.board_options(runtime).items():
            if key == "precision" or value == "" or value is None:
                continue
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
        return args

    def runner_args(self, profile: Any) -> list[str]:
        """The flags of ``runner.py measure`` that carry the profile's runtime and input settings."""
        rt, inp = profile.runtime, profile.input
        args = ["--runtime", self.name, "--precision", rt.precision, *self.runner_options(rt)]
        args += ["--batch", str(inp.batch)]
        if inp.shape:
            args += ["--shape", ",".join(str(d) for d in inp.shape)]
        return args

    def engine_args(self, runtime: Any, *, local: bool) -> list[str]:
        """Flags of ``runner.py build-engine`` for these settings (runtimes whose bundles hold an engine)."""
        raise UserError(f"runtime {self.name} builds no engine; export its bundle at "
                        f"{' or '.join(p for p, kind in self.bundles.items() if kind != ENGINE)}.")

    def install_hint(self, package: str) -> str | None:
        """How to install `package` on a board that lacks it for this runtime, or None for the general advice."""
        return None

    # -- export and measurement -----------------------------------------------------------------------
    def bundle_kind(self, precision: str) -> str | None:
        """What a bundle at `precision` ships (FP32_GRAPH, QDQ_INT8, ENGINE), or None when it cannot."""
        return self.bundles.get(precision)

    def backend(self, profile: Any) -> Any:
        """The latency backend (``rlprune_edge.runtimes.backend.LatencyBackend``) for a local profile."""
        raise DeviceError(f"runtime {self.name} has no backend on this machine; measure it on its board "
                          "(a profile with [connection] kind = \"ssh\").")

