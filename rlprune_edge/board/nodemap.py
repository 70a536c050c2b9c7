"""Map nodes a runtime executed (fused, renamed, re-laid-out) back to the ONNX model's nodes.

Matching uses the graph, not name strings: (1) weights — an executed node consuming an
initializer that is the original's (same name, or the same multiset of non-zero values after
ORT's NCHWc reorder/zero-padding) covers the original node consuming it; (2) tensors — an executed
node whose inputs and outputs are original tensors covers the original subgraph between them;
(3) fusion — an unclaimed elementwise original node whose producer is covered by an executed node
is attributed to the latest such executed node (Conv+Relu, Conv+Add+Relu fusions).
"""

from __future__ import annotations

import hashlib

import numpy as np

try:
    from .onnx_lite import Graph, Node
except ImportError:  # run as a plain script in a copied folder
    from onnx_lite import Graph, Node  # type: ignore[no-redef]

WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "QLinearConv", "MatMulInteger"}
LAYOUT_OPS = {"ReorderInput", "ReorderOutput", "Transpose", "MemcpyToHost", "MemcpyFromHost", "Reshape"}


def fingerprint(arr: np.ndarray) -> str | None:
    """A layout-independent fingerprint of a float weight (sorted non-zero values); None if trivial."""
    if arr.size <= 1 or arr.dtype.kind != "f":
        return None
    nz = np.sort(arr[arr != 0].astype(np.float32).ravel())
    if nz.size == 0:
        return None
    return hashlib.sha1(nz.tobytes()).hexdigest()


def _initializer_map(orig: Graph, opt: Graph) -> dict[str, str]:
    """Executed-graph initializer name -> original initializer name."""
    by_fp: dict[str, list[str]] = {}
    for name, arr in orig.initializers.items():
        fp = fingerprint(arr)
        if fp is not None:
            by_fp.setdefault(fp, []).append(name)
    out: dict[str, str] = {}
    for name, arr in opt.initializers.items():
        if name in orig.initializers and (
            orig.initializers[name].size == 0 or fingerprint(orig.initializers[name]) == fingerprint(arr)
        ):
            out[name] = name
            continue
        fp = fingerprint(arr)
        if fp is not None and fp in by_fp:
            out[name] = by_fp[fp][0]
    return out


def map_nodes(orig: Graph, opt: Graph) -> dict[str, list[str]]:
    """Executed node name -> names of the original ONNX nodes it computes (original topological order)."""
    order = {n.name: i for i, n in enumerate(orig.nodes)}
    producer: dict[str, Node] = {t: n for n in orig.nodes for t in n.outputs}
    consumers: dict[str, list[Node]] = {}
    for n in orig.nodes:
        for t in n.inputs:
            consumers.setdefault(t, []).append(n)
    orig_tensors = set(producer) | set(orig.inputs) | set(orig.initializers)
    init_map = _initializer_map(orig, opt)
    opt_index = {n.name: i for i, n in enumerate(opt.nodes)}
    claim: dict[str, str] = {}  # original node -> executed node

    # (1) weights
    for n in opt.nodes:
        for t in n.inputs:
            src = init_map.get(t)
            arr = opt.initializers.get(t)
            if src is None or arr is None or arr.size <= 1:
                continue
            cands = [c for c in consumers.get(src, []) if c.name not in claim]
            weighted = [c for c in cands if c.op_type in WEIGHTED_OPS]
            pick = (weighted or cands)[:1]
            for c in pick:
                claim[c.name] = n.name
            if pick:
                break

    # (2) tensors: executed node bounded by original tensors covers the subgraph between them
    claimed_opt = set(claim.values())
    for n in opt.nodes:
        if n.name in claimed_opt or n.op_type in LAYOUT_OPS and n.domain:
            continue
        ins = {init_map.get(t, t) for t in n.inputs if t}
        if not n.outputs or not all(t in orig_tensors for t in ins):
            continue
        if not all(t in producer for t in n.outputs):
            continue
        found: list[str] = []
        stack = [producer[t] for t in n.outputs]
        seen: set[str] = set()
        ok = True
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.name in claim:
                ok = False
                break
            found.append(node.name)
            for t in node.inputs:
                if t and t not in ins and t in producer:
                    stack.append(producer[t])
            if len(found) > 64:
                ok = False
                break
        if ok and found:
            for name in found:
                claim[name] = n.name

    # (3) fusion: attach unclaimed non-weighted nodes to the latest executed node covering a producer
    changed = True
    while changed:
        changed = False
        for node in orig.nodes:
            if node.name in claim or node.op_type in WEIGHTED_OPS or node.op_type in ("Constant",):
                continue
            owners = [claim[producer[t].name] for t in node.inputs if t in producer and producer[t].name in claim]
            if owners:
                claim[node.name] = max(owners, key=lambda o: opt_index.get(o, -1))
                changed = True

    out: dict[str, list[str]] = {n.name: [] for n in opt.nodes}
    for orig_name, opt_name in claim.items():
        out.setdefault(opt_name, []).append(orig_name)
    for names in out.values():
        names.sort(key=lambda s: order.get(s, 0))
    return out
