"""Your own model class: ``--model path/to/file.py:FACTORY`` or ``--model package.module:FACTORY``.

The factory (a class or a function returning an ``nn.Module``) is called with ``--model-args``
(``k=v,k2=v2``, each value a Python literal read with ``ast.literal_eval``; never ``eval``).
Importing that code is the user's explicit act: the spec is given on the command line. A checkpoint
of such a model records the spec and the sha256 of the source file (:func:`source_record`), but
loading it never imports anything by itself: the spec must be given again (``--arch``), and it is
checked against the record (:func:`check_arch`) before any code is imported.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import re
import sys
from pathlib import Path

import torch
from torch import nn

from rlprune_edge.errors import UserError

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_MODULE_PREFIX = "rlprune_edge_user_"
MAX_ARGS_TEXT = 4000


def is_user_spec(spec: str | None) -> bool:
    """True for ``FILE.py:FACTORY`` or ``package.module:FACTORY`` (never a zoo or torchvision name)."""
    if not spec or spec.startswith(("torchvision:", "timm:")):
        return False
    left, sep, _ = spec.rpartition(":")
    return bool(sep) and (left.endswith(".py") or bool(_DOTTED.match(left)))


def looks_like_source_without_factory(spec: str) -> bool:
    """A ``.py`` path given without ``:FACTORY``."""
    return ":" not in spec and spec.endswith(".py")


def spec_sentence() -> str:
    return "path/to/file.py:FACTORY or package.module:FACTORY for a model class of your own"


def parse_model_args(text: str | None, flag: str = "--model-args") -> dict:
    """``k=v,k2=(1, 2),k3='x'`` -> dict; values are Python literals (a bare word is a string)."""
    if text is None or not text.strip():
        return {}
    if len(text) > MAX_ARGS_TEXT:
        raise UserError(f"{flag} is longer than {MAX_ARGS_TEXT} characters; pass fewer arguments.")
    example = f"use e.g. {flag} num_classes=10,width=0.5,name='edge'"
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError:
        raise UserError(f"{flag} {text!r} is not a list of k=v pairs of Python literals; {example}.") from None
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise UserError(f"{flag} {text!r} must be k=v pairs only (no positional values or **); {example}.")
    out: dict = {}
    for kw in call.keywords:
        node = kw.value
        if isinstance(node, ast.Name):
            out[kw.arg] = node.id
            continue
        try:
            out[kw.arg] = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise UserError(f"{flag}: the value of {kw.arg} is not a Python literal (numbers, strings, "
                            f"True/False/None, tuples, lists); {example}.") from None
    return out


def _split(spec: str) -> tuple[str, str]:
    left, _, factory = spec.rpartition(":")
    if not factory or not all(_DOTTED.match(p) for p in [factory]):
        raise UserError(f"model spec {spec!r} has no factory name after ':'; give {spec_sentence()}.")
    return left, factory


def _describe(record: dict) -> str:
    return str(record["spec"])


def _hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_source(path: Path, spec: str) -> bytes:
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"model source {path} {what}; give {spec_sentence()} (from spec {spec!r}).")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read model source {path}: {exc.strerror or exc}; check its permissions.") from None


def _exec_file(path: Path, source: bytes, digest: str) -> object:
    """Import the file's exact hashed bytes as a module (cached by its hash in sys.modules)."""
    name = _MODULE_PREFIX + digest[:24]
    if name in sys.modules:
        return sys.modules[name]
    module = type(sys)(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # the file may import its siblings
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own file, named on the command line
    except Exception as exc:
        del sys.modules[name]
        raise UserError(f"importing {path} failed with {type(exc).__name__}: {_short(exc)}; fix the file.") from None
    finally:
        if sys.path and sys.path[0] == str(path.parent):
            sys.path.pop(0)
    return module


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return text if len(text) <= 160 else text[:157] + "..."


def _import_module(name: str, spec: str) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise UserError(f"module {name!r} of model spec {spec!r} was not found ({_short(exc)}); put its package "
                        "on PYTHONPATH or give path/to/file.py:FACTORY.") from None
    except Exception as exc:
        raise UserError(f"importing module {name!r} failed with {type(exc).__name__}: {_short(exc)}.") from None


def source_record(spec: str, model_args: dict | None = None) -> dict:
    """The record of a spec (not importing anything): kind, file, module, factory, args, sha256, spec.

    For a package module the module is imported to find its file (the user named it)."""
    left, factory = _split(spec)
    args = dict(model_args or {})
    if left.endswith(".py"):
        path = Path(left).expanduser().resolve()
        digest = _hash_bytes(_read_source(path, spec))
        return {"kind": "file", "file": str(path), "module": "", "factory": factory, "args": args,
                "sha256": digest, "spec": f"{path}:{factory}"}
    module = _import_module(left, spec)
    file = getattr(module, "__file__", None)
    if not file:
        raise UserError(f"module {left!r} has no source file to record; give path/to/file.py:{factory}.")
    path = Path(file).resolve()
    return {"kind": "module", "file": str(path), "module": left, "factory": factory, "args": args,
            "sha256": _hash_bytes(_read_source(path, spec)), "spec": f"{left}:{factory}"}


def build_from_record(record: dict) -> nn.Module:
    """Import the recorded source (its hash checked again) and call the factory with the recorded args."""
    spec = _describe(record)
    if record["kind"] == "file":
        path = Path(record["file"])
        source = _read_source(path, spec)
        digest = _hash_bytes(source)
        if digest != record["sha256"]:
            raise UserError(f"model source {path} changed while it was being read; run again.")
        module = _exec_file(path, source, digest)
    else:
        module = _import_module(record["module"], spec)
    obj: object = module
    for part in record["factory"].split("."):
        if not hasattr(obj, part):
            raise UserError(f"{record['file']} has no attribute {record['factory']!r} (spec {spec!r}); "
                            "name a class or a function defined there.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{record['factory']} in {record['file']} is not callable; name a class or a function.")
    args = dict(record.get("args") or {})
    try:
        model = obj(**args)
    except Exception as exc:
        raise UserError(f"{spec} raised {type(exc).__name__}: {_short(exc)} when called with {args or 'no arguments'}; "
                        "check --model-args.") from None
    if not isinstance(model, nn.Module):
        kind = type(model).__name__
        raise UserError(f"{spec} returned {'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind}, not a torch.nn.Module; "
                        "name a model class or a function that returns one.")
    return model


def build_user_model(spec: str, model_args: dict | None = None) -> tuple[nn.Module, dict]:
    """(model, record) for a spec given on the command line."""
    record = source_record(spec, model_args)
    return build_from_record(record), record


def check_classifier(model: nn.Module, shape: tuple[int, int, int], num_classes: int | None, spec: str) -> int:
    """UserError unless `model` maps (2, *shape) to (2, num_classes) class logits (any count when None);
    returns the class count."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as exc:
        raise UserError(f"{spec} does not run on {shape[1]}x{shape[2]} inputs with {shape[0]} channels "
                        f"({type(exc).__name__}: {_short(exc)}); use data of the size it was built for "
                        "(imagefolder@SIZE:DIR) or adaptive pooling.") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UserError(f"{spec} returns {got}; for now a model must return one row of class logits per image, "
                        "(N, num_classes), as a single tensor.")
    if num_classes is not None and out.shape[1] != num_classes:
        raise UserError(f"{spec} predicts {out.shape[1]} classes but the data has {num_classes}; build it for "
                        f"{num_classes} classes (e.g. --model-args num_classes={num_classes} if the factory takes it).")
    return int(out.shape[1])


def check_arch(record: dict, arch: str | None, path: object, flag: str = "--arch") -> dict:
    """Compare the `arch` spec given now with a checkpoint's record, before importing anything.

    Returns the record to build from (the file found now, the recorded arguments)."""
    recorded = _describe(record)
    if arch is None or not str(arch).strip():
        raise UserError(f"checkpoint {path} holds your own model class {recorded}, and a checkpoint never makes "
                        f"rlprune-edge import code: give the spec again with {flag} {recorded} "
                        "(Python: load_checkpoint(path, arch=...)).")
    if not is_user_spec(arch):
        raise UserError(f"{flag} {arch!r} is not {spec_sentence()}; checkpoint {path} records {recorded}.")
    left, factory = _split(arch)
    if factory != record["factory"] or (record["kind"] == "module") != (not left.endswith(".py")) \
            or (record["kind"] == "module" and left != record["module"]):
        raise UserError(f"{flag} {arch} is not the model checkpoint {path} was saved from: it records {recorded}; "
                        f"give {flag} {recorded}.")
    if record["kind"] == "file":
        file = Path(left).expanduser().resolve()
        digest = _hash_bytes(_read_source(file, arch))
    else:
        module = _import_module(left, arch)
        file = Path(getattr(module, "__file__", "") or "").resolve()
        digest = _hash_bytes(_read_source(file, arch))
    if digest != record["sha256"]:
        same = str(file) == record["file"]
        why = (f"{file} has changed since the checkpoint was saved (sha256 {digest[:12]}, recorded "
               f"{record['sha256'][:12]})" if same else
               f"{file} is not the source recorded ({record['file']}, sha256 {record['sha256'][:12]})")
        raise UserError(f"checkpoint {path} cannot be rebuilt: {why}; restore that source or re-create the checkpoint.")
    return {**record, "file": str(file)}


def check_record(raw: object) -> bool:
    """True when a checkpoint header's ``source`` field is well formed."""
    if not isinstance(raw, dict):
        return False
    text = ("kind", "file", "module", "factory", "sha256", "spec")
    return (all(isinstance(raw.get(k), str) for k in text) and raw["kind"] in ("file", "module")
            and bool(re.fullmatch(r"[0-9a-f]{64}", raw["sha256"])) and bool(_DOTTED.match(raw["factory"]))
            and isinstance(raw.get("args", {}), dict) and all(isinstance(k, str) for k in raw.get("args", {})))
