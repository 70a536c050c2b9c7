"""A user's own trained weights (a state_dict file) → a verified rlprune-edge checkpoint.

The product starts from "an engineer has a trained CNN". When that CNN is a zoo architecture or a
torchvision classifier trained by the user's own script, its weights usually sit in a file written
by ``torch.save(model.state_dict(), path)`` — possibly wrapped (``{"state_dict": ...}``,
``{"model": ...}``) or with a ``module.`` (DataParallel/DDP), ``_orig_mod.`` (``torch.compile``) or
``model.`` (Lightning) prefix on every key. :func:`import_weights` reads such a file with
``torch.load(weights_only=True)`` (a pickled model object is refused, never executed), maps the keys
onto the named architecture, refuses anything that does not fit with one sentence saying what to
change, evaluates the model on the dataset it will be compressed with (the check that the
normalisation and class order match), and writes the checkpoint atomically. A class of your own is
named by ``--model FILE.py:FACTORY``. An ONNX file carries its architecture: :func:`import_onnx`
converts it (:mod:`rlprune_edge.models.onnx_in`) and checks the conversion against ONNX Runtime.
"""

from __future__ import annotations

import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rlprune_edge.checkpoint import FORMAT, ModelInfo, check_width, resolve_model, save_checkpoint
from rlprune_edge.data import DataBundle
from rlprune_edge.errors import UserError
from rlprune_edge.limits import check_tensor_kinds, require_regular_file
from rlprune_edge.models import ZOO_NAMES, adopt_input_shape, build_model, is_model_name, valid_names_sentence
from rlprune_edge.models.user import is_user_spec
from rlprune_edge.train import evaluate

# Keys under which training scripts commonly store the state_dict, in the order they are tried.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
# Training-only heads of torchvision's googlenet / inception_v3 (built here without them).
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
MAX_PREFIX_STRIPS = 3
WIDTH_GUESSES = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
CHANCE_MARGIN = 1.5  # accuracy below this multiple of chance (1 / classes) draws a warning


@dataclass
class ImportedWeights:
    """The rebuilt model, its checkpoint record and what was done to the keys on the way."""

    model: nn.Module
    info: ModelInfo
    wrapper_key: str | None = None
    stripped_prefix: str = ""
    notes: list[str] = field(default_factory=list)
    test_acc: float | None = None

    @property
    def at_chance(self) -> bool:
        """True when the test accuracy is no better than guessing (a normalisation or class-order mismatch)."""
        return self.test_acc is not None and self.test_acc < CHANCE_MARGIN / max(2, self.info.num_classes)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a weights file and the wrapper key they were under (None for a bare state_dict)."""
    path = require_regular_file(path, "weights file", "give the path of a file written by "
                                "torch.save(model.state_dict(), PATH).")
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
        return check_tensor_kinds(_read_safetensors(path), path), None
    try:
        with warnings.catch_warnings():  # torch's own warnings (sparse checks, deprecated storages): our sentence says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds pickled Python objects (a whole model or optimizer), which are never loaded "
                        "for safety; save the weights alone with torch.save(model.state_dict(), PATH).") from None
    except OSError as exc:
        raise UserError(f"cannot read weights file {path}: {exc.strerror or exc}; check its permissions.") from None
    except Exception as exc:  # a truncated zip, a foreign format
        raise UserError(f"{path} is not a torch weights file ({type(exc).__name__}); give a file written by "
                        "torch.save(model.state_dict(), PATH).") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise UserError(f"{path} is already an rlprune-edge checkpoint; use it directly (--model {path}).")
    if _is_state_dict(payload):
        return check_tensor_kinds(dict(payload), path), None
    if isinstance(payload, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(payload.get(key)):
                return check_tensor_kinds(dict(payload[key]), path), key
    raise UserError(f"{path} holds no state_dict (a dict of parameter name -> tensor, bare or under one of "
                    f"{', '.join(repr(k) for k in WRAPPER_KEYS)}); save it with torch.save(model.state_dict(), PATH).")


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length, then its JSON header ('{')."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (the `safetensors` package, an optional extra; no code is ever run)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{path} is a safetensors file; install the reader with `pip install "
                        "'rlprune-edge[safetensors]'` (or `pip install safetensors`) and run again.") from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({str(exc)[:120]}); re-save it.") from None
    if not state:
        raise UserError(f"{path} holds no tensors; save the model's state_dict into it.")
    return dict(state)


def _is_state_dict(obj: object) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def align_keys(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Strip a prefix shared by every key (``module.``, ``_orig_mod.``, ``model.``…) while that fits better.

    Returns the re-keyed dict and the prefix removed ('' when none).
    """
    stripped = ""
    for _ in range(MAX_PREFIX_STRIPS):
        if set(state) <= expected:
            break
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) != 1 or any("." not in k for k in state):
            break
        head = heads.pop() + "."
        candidate = {k[len(head):]: v for k, v in state.items()}
        if len(set(candidate) & expected) <= len(set(state) & expected):
            break
        state, stripped = candidate, stripped + head
    return state, stripped


def _classifier_keys(model_name: str, width: float, num_classes: int, reference: nn.Module) -> set[str]:
    """Keys whose shape depends on the number of classes (the classifier), found by building with one more."""
    if is_user_spec(model_name):
        return set()  # your own class: the factory's arguments, not ours, set the class count
    other = build_model(model_name, width, num_classes + 1).state_dict()
    return {k for k, v in reference.state_dict().items() if k in other and other[k].shape != v.shape}


def _fits(model_name: str, width: float, num_classes: int, state: dict[str, torch.Tensor]) -> bool:
    try:
        ref = build_model(model_name, width, num_classes).state_dict()
    except UserError:
        return False
    needed = {k for k in ref if not k.endswith("num_batches_tracked")}
    return set(state) <= set(ref) and needed <= set(state) and all(ref[k].shape == v.shape for k, v in state.items())


def _fit_hint(model_name: str, width: float, num_classes: int, state: dict[str, torch.Tensor]) -> str:
    """' They fit vgg16 at width 0.5: pass --model vgg16 --width 0.5.' when a zoo architecture fits, else ''.

    Key names do not depend on the width, so one small build per zoo name finds the architecture;
    then common widths are tried for it.
    """
    names = {k for k in state if not k.endswith("num_batches_tracked")}
    for name in ([model_name] if model_name in ZOO_NAMES else []) + [n for n in ZOO_NAMES if n != model_name]:
        keys = {k for k in build_model(name, WIDTH_GUESSES[0], num_classes).state_dict()
                if not k.endswith("num_batches_tracked")}
        if keys != names:
            continue
        for guess in WIDTH_GUESSES:
            if (name, guess) != (model_name, width) and _fits(name, guess, num_classes, state):
                return f" They fit {name} at width {guess:g}: pass --model {name} --width {guess:g}."
        return ""
    return ""


def _short(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], model_name: str, width: float,
                   num_classes: int, source: Path) -> list[str]:
    """Load `state` into `model` exactly (UserError naming what does not fit); return notes on what was dropped."""
    notes: list[str] = []
    check_tensor_kinds(state, source)
    reference = model.state_dict()
    aux = sorted(k for k in state if k not in reference and k.startswith(AUX_PREFIXES))
    if aux:
        state = {k: v for k, v in state.items() if k not in aux}
        notes.append(f"dropped {len(aux)} tensors of the training-only auxiliary heads ({_short(aux, 2)})")
    arch = f"{model_name}" + (f" at width {width:g}" if model_name in ZOO_NAMES else "")
    wrong = [k for k, v in state.items() if k in reference and reference[k].shape != v.shape]
    if wrong:
        head = _classifier_keys(model_name, width, num_classes, model)
        if set(wrong) <= head:
            k = max(wrong, key=lambda name: state[name].dim())  # the classifier's weight rather than its bias
            got = int(state[k].shape[0])
            raise UserError(f"the weights in {source} predict {got} classes but the data has {num_classes} ({k} has "
                            f"shape {list(state[k].shape)}); pass the --data the model was trained on.")
    unexpected = [k for k in state if k not in reference]
    missing = [k for k in reference if k not in state and not k.endswith("num_batches_tracked")]
    if wrong or unexpected or missing:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of other shapes ({k}: {list(state[k].shape)} in the file, "
                         f"{list(reference[k].shape)} in {arch})")
        if missing:
            parts.append(f"{len(missing)} tensors missing ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors not in {arch} ({_short(unexpected)})")
        hint = _fit_hint(model_name, width, num_classes, state)
        raise UserError(f"the weights in {source} do not fit {arch}: {'; '.join(parts)}. Check --model"
                        f"{' and --width' if model_name in ZOO_NAMES else ''}.{hint}")
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise UserError(f"the weights in {source} contain NaN or infinite values ({_short(bad)}); the training "
                        "diverged, so export the weights of an earlier, finite epoch.")
    model.load_state_dict(state, strict=False)  # every key checked above; absent num_batches_tracked stay fresh
    return notes


def check_architecture(model_name: str, width: float) -> None:
    """UserError unless `model_name` is a zoo or torchvision name (or your own FILE.py:FACTORY) and `width`
    a valid multiplier."""
    if is_user_spec(model_name):
        if width != 1.0:
            raise UserError(f"--width applies only to the built-in zoo, not to {model_name}; pass your own width "
                            "through --model-args.")
        return
    if not is_model_name(model_name):
        if Path(model_name).is_file():
            raise UserError(f"--model takes an architecture name, not a file ({model_name}); give one of "
                            f"{valid_names_sentence()}, and the weights file as the first argument.")
        build_model(model_name, width)  # raises UserError listing the valid names
    check_width(width)


def import_weights(weights: str | os.PathLike, model_name: str, width: float, data: DataBundle,
                   evaluate_split: str | None = "test",
                   read: tuple[dict[str, torch.Tensor], str | None] | None = None,
                   model_args: str | dict | None = None) -> ImportedWeights:
    """Rebuild `model_name` with the weights of `weights` for `data`, and (by default) its test accuracy.

    `read` is :func:`read_state_dict`'s result when the caller already read the file. The checkpoint
    records the data's class names, mean/std and input shape, which is what `compress`, `export` and
    the board's `classify.py` feed the model with. Raises UserError for anything that does not fit.
    """
    check_architecture(model_name, width)
    state, wrapper = read if read is not None else read_state_dict(weights)
    source = None
    if is_user_spec(model_name):  # your own class, built by its factory and checked on the data's size
        model, own = resolve_model(model_name, width, data=data, model_args=model_args, name="--model")
        source = own.source
    else:
        if model_args is not None:
            raise UserError(f"--model-args applies only to a model class of your own (FILE.py:FACTORY), not to {model_name}.")
        model = build_model(model_name, width, data.num_classes)
        adopt_input_shape(model, tuple(data.input_shape), model_name)
    state, prefix = align_keys(state, set(model.state_dict()))
    notes = fit_state_dict(model, state, model_name, width, data.num_classes, Path(weights))
    info = ModelInfo(model_name, float(width), data.num_classes, tuple(data.input_shape), tuple(data.mean),
                     tuple(data.std), list(data.class_names),
                     meta={"data": data.spec, "imported_from": Path(weights).name, "wrapper_key": wrapper,
                           "stripped_prefix": prefix}, source=source)
    result = ImportedWeights(model.eval(), info, wrapper, prefix, notes)
    _check_finite_outputs(model, info.input_shape, Path(weights))
    if evaluate_split is not None:
        result.test_acc = evaluate(model, data.loader(evaluate_split, 256))
        info.meta["test_acc"] = result.test_acc
    return result


def _probe_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed random batch the imported model is checked on (finite outputs, same outputs after reload)."""
    return torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))


def _check_finite_outputs(model: nn.Module, input_shape: tuple[int, ...], source: Path) -> None:
    """UserError when finite weights still give NaN or infinite outputs (values so large that float32 overflows)."""
    with torch.no_grad():
        out = model.eval()(_probe_input(input_shape))
    if not bool(torch.isfinite(out).all()):
        big = max((float(v.abs().max()) for v in model.state_dict().values() if v.is_floating_point() and v.numel()),
                  default=0.0)
        raise UserError(f"the weights in {source} give NaN or infinite outputs on a random input (the largest weight "
                        f"is {big:.3g}; float32 overflows above 3.4e38); they are not a trained model, so export the "
                        "weights of an earlier, finite epoch. Nothing was written.")


def import_checkpoint(weights: str | os.PathLike, model_name: str, width: float, data: DataBundle,
                      out: str | os.PathLike,
                      read: tuple[dict[str, torch.Tensor], str | None] | None = None,
                      force: bool = False, model_args: str | dict | None = None) -> ImportedWeights:
    """:func:`import_weights`, then write `out` under the output rule (:mod:`rlprune_edge.outputs`: the
    weights file is never replaced, another file only with `force`) and check that it reloads to the
    same outputs."""
    start = time.perf_counter()
    result = import_weights(weights, model_name, width, data, read=read, model_args=model_args)
    result.info.meta["wall_s"] = round(time.perf_counter() - start, 1)
    x = _probe_input(result.info.input_shape)
    with torch.no_grad():
        expected = result.model(x)

    def same_outputs(reloaded: nn.Module) -> None:  # on the temp file, before it replaces anything
        with torch.no_grad():
            got = reloaded.eval()(x)
        if not torch.allclose(expected, got, rtol=1e-5, atol=1e-5) or not math.isfinite(float(got.abs().max())):
            raise RuntimeError(f"{out} does not reload to the imported model's outputs (a bug; please report it); "
                               "nothing was replaced.")

    save_checkpoint(out, result.model, result.info, flag="--out", force=force, inputs=[weights], check=same_outputs)
    return result


def import_onnx(path: str | os.PathLike, data: DataBundle, out: str | os.PathLike, force: bool = False,
                evaluate_split: str | None = "test") -> ImportedWeights:
    """An ONNX classifier → a checkpoint at `out`: converted, checked against ONNX Runtime on the file itself
    (relative error at most ``ORT_MAX_REL_ERROR``) and on the data, then written under the output rule."""
    from rlprune_edge.models.onnx_in import ORT_MAX_REL_ERROR, ort_relative_error

    start = time.perf_counter()
    model, info = resolve_model(str(path), data=data, name="import")
    x = _probe_input(info.input_shape)
    _check_finite_outputs(model, info.input_shape, Path(path))
    rel = ort_relative_error(model, info.source, x)
    if not rel <= ORT_MAX_REL_ERROR:
        raise UserError(f"the PyTorch conversion of {path} differs from ONNX Runtime on it (relative error {rel:.2g}, "
                        f"at most {ORT_MAX_REL_ERROR:g} allowed): onnx2torch converts one of its ops differently, so "
                        "it cannot be imported as is. Nothing was written.")
    info.meta = {"data": data.spec, "imported_from": Path(path).name, "onnx_sha256": info.source["sha256"],
                 "ort_rel_error": rel}
    result = ImportedWeights(model.eval(), info, notes=[f"checked against ONNX Runtime (relative error {rel:.1g})"])
    if evaluate_split is not None:
        result.test_acc = evaluate(model, data.loader(evaluate_split, 256))
        info.meta["test_acc"] = result.test_acc
    info.meta["wall_s"] = round(time.perf_counter() - start, 1)
    with torch.no_grad():
        expected = model(x)

    def same_outputs(reloaded: nn.Module) -> None:  # on the temp file, before it replaces anything
        with torch.no_grad():
            got = reloaded.eval()(x)
        if not torch.allclose(expected, got, rtol=1e-5, atol=1e-5):
            raise RuntimeError(f"{out} does not reload to the imported model's outputs (a bug; please report it); "
                               "nothing was replaced.")

    save_checkpoint(out, model, info, flag="--out", force=force, inputs=[path], check=same_outputs)
    return result
