"""Slots: one compute node's time as a line in its (channel-aligned) work, and how it is fitted.

A slot is an ONNX node or a torch leaf module (``artifacts.node_dims``). Its channel counts are
linear in the groups' keep counts (``DimMap``, learned exactly from profiled variants); its time is
``a + b * work`` with channels rounded up to the runtime's blocking (``slot_feature``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
OUT_BLOCK = 8
IN_BLOCK = 4


def _ceil(x: float, m: int) -> float:
    return float(math.ceil(x / m) * m) if m > 1 else float(x)


# --- node features ---------------------------------------------------------------------------


def slot_feature(d: dict[str, Any], cin: float, cout: float, align: bool = True) -> float:
    """The work of one node with channels rounded up to the runtime's blocking."""
    ob, ib = (OUT_BLOCK, IN_BLOCK) if align else (1, 1)
    op = d["op"]
    if op in WEIGHTED:
        g = int(d.get("groups", 1))
        if g == -1 or (g > 1 and g == int(d.get("cin", 0))):  # depthwise: groups follow the channels
            return _ceil(cout, ob) * d["k"] * d["hw_out"]
        g = max(1, g)
        return _ceil(cout, ob) * _ceil(cin / g, ib) * d["k"] * d["hw_out"]
    # memory-bound ops: elements read + written
    return _ceil(cin, ob) * d["hw_in"] + _ceil(cout, ob) * d["hw_out"]


# --- keep -> channel counts ----------------------------------------------------------------------


@dataclass
class DimMap:
    """channels = const + sum(coef[g] * keep[g])."""

    const: float
    coefs: dict[str, float] = field(default_factory=dict)

    def __call__(self, keep: dict[str, float]) -> float:
        return self.const + sum(c * keep[g] for g, c in self.coefs.items())


def fit_dim_map(values: Sequence[float], keeps: Sequence[dict[str, float]], names: Sequence[str]) -> DimMap | None:
    """Explain one channel count across variants by the groups' keep counts (exactly), or None."""
    y = np.asarray(values, dtype=np.float64)
    if np.all(y == y[0]):
        return DimMap(float(y[0]))
    K = np.asarray([[k[n] for n in names] for k in keeps], dtype=np.float64)
    for j, n in enumerate(names):  # one group, coefficient 1 (the common case)
        if np.array_equal(K[:, j], y):
            return DimMap(0.0, {n: 1.0})
    for j, n in enumerate(names):  # one group times an integer (e.g. Flatten of a spatial map)
        col = K[:, j]
        if np.all(col > 0):
            r = y / col
            if np.allclose(r, r[0]) and abs(r[0] - round(r[0])) < 1e-9:
                return DimMap(0.0, {n: float(round(r[0]))})
    # greedy sum of groups (concatenations): add the group most correlated with the residual
    chosen: list[int] = []
    for _ in range(min(len(names), len(y) - 1)):
        X = np.column_stack([np.ones(len(y))] + [K[:, c] for c in chosen]) if chosen else np.ones((len(y), 1))
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        if np.max(np.abs(resid)) < 0.5:
            break
        scores = [abs(np.corrcoef(K[:, j], resid)[0, 1]) if j not in chosen and np.std(K[:, j]) > 0 else -1 for j in range(len(names))]
        best = int(np.argmax(scores))
        if scores[best] <= 0:
            return None
        chosen.append(best)
    X = np.column_stack([np.ones(len(y))] + [K[:, c] for c in chosen])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    if np.max(np.abs(y - X @ np.round(coef))) >= 0.5:
        return None
    return DimMap(float(round(coef[0])), {names[c]: float(round(coef[i + 1])) for i, c in enumerate(chosen)})


# --- per-layer profile -> per-slot times ---------------------------------------------------------


def slot_times(per_layer: Sequence[Any], compute_nodes: set[str]) -> dict[str, float]:
    """Executed-layer times charged to ONNX compute nodes (layout nodes go to a neighbour)."""
    times: dict[str, float] = {}
    pending = 0.0
    last: str | None = None
    for layer in per_layer:
        nodes = list(getattr(layer, "onnx_nodes", None) or (layer.get("onnx_nodes", []) if isinstance(layer, dict) else []))
        ms = float(layer.median_ms if not isinstance(layer, dict) else layer["median_ms"])
        primary = next((n for n in nodes if n in compute_nodes), None)
        if primary is None and nodes:
            primary = nodes[0]
        if primary is None:  # a layout node the runtime inserted: charge the next compute node
            name = str(getattr(layer, "name", "") if not isinstance(layer, dict) else layer.get("name", ""))
            if last is not None and name.startswith("ReorderOutput"):
                times[last] = times.get(last, 0.0) + ms
            else:
                pending += ms
            continue
        times[primary] = times.get(primary, 0.0) + ms + pending
        pending = 0.0
        last = primary
    if pending and last is not None:
        times[last] += pending
    return times


# --- the model -----------------------------------------------------------------------------------


@dataclass
class Slot:
    """One ONNX node's time model: ms = a + b * feature(cin, cout)."""

    node: dict[str, Any]
    cin: DimMap
    cout: DimMap
    a: float
    b: float

    def predict(self, keep: dict[str, float]) -> float:
        x = slot_feature(self.node, self.cin(keep), self.cout(keep))
        return max(0.0, self.a + self.b * x)


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares y = a + b x with b >= 0 and a >= 0 fallbacks; constant x -> mean."""
    if not _varies(x):
        return float(np.mean(y)), 0.0
    b, a = np.polyfit(x, y, 1)
    if b < 0:
        return float(np.mean(y)), 0.0
    if a < 0:  # through the origin
        b = float(np.dot(x, y) / np.dot(x, x))
        return 0.0, b
    return float(a), float(b)


def _varies(x: np.ndarray) -> bool:
    return bool(np.ptp(x) > 1e-12 * max(1.0, float(np.max(np.abs(x)))))


def fit_slots(specs: dict[str, tuple[dict[str, Any], DimMap, DimMap, np.ndarray, np.ndarray]],
               scales: np.ndarray) -> dict[str, Slot]:
    """Per-slot lines; a slot whose work never changed in the fit variants (e.g. an alignment step
    never crossed) borrows the shape of its op family's pooled line, scaled through its own point."""
    pooled: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
    for node, _cin, _cout, x, y in specs.values():
        if _varies(x):
            fam = pooled[node["op"] in WEIGHTED]
            fam[0].extend(x.tolist())
            fam[1].extend((y * scales).tolist())
    family_line = {k: _fit_line(np.asarray(v[0]), np.asarray(v[1])) if len(v[0]) >= 2 else (0.0, 0.0)
                   for k, v in pooled.items()}
    slots = {}
    for n, (node, cin, cout, x, y) in specs.items():
        ys = y * scales
        if _varies(x):
            a, b = _fit_line(x, ys)
        else:
            fa, fb = family_line[node["op"] in WEIGHTED]
            x0, y0 = float(x[0]), float(np.mean(ys))
            base = fa + fb * x0
            a, b = (y0 * fa / base, y0 * fb / base) if base > 0 and fb > 0 else (y0, 0.0)
        slots[n] = Slot(node, cin, cout, a, b)
    return slots
