"""A minimal ONNX reader (protobuf wire format, numpy only) for boards without the `onnx` package.

Reads what the runner needs: graph inputs with shapes, nodes (name, op, domain, inputs, outputs,
integer attributes) and float initializers. Unknown fields are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_FLOAT = 1
_FLOAT16 = 10
_DOUBLE = 11


@dataclass
class Node:
    """One ONNX node."""

    name: str = ""
    op_type: str = ""
    domain: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    attrs: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Graph:
    """The parts of an ONNX graph the runner uses."""

    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: dict[str, list[int | str]]
    outputs: list[str]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) for each field; value is int or bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, val


def _ints(wt: int, val) -> list[int]:
    if wt == 0:
        return [val - (1 << 64) if val >= 1 << 63 else val]
    out, pos = [], 0
    while pos < len(val):
        v, pos = _varint(val, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


def _tensor(buf: bytes) -> tuple[str, np.ndarray | None]:
    dims: list[int] = []
    dtype = 0
    name = ""
    raw = None
    floats: list[bytes] = []
    for num, wt, val in _fields(buf):
        if num == 1:
            dims.extend(_ints(wt, val))
        elif num == 2:
            dtype = val
        elif num == 4:
            floats.append(val)
        elif num == 8:
            name = val.decode()
        elif num == 9:
            raw = val
    np_dtype = {_FLOAT: np.float32, _FLOAT16: np.float16, _DOUBLE: np.float64}.get(dtype)
    if np_dtype is None:
        return name, None
    if raw is not None:
        arr = np.frombuffer(raw, dtype=np_dtype)
    elif floats and dtype == _FLOAT:
        arr = np.frombuffer(b"".join(floats), dtype="<f4")
    else:
        return name, None
    count = int(np.prod(dims)) if dims else 1
    if arr.size != count:
        return name, None
    return name, arr.reshape(dims) if dims else arr


def _attribute(buf: bytes) -> tuple[str, list[int]]:
    name, ints = "", []
    for num, wt, val in _fields(buf):
        if num == 1:
            name = val.decode()
        elif num == 3:
            ints.append(_ints(wt, val)[0])
        elif num == 8:
            ints.extend(_ints(wt, val))
    return name, ints


def _node(buf: bytes) -> Node:
    n = Node()
    for num, _wt, val in _fields(buf):
        if num == 1:
            n.inputs.append(val.decode())
        elif num == 2:
            n.outputs.append(val.decode())
        elif num == 3:
            n.name = val.decode()
        elif num == 4:
            n.op_type = val.decode()
        elif num == 7:
            n.domain = val.decode()
        elif num == 5:
            key, ints = _attribute(val)
            if ints:
                n.attrs[key] = ints
    return n


def _value_info(buf: bytes) -> tuple[str, list[int | str]]:
    name, shape = "", []
    for num, _wt, val in _fields(buf):
        if num == 1:
            name = val.decode()
        elif num == 2:  # TypeProto
            for tnum, _, tval in _fields(val):
                if tnum == 1:  # tensor_type
                    for snum, _, sval in _fields(tval):
                        if snum == 2:  # TensorShapeProto
                            for dnum, _, dval in _fields(sval):
                                if dnum == 1:
                                    dim: int | str = "?"
                                    for fnum, _, fval in _fields(dval):
                                        if fnum == 1:
                                            dim = fval
                                        elif fnum == 2:
                                            dim = fval.decode()
                                    shape.append(dim)
    return name, shape


def parse_graph(data: bytes) -> Graph:
    """Parse a serialized ModelProto."""
    graph_buf = None
    for num, wt, val in _fields(data):
        if num == 7 and wt == 2:
            graph_buf = val
    if graph_buf is None:
        raise ValueError("no graph in the file")
    nodes, inits, inputs, outputs = [], {}, {}, []
    for num, _wt, val in _fields(graph_buf):
        if num == 1:
            nodes.append(_node(val))
        elif num == 5:
            name, arr = _tensor(val)
            if arr is not None:
                inits[name] = arr
            else:
                inits.setdefault(name, np.zeros(0, np.float32))
        elif num == 11:
            name, shape = _value_info(val)
            inputs[name] = shape
        elif num == 12:
            outputs.append(_value_info(val)[0])
    for name in inits:
        inputs.pop(name, None)
    return Graph(nodes=nodes, initializers=inits, inputs=inputs, outputs=outputs)


def load_graph(path: str | Path) -> Graph:
    """Parse an ONNX file."""
    return parse_graph(Path(path).read_bytes())
