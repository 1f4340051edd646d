"""Import an ONNX model into the CIM IR.

The graph is walked once in its (checked, topological) node order. Every ONNX tensor gets a
value of one of three kinds:

* a constant — a numpy array (float64 for floating-point data, int64 for integers): the
  initializers, ``Constant`` nodes and the small shape arithmetic exporters emit (``Shape``,
  ``Gather``, ``Unsqueeze``, ``Concat``, ``Expand``, ...), which is folded here;
* an activation, :class:`_Tensor` — an IR value seen through an axis *view*: ``Transpose``,
  ``Unsqueeze`` and the ``num_directions`` axis of ``LSTM``/``GRU`` outputs only re-label
  axes, so they emit no IR node. A view is fine for element-wise ops, ``Gather``/``Squeeze``
  (which become ``select``), ``MatMul``/``Gemm`` on an unmoved last axis, ``Softmax``,
  ``ReduceMean``, ``Concat`` and the RNN input (``Transpose(x, [1, 0, 2])`` into an ``LSTM``
  becomes ``batch_first=True``); every other op, and the graph output, need the plain layout.
  This covers what ``torch.onnx.export(..., dynamo=False)`` emits for ``nn.LSTM``/``nn.GRU``
  with ``batch_first=True`` and ``out[:, -1]`` / ``h_n[-1]``;
* unavailable — a value that cannot be computed (the cell state ``Y_c``, arithmetic on a
  dynamic size, ...). It carries the error, raised only if something needs it; an
  ``Expand``/``ConstantOfShape`` of zeros stays known to be zero (a zero RNN initial state).

A dynamic batch size in a folded shape is the marker ``_BATCH``, which ``Reshape`` accepts as
its first entry: ``x.view(x.size(0), -1)`` imports with and without a fixed batch.

Nodes that nothing reaches from the graph output are dropped, and BatchNormalization
(``affine``) is folded into the Linear/Conv before it like :func:`.fx.from_torch` does.
Anything else raises :class:`~cimstack.errors.CompileError` naming the node and the op.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, overload

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cimstack.compiler.fx import _fold_batchnorm
from cimstack.compiler.ir import Graph, Node
from cimstack.errors import CompileError

__all__ = ["from_onnx"]

_SUPPORTED = ("Gemm, MatMul with a constant weight (+ Add of a constant bias), Conv (1-D/2-D, group=1, "
              "symmetric pads), BatchNormalization (inference), Relu, Sigmoid, Tanh, Gelu, LeakyRelu, x*Sigmoid(x) "
              "(SiLU), Clip, Softmax, LogSoftmax, MaxPool, AveragePool, GlobalAveragePool, Flatten (axis=1), "
              "Reshape (constant shape keeping the batch), Add of two tensors, Concat, Identity, Dropout, Cast, "
              "Gather with one constant index, Squeeze, Unsqueeze, Transpose (views into the ops above), "
              "ReduceMean, LSTM and GRU (one forward layer, zero initial state), constant shape arithmetic")

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


# -- values -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tensor:
    """An activation: the IR value ``name`` seen through ``axes``. ONNX axis ``k`` is IR axis
    ``axes[k]``, or a size-1 axis the IR value does not have where ``axes[k]`` is None.
    ``batch`` is the IR axis that holds the batch; ``via`` names the node that made the view."""

    name: str
    axes: tuple
    batch: int = 0
    via: str = ""

    @property
    def plain(self) -> bool:
        return self.axes == tuple(range(len(self.axes)))

    @property
    def rank(self) -> int:
        """The ONNX rank."""
        return len(self.axes)

    @property
    def ir_rank(self) -> int:
        return sum(a is not None for a in self.axes)


class _Unavailable:
    """A value that cannot be computed; ``error`` is raised where it is needed. ``zero``: it is
    known to be all zeros (a zero initial state of dynamic shape)."""

    def __init__(self, error: CompileError, zero: bool = False):
        self.error, self.zero = error, zero


# The size of a dynamic batch axis in a folded shape: ``Shape`` of an activation gives it, the
# data-movement ops in _MOVES (and Concat) carry it, ``Reshape`` accepts it as its first entry,
# and anything else that meets it gives up (an unavailable value).
_BATCH = -(2 ** 62) + 7
_MOVES = ("Identity", "Gather", "Unsqueeze", "Squeeze", "Slice", "Transpose")


def _has_batch(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == np.int64 and bool((v == _BATCH).any())


def _as_array(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    if a.dtype.kind == "b":
        return a.astype(bool)
    if a.dtype.kind in "fV":
        return a.astype(np.float64)
    return a


def _sanitise(name: str) -> str:
    s = re.sub(r"\W+", "_", name).strip("_") or "t"
    return "t_" + s if s[0].isdigit() else s


def _norm_axis(axis: int, rank: int) -> int:
    a = int(axis)
    if not -rank <= a < rank:
        raise ValueError(f"axis {a} is out of range for rank {rank}")
    return a % rank


def _drop_ir_axis(axes: tuple, dim: int) -> tuple:
    """The view once IR axis ``dim`` is gone (its ONNX axis removed by the caller or here)."""
    return tuple(None if a is None else a - (a > dim) for a in axes if a != dim)


class _Ctx:
    """One ONNX node being converted."""

    def __init__(self, node: onnx.NodeProto, index: int, values: dict):
        self.node = node
        self.op = node.op_type
        self.label = node.name or f"{node.op_type}_{index}"
        self.origin = f"{node.op_type} {self.label}"
        self.attrs = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [s.decode() for s in v]
            self.attrs[a.name] = v
        self.ins = [values[i] if i else None for i in node.input]

    def input(self, i: int):
        return self.ins[i] if i < len(self.ins) else None


# -- the importer -----------------------------------------------------------------------------

class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str):
        self.model, self.g, self.source = model, model.graph, source
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.values: dict[str, object] = {}
        self.nodes: list[Node] = []
        self.used: set[str] = set()
        self.fusable: dict[str, Node] = {}        # ONNX tensor -> the linear node it is the output of
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers = Counter(i for n in self.g.node for i in n.input if i)
        self.consumers.update(o.name for o in self.g.output)
        self.dims = self._infer_dims()

    # -- helpers ----------------------------------------------------------------------------
    def fail(self, c: _Ctx, what: str) -> CompileError:
        return CompileError(f"node {c.label!r} ({what}) cannot be mapped onto the chip; supported: {_SUPPORTED}")

    def fresh(self, name: str) -> str:
        base = _sanitise(name)
        name, k = base, 2
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def emit(self, c: _Ctx, op: str, inputs, name: str | None = None, **attrs) -> str:
        name = self.fresh(name or c.node.output[0] or c.label)
        self.nodes.append(Node(name, op, tuple(inputs), attrs, c.origin))
        return name

    def _infer_dims(self) -> dict[str, list]:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
        except Exception:
            inferred = self.model
        dims = {}
        g = inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return dims

    def tensor(self, c: _Ctx, i: int, role: str = "input") -> _Tensor:
        v = c.input(i)
        if isinstance(v, _Tensor):
            return v
        if isinstance(v, _Unavailable):
            raise v.error
        if v is None:
            raise self.fail(c, f"{c.op} without its {role}")
        raise self.fail(c, f"{c.op} of a constant {role}; only activations computed from the model input")

    def plain(self, c: _Ctx, i: int = 0) -> _Tensor:
        t = self.tensor(c, i)
        if not t.plain:
            axes = "(" + ", ".join("1" if a is None else f"d{a}" for a in t.axes) + ")"
            raise self.fail(c, f"{c.op} of a tensor that {t.via or 'a Transpose/Unsqueeze'} re-arranged to {axes}; "
                               "such views may feed only element-wise ops, Gather, Squeeze, MatMul/Gemm, Softmax, "
                               "ReduceMean, Concat and LSTM/GRU")
        return t

    @overload
    def const(self, c: _Ctx, i: int, role: str, optional: Literal[False] = False) -> np.ndarray: ...
    @overload
    def const(self, c: _Ctx, i: int, role: str, optional: bool) -> np.ndarray | None: ...
    def const(self, c: _Ctx, i: int, role: str, optional: bool = False) -> np.ndarray | None:
        v = c.input(i)
        if v is None and optional:
            return None
        if _has_batch(v) and role != "shape":
            raise self.fail(c, f"{c.op} whose {role} depends on the dynamic batch size")
        if isinstance(v, np.ndarray):
            return v
        if isinstance(v, _Unavailable) and not v.zero:
            raise v.error
        if v is None:
            raise self.fail(c, f"{c.op} without its {role}")
        raise self.fail(c, f"{c.op} whose {role} is computed at run time; it must be a constant (an initializer)")

    def ints(self, c: _Ctx, name: str, input_index: int, since: int):
        """An int-list parameter that moved from an attribute to an input at opset ``since``."""
        if self.opset >= since and input_index < len(c.ins):
            v = self.const(c, input_index, name, optional=True)
            return None if v is None else [int(a) for a in np.ravel(v)]
        v = c.attrs.get(name)
        return None if v is None else [int(a) for a in v]

    def pads(self, c: _Ctx, dims: int) -> tuple[int, ...]:
        auto = c.attrs.get("auto_pad", "NOTSET")
        if auto not in ("NOTSET", "VALID"):
            raise self.fail(c, f"{c.op} with auto_pad={auto}; give explicit pads")
        pads = [int(p) for p in c.attrs.get("pads", [0] * 2 * dims)] if auto == "NOTSET" else [0] * 2 * dims
        if len(pads) != 2 * dims:
            raise self.fail(c, f"{c.op} with pads={pads} for {dims} spatial dims")
        if pads[:dims] != pads[dims:]:
            raise self.fail(c, f"{c.op} with asymmetric pads={pads}; only the same padding at both ends of each axis")
        return tuple(pads[:dims])

    def view(self, t: _Tensor, name: str, axes=None, batch=None, via=None) -> _Tensor:
        return _Tensor(name, t.axes if axes is None else tuple(axes), t.batch if batch is None else batch,
                       t.via if via is None else via)

    def select(self, c: _Ctx, t: _Tensor, k: int, index: int, name: str | None = None) -> _Tensor:
        """Remove ONNX axis ``k`` of ``t`` by taking element ``index`` of it."""
        d = t.axes[k]
        axes = t.axes[:k] + t.axes[k + 1:]
        if d is None:                      # a size-1 view axis
            if index not in (0, -1):
                raise self.fail(c, f"{c.op} of element {index} of a size-1 axis")
            return self.view(t, t.name, axes)
        if d == t.batch:
            raise self.fail(c, f"{c.op} along the batch axis {k}")
        out = self.emit(c, "select", [t.name], name, dim=d, index=int(index))
        return _Tensor(out, _drop_ir_axis(axes, d), t.batch - (d < t.batch), t.via)

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.g
        if len(g.sparse_initializer):
            raise CompileError(f"{self.source}: sparse initializers are not supported")
        for init in g.initializer:
            self.values[init.name] = _as_array(numpy_helper.to_array(init))
        inputs = [i for i in g.input if i.name not in self.values]
        if len(inputs) != 1:
            raise CompileError(f"{self.source} has {len(inputs)} graph inputs ({', '.join(i.name for i in inputs)}); "
                               "the chip runs models with exactly one input")
        if len(g.output) != 1:
            raise CompileError(f"{self.source} has {len(g.output)} graph outputs "
                               f"({', '.join(o.name for o in g.output)}); exactly one is supported")
        x = inputs[0]
        if not x.type.tensor_type.HasField("shape"):
            raise CompileError(f"{self.source}: the graph input {x.name!r} has no shape; export it with a fixed rank")
        input_name = self.fresh(x.name)
        rank = len(x.type.tensor_type.shape.dim)
        self.values[x.name] = _Tensor(input_name, tuple(range(rank)))
        in_dims = self.dims.get(x.name) or [None]
        self.batch_size = in_dims[0] if in_dims else None

        for index, node in enumerate(g.node):
            c = _Ctx(node, index, self.values)
            try:
                outs = self.convert(c)
            except CompileError:
                raise
            except Exception as exc:
                raise CompileError(f"node {c.label!r} ({c.op}) cannot be imported: {exc}") from exc
            if not isinstance(outs, list):
                outs = [outs]
            for k, name in enumerate(node.output):
                if not name:
                    continue
                if k < len(outs) and outs[k] is not None:
                    self.values[name] = outs[k]
                else:
                    self.values[name] = _Unavailable(self.fail(c, f"output {k} ({name!r}) of {c.op}"))
                self.producer[name] = node

        out = self.values[g.output[0].name]
        if isinstance(out, _Unavailable):
            raise out.error
        if not isinstance(out, _Tensor):
            raise CompileError(f"{self.source}: the graph output {g.output[0].name!r} is a constant")
        if not out.plain:
            raise CompileError(f"{self.source}: the graph output {g.output[0].name!r} is a view that "
                               f"{out.via or 'a Transpose/Unsqueeze'} re-arranged; the output must keep the layout "
                               "of the IR value it comes from")
        # keep what the output needs
        needed = {out.name}
        for n in reversed(self.nodes):
            if n.name in needed:
                needed.update(n.inputs)
        nodes = [n for n in self.nodes if n.name in needed]
        graph = Graph(nodes, input_name, out.name, g.name or "model")
        return _fold_batchnorm(graph)

    def convert(self, c: _Ctx):
        if c.node.domain not in ("", "ai.onnx"):
            raise self.fail(c, f"{c.op} from the operator set {c.node.domain!r}")
        if c.op in _FOLD and not any(isinstance(v, _Tensor) for v in c.ins):
            return self.fold(c)
        handler = getattr(self, f"op_{c.op}", None)
        if handler is None:
            raise self.fail(c, c.op)
        return handler(c)

    # -- constant folding -------------------------------------------------------------------
    def fold(self, c: _Ctx):
        ins = list(c.ins)
        for k, v in enumerate(ins):         # the batch-size marker only moves through data-movement ops
            if _has_batch(v) and not (c.op in _MOVES and k == 0 or c.op == "Concat" or (
                    c.op == "Cast" and c.attrs.get("to") == onnx.TensorProto.INT64)):
                ins[k] = _Unavailable(self.fail(c, f"{c.op} of a shape that depends on the dynamic batch size"))
        missing = [v for v in ins if isinstance(v, _Unavailable)]
        if missing:
            if c.op == "Expand" and isinstance(ins[0], np.ndarray) and not ins[0].any():
                return _Unavailable(missing[0].error, zero=True)
            if c.op in ("Expand", "Identity", "Cast") and isinstance(ins[0], _Unavailable) and ins[0].zero:
                return ins[0]
            if c.op == "ConstantOfShape":
                value = c.attrs.get("value")
                if value is None or not numpy_helper.to_array(value).any():
                    return _Unavailable(missing[0].error, zero=True)
            return missing[0]
        return [_as_array(_FOLD[c.op](self, c, *ins))]

    def op_Shape(self, c: _Ctx):             # only reached with an activation input
        x, dims = cast(_Tensor, c.ins[0]), self.dims.get(c.node.input[0])
        if dims and len(dims) == x.rank:     # a dynamic batch becomes the marker _BATCH
            dims = [_BATCH if d is None and x.axes[k] == x.batch else d for k, d in enumerate(dims)]
        if not dims or any(d is None for d in dims):
            return _Unavailable(self.fail(c, "Shape of a tensor whose size is not fixed; export the model with a "
                                             "fixed input shape or use Flatten"))
        return _shape_slice(c, dims)

    # -- analog ops -------------------------------------------------------------------------
    def linear(self, c: _Ctx, x: _Tensor, weight: np.ndarray, bias: np.ndarray | None) -> _Tensor:
        if x.axes[-1] is None or x.axes[-1] != max(a for a in x.axes if a is not None):
            raise self.fail(c, f"{c.op} over an axis that a Transpose moved away from the last IR axis")
        out = self.emit(c, "linear", [x.name], weight=weight, bias=bias)
        self.fusable[c.node.output[0]] = self.nodes[-1]
        return self.view(x, out)

    def op_Gemm(self, c: _Ctx):
        if isinstance(c.ins[0], _Tensor) and isinstance(c.ins[1], _Tensor):
            raise self.fail(c, "Gemm of two tensors; the crossbar holds a constant weight matrix B")
        x = self.tensor(c, 0, "input A")
        b = self.const(c, 1, "weight B")
        bias = self.const(c, 2, "bias C", optional=True)
        a = c.attrs
        if a.get("transA", 0):
            raise self.fail(c, "Gemm with transA=1; the activation must be A, not transposed")
        if b.ndim != 2:
            raise self.fail(c, f"Gemm with a {b.ndim}-D weight")
        weight = (b if a.get("transB", 0) else b.T) * float(a.get("alpha", 1.0))
        if bias is not None:
            n_out = weight.shape[0]
            if bias.size not in (1, n_out) or (bias.ndim == 2 and bias.shape[0] != 1) or bias.ndim > 2:
                raise self.fail(c, f"Gemm with a bias C of shape {bias.shape}; only a per-output bias ({n_out},)")
            bias = np.broadcast_to(bias.reshape(-1), (n_out,)) * float(a.get("beta", 1.0))
        return self.linear(c, x, np.ascontiguousarray(weight), None if bias is None else np.array(bias))

    def op_MatMul(self, c: _Ctx):
        if isinstance(c.ins[0], _Tensor) and isinstance(c.ins[1], _Tensor):
            raise self.fail(c, "MatMul of two tensors; the crossbar holds a constant weight, so one side must "
                               "be an initializer")
        if isinstance(c.ins[1], _Tensor):
            raise self.fail(c, "MatMul with the constant on the left; only x @ W with a constant W")
        x = self.tensor(c, 0, "input A")
        w = self.const(c, 1, "weight B")
        if w.ndim != 2:
            raise self.fail(c, f"MatMul with a {w.ndim}-D constant; only a 2-D weight matrix")
        return self.linear(c, x, np.ascontiguousarray(w.T), None)

    def op_Conv(self, c: _Ctx):
        x = self.plain(c, 0)
        w = self.const(c, 1, "weight")
        b = self.const(c, 2, "bias", optional=True)
        dims = w.ndim - 2
        if dims not in (1, 2):
            raise self.fail(c, f"Conv with a {dims}-D kernel; only 1-D and 2-D convolutions")
        group = int(c.attrs.get("group", 1))
        if group != 1:
            raise self.fail(c, f"Conv with group={group}; only group=1 maps onto one crossbar matrix")
        kernel = c.attrs.get("kernel_shape")
        if kernel is not None and tuple(kernel) != w.shape[2:]:
            raise self.fail(c, f"Conv with kernel_shape={kernel} but a weight of shape {w.shape}")
        if x.ir_rank != dims + 2:
            raise self.fail(c, f"Conv{dims}d of a {x.ir_rank}-D input")
        stride = tuple(int(s) for s in c.attrs.get("strides", [1] * dims))
        dilation = tuple(int(s) for s in c.attrs.get("dilations", [1] * dims))
        out = self.emit(c, "conv", [x.name], weight=w, bias=b, stride=stride, padding=self.pads(c, dims),
                        dilation=dilation)
        return self.view(x, out)

    def rnn(self, c: _Ctx, lstm: bool):
        gates = 4 if lstm else 3
        x = self.tensor(c, 0, "input X")
        w, r = self.const(c, 1, "weight W"), self.const(c, 2, "weight R")
        b = self.const(c, 3, "bias B", optional=True)
        a = c.attrs
        direction = a.get("direction", "forward")
        if direction != "forward" or w.shape[0] != 1:
            raise self.fail(c, f"{c.op} with direction={direction}; only one forward direction")
        if c.input(4) is not None:
            raise self.fail(c, f"{c.op} with sequence_lens; all sequences must have the full length")
        roles = ((5, "initial_h"), (6, "initial_c"), (7, "peepholes P")) if lstm else ((5, "initial_h"),)
        for k, role in roles:
            v = c.input(k)
            zero = v is None or (isinstance(v, _Unavailable) and v.zero) or (isinstance(v, np.ndarray) and not v.any())
            if not zero:
                raise self.fail(c, f"{c.op} with a non-zero {role}; only zero initial states, no peepholes")
        if "clip" in a or a.get("input_forget", 0):
            raise self.fail(c, f"{c.op} with clip or input_forget")
        default = ["sigmoid", "tanh", "tanh"] if lstm else ["sigmoid", "tanh"]
        acts = [s.lower() for s in a.get("activations", default)]
        if acts != default:
            raise self.fail(c, f"{c.op} with activations={a['activations']}")
        if not lstm and int(a.get("linear_before_reset", 0)) != 1:
            raise self.fail(c, "GRU with linear_before_reset=0; the chip's GRU (PyTorch's) applies the reset gate "
                               "after the recurrent matrix (linear_before_reset=1)")
        h = int(a.get("hidden_size", r.shape[-1]))
        n_in = w.shape[2]
        if w.shape != (1, gates * h, n_in) or r.shape != (1, gates * h, h) or (
                b is not None and b.shape != (1, 2 * gates * h)):
            raise self.fail(c, f"{c.op} with inconsistent shapes W {w.shape}, R {r.shape}, "
                               f"B {None if b is None else b.shape}, hidden_size={h}")
        order = [0, 2, 3, 1] if lstm else [1, 0, 2]     # ONNX iofc -> torch ifgo; ONNX zrh -> torch rzn

        def torch_order(m: np.ndarray) -> np.ndarray:
            return np.concatenate([m[k * h:(k + 1) * h] for k in order], axis=0)

        bias = b[0] if b is not None else np.zeros(2 * gates * h)
        layout = int(a.get("layout", 0))
        if x.rank != 3 or None in x.axes or x.axes[2] != 2:
            raise self.fail(c, f"{c.op} of a {x.rank}-D input or one with a moved feature axis")
        t_ir, n_ir = (x.axes[0], x.axes[1]) if layout == 0 else (x.axes[1], x.axes[0])
        seq_name = c.node.output[0] if len(c.node.output) > 0 and c.node.output[0] else f"{c.label}_Y"
        seq = self.emit(c, "lstm" if lstm else "gru", [x.name], seq_name,
                        w_ih=torch_order(w[0]), w_hh=torch_order(r[0]),
                        b_ih=torch_order(bias[:gates * h]), b_hh=torch_order(bias[gates * h:]),
                        hidden=h, batch_first=n_ir == 0)
        y_axes = (t_ir, None, n_ir, 2) if layout == 0 else (n_ir, t_ir, None, 2)
        via = f"the {c.op} node {c.label!r}"
        outs = [_Tensor(seq, y_axes, n_ir, via), None,
                _Unavailable(self.fail(c, "the cell state Y_c of LSTM; use the output sequence Y or Y_h"))]
        if len(c.node.output) > 1 and c.node.output[1]:
            last = self.emit(c, "select", [seq], c.node.output[1], dim=t_ir, index=-1)
            outs[1] = _Tensor(last, (None, 0, 1) if layout == 0 else (0, None, 1), 0, via)
        return outs

    def op_LSTM(self, c: _Ctx):
        return self.rnn(c, lstm=True)

    def op_GRU(self, c: _Ctx):
        return self.rnn(c, lstm=False)

    # -- digital ops ------------------------------------------------------------------------
    def unary(self, c: _Ctx, op: str, **attrs) -> _Tensor:
        x = self.tensor(c, 0)
        return self.view(x, self.emit(c, op, [x.name], **attrs))

    def op_Relu(self, c):
        return self.unary(c, "relu")

    def op_Sigmoid(self, c):
        return self.unary(c, "sigmoid")

    def op_Tanh(self, c):
        return self.unary(c, "tanh")

    def op_Gelu(self, c):
        approx = c.attrs.get("approximate", "none")
        return self.unary(c, "gelu", **({} if approx == "none" else {"approximate": approx}))

    def op_LeakyRelu(self, c):
        return self.unary(c, "leaky_relu", negative_slope=float(c.attrs.get("alpha", 0.01)))

    def op_Clip(self, c):
        if self.opset < 11:
            lo, hi = c.attrs.get("min"), c.attrs.get("max")
        else:
            lo, hi = (self.const(c, k, role, optional=True) for k, role in ((1, "min"), (2, "max")))
        lo = -np.inf if lo is None else float(np.asarray(lo).reshape(()))
        hi = np.inf if hi is None else float(np.asarray(hi).reshape(()))
        if lo == -np.inf and hi == np.inf:
            return self.unary(c, "identity")
        if lo == 0.0 and hi == np.inf:
            return self.unary(c, "relu")
        return self.unary(c, "hardtanh", min=lo, max=hi)

    def op_Identity(self, c):
        return self.unary(c, "identity")

    def op_Dropout(self, c):
        training = c.input(2)
        if training is not None and (not isinstance(training, np.ndarray) or training.any()):
            raise self.fail(c, "Dropout in training mode")
        return self.unary(c, "identity")

    def op_Cast(self, c):
        if c.attrs.get("to") not in _FLOAT_TYPES:
            raise self.fail(c, "Cast of an activation to a non-floating-point type")
        return self.unary(c, "identity")

    def op_Mul(self, c):
        names = c.node.input
        if len(names) == 2 and all(isinstance(v, _Tensor) for v in c.ins):
            for k in (0, 1):
                p = self.producer.get(names[1 - k])
                if p is not None and p.op_type == "Sigmoid" and p.input[0] == names[k]:
                    x = self.tensor(c, k)
                    return self.view(x, self.emit(c, "silu", [x.name]))
        raise self.fail(c, "Mul; only x * Sigmoid(x) (SiLU) is supported")

    def softmax(self, c: _Ctx, op: str) -> _Tensor:
        x = self.tensor(c, 0)
        axis = _norm_axis(c.attrs.get("axis", -1 if self.opset >= 13 else 1), x.rank)
        if self.opset < 13 and axis != x.rank - 1:
            raise self.fail(c, f"{c.op} with axis={axis} at opset {self.opset} (it flattens the axes from there "
                               "on); only the last axis")
        d = x.axes[axis]
        if d is None or d == x.batch:
            raise self.fail(c, f"{c.op} over axis {axis}, the batch or a size-1 axis")
        return self.view(x, self.emit(c, op, [x.name], dim=d))

    def op_Softmax(self, c):
        return self.softmax(c, "softmax")

    def op_LogSoftmax(self, c):
        return self.softmax(c, "log_softmax")

    def pool(self, c: _Ctx, op: str) -> _Tensor:
        x = self.plain(c, 0)
        kernel = tuple(int(k) for k in c.attrs["kernel_shape"])
        dims = len(kernel)
        if dims not in (1, 2) or x.ir_rank != dims + 2:
            raise self.fail(c, f"{c.op} with kernel_shape={list(kernel)} on a {x.ir_rank}-D input; only 1-D and 2-D")
        if c.attrs.get("ceil_mode", 0) or any(d != 1 for d in c.attrs.get("dilations", [1] * dims)):
            raise self.fail(c, f"{c.op} with ceil_mode=1 or dilations; only ceil_mode=0 and no dilation")
        stride = tuple(int(s) for s in c.attrs.get("strides", [1] * dims))
        pads = self.pads(c, dims)
        if any(2 * p > k for p, k in zip(pads, kernel)):
            raise self.fail(c, f"{c.op} with pads={list(pads)} larger than half the kernel {list(kernel)}")
        if op == "avgpool" and any(pads) and not c.attrs.get("count_include_pad", 0):
            raise self.fail(c, "AveragePool with pads and count_include_pad=0; the chip's average pooling counts "
                               "the zero padding (count_include_pad=1)")
        return self.view(x, self.emit(c, op, [x.name], kernel=kernel, stride=stride, padding=pads))

    def op_MaxPool(self, c):
        return self.pool(c, "maxpool")

    def op_AveragePool(self, c):
        return self.pool(c, "avgpool")

    def op_GlobalAveragePool(self, c):
        x = self.plain(c, 0)
        return self.view(x, self.emit(c, "global_avgpool", [x.name]))

    def op_BatchNormalization(self, c):
        x = self.plain(c, 0)
        gamma, beta = self.const(c, 1, "scale"), self.const(c, 2, "bias B")
        mean, var = self.const(c, 3, "running mean"), self.const(c, 4, "running variance")
        if c.attrs.get("training_mode", 0) or (self.opset < 9 and c.attrs.get("spatial", 1) != 1):
            raise self.fail(c, "BatchNormalization in training mode or with spatial=0")
        inv = gamma / np.sqrt(var + float(c.attrs.get("epsilon", 1e-5)))
        return self.view(x, self.emit(c, "affine", [x.name], scale=inv, shift=beta - mean * inv))

    def op_Flatten(self, c):
        x = self.plain(c, 0)
        axis = _norm_axis(c.attrs.get("axis", 1), x.rank) if x.rank else 0
        if axis != 1 or x.batch != 0:
            raise self.fail(c, f"Flatten with axis={c.attrs.get('axis', 1)}; only axis=1 keeps the batch")
        return _Tensor(self.emit(c, "flatten", [x.name], start_dim=1), (0, 1))

    def op_Reshape(self, c):
        x = self.plain(c, 0)
        shape = [int(s) for s in self.const(c, 1, "shape")]
        allowzero = c.attrs.get("allowzero", 0)
        first, rest = (shape[0], shape[1:]) if shape else (None, [])
        keeps_batch = first in (-1, _BATCH) or (first == 0 and not allowzero) or (
            self.batch_size is not None and first == self.batch_size)
        if not keeps_batch or x.batch != 0 or rest.count(-1) + (first == -1) > 1 or any(s < -1 for s in rest):
            raise self.fail(c, f"Reshape to {shape}; the first entry must keep the batch (0, -1 or the batch size "
                               f"{self.batch_size}) and at most one entry may be -1")
        in_dims = self.dims.get(c.node.input[0])
        for k, s in enumerate(rest):
            if s == 0:
                if allowzero or not in_dims or k + 1 >= len(in_dims) or in_dims[k + 1] is None:
                    raise self.fail(c, f"Reshape to {shape} with a 0 (copy) entry for an axis of unknown size")
                rest[k] = in_dims[k + 1]
        if in_dims and all(d is not None for d in in_dims[1:]) and -1 not in rest:
            if int(np.prod(in_dims[1:])) != int(np.prod(rest)):
                raise self.fail(c, f"Reshape of {in_dims} to {shape}, which changes the batch dimension")
        if rest == [-1]:
            return _Tensor(self.emit(c, "flatten", [x.name], start_dim=1), (0, 1))
        return _Tensor(self.emit(c, "reshape", [x.name], shape=tuple(rest)), tuple(range(1 + len(rest))))

    def op_Add(self, c):
        a, b = c.ins
        if isinstance(a, _Tensor) and isinstance(b, _Tensor):
            if a.axes == b.axes and a.batch == b.batch:
                axes = a.axes
            elif a.plain and b.plain:
                axes = tuple(range(max(a.rank, b.rank)))
            else:
                raise self.fail(c, "Add of two tensors laid out differently by Transpose/Unsqueeze")
            return _Tensor(self.emit(c, "add", [a.name, b.name]), axes, a.batch, a.via)
        k = 0 if isinstance(a, _Tensor) else 1
        x, const, src = c.ins[k], c.ins[1 - k], c.node.input[k]
        if isinstance(x, _Tensor) and isinstance(const, np.ndarray):
            node = self.fusable.get(src)
            if node is not None and self.consumers[src] == 1:
                n_out = np.asarray(node.attrs["weight"]).shape[0]
                if const.ndim <= x.rank and all(s == 1 for s in const.shape[:-1]) and (
                        const.ndim == 0 or const.shape[-1] in (1, n_out)):
                    node.attrs["bias"] = node.bias() + np.broadcast_to(const.reshape(-1), (n_out,))
                    node.origin += f" + Add {c.label}"
                    self.fusable[c.node.output[0]] = node
                    return x
        for v in (a, b):
            if isinstance(v, _Unavailable):
                raise v.error
        raise self.fail(c, "Add of a constant; only a bias right after MatMul/Gemm, or the sum of two tensors")

    def op_Concat(self, c):
        xs = [self.tensor(c, k) for k in range(len(c.ins))]
        if any(x.axes != xs[0].axes or x.batch != xs[0].batch for x in xs):
            raise self.fail(c, "Concat of tensors laid out differently by Transpose/Unsqueeze")
        axis = _norm_axis(c.attrs["axis"], xs[0].rank)
        d = xs[0].axes[axis]
        if d is None or d == xs[0].batch:
            raise self.fail(c, f"Concat along axis {axis}, the batch or an added size-1 axis")
        return self.view(xs[0], self.emit(c, "cat", [x.name for x in xs], dim=d))

    def op_Gather(self, c):
        x = self.tensor(c, 0, "data")
        idx = self.const(c, 1, "indices")
        if idx.size != 1 or idx.ndim > 1 or idx.dtype.kind not in "iu":
            raise self.fail(c, f"Gather with indices of shape {idx.shape}; only one constant index")
        k = _norm_axis(c.attrs.get("axis", 0), x.rank)
        t = self.select(c, x, k, int(idx.reshape(())))
        if idx.ndim == 1:                  # the axis stays, with size 1
            t = self.view(t, t.name, t.axes[:k] + (None,) + t.axes[k:])
        return t

    def op_Squeeze(self, c):
        x = self.tensor(c, 0)
        axes = self.ints(c, "axes", 1, 13)
        if axes is None:
            dims = self.dims.get(c.node.input[0])
            if not dims or None in dims:
                raise self.fail(c, "Squeeze without axes of a tensor of unknown shape")
            axes = [k for k, d in enumerate(dims) if d == 1]
        ks = sorted({_norm_axis(a, x.rank) for a in axes}, reverse=True)
        for n, k in enumerate(ks):
            last = n == len(ks) - 1
            x = self.select(c, x, k, 0, None if last else f"{c.node.output[0]}_{k}")
        return x

    def op_Unsqueeze(self, c):
        x = self.tensor(c, 0)
        axes = cast(list[int], self.ints(c, "axes", 1, 13))    # required: an attribute, an input from opset 13
        rank = x.rank + len(axes)
        view = list(x.axes)
        for k in sorted(_norm_axis(a, rank) for a in axes):
            view.insert(k, None)
        return self.view(x, x.name, view, via=f"the Unsqueeze node {c.label!r}")

    def op_Transpose(self, c):
        x = self.tensor(c, 0)
        perm = c.attrs.get("perm", list(range(x.rank))[::-1])
        return self.view(x, x.name, [x.axes[p] for p in perm], via=f"the Transpose node {c.label!r}")

    def op_ReduceMean(self, c):
        x = self.tensor(c, 0)
        axes = self.ints(c, "axes", 1, 18)
        if not axes:
            if c.attrs.get("noop_with_empty_axes", 0):
                return self.unary(c, "identity")
            raise self.fail(c, "ReduceMean over all axes, the batch included")
        ks = sorted({_norm_axis(a, x.rank) for a in axes})
        keep = bool(c.attrs.get("keepdims", 1))
        dims = sorted(x.axes[k] for k in ks if x.axes[k] is not None)
        if x.batch in dims:
            raise self.fail(c, "ReduceMean over the batch axis")
        name = self.emit(c, "mean", [x.name], dims=tuple(dims), keepdim=keep) if dims else x.name
        if keep:
            return self.view(x, name)
        view = tuple(a - sum(d < a for d in dims) if a is not None else None
                     for k, a in enumerate(x.axes) if k not in ks)
        return self.view(x, name, view, batch=x.batch - sum(d < x.batch for d in dims))


# -- constant folding of shape arithmetic --------------------------------------------------------

def _axes_of(imp: _Importer, c: _Ctx, since: int):
    if imp.opset >= since:
        v = c.input(1)
        return None if v is None else [int(a) for a in np.ravel(v)]
    v = c.attrs.get("axes")
    return None if v is None else [int(a) for a in v]


def _fold_constant(imp, c: _Ctx):
    a = c.attrs
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key in ("value_float", "value_int"):
        if key in a:
            return np.array(a[key])
    for key in ("value_floats", "value_ints"):
        if key in a:
            return np.array(list(a[key]))
    raise imp.fail(c, f"Constant with {', '.join(a)}; only numeric tensors")


def _shape_slice(c: _Ctx, dims) -> np.ndarray:
    return np.array(dims, dtype=np.int64)[c.attrs.get("start", 0):c.attrs.get("end")]


def _fold_cast(imp, c: _Ctx, x):
    to = c.attrs["to"]
    if to in _FLOAT_TYPES:
        return np.asarray(x, np.float64)
    if to == onnx.TensorProto.BOOL:
        return np.asarray(x).astype(bool)
    return np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(to))


def _fold_unsqueeze(imp, c: _Ctx, x, *_):
    axes = cast(list[int], _axes_of(imp, c, 13))         # Unsqueeze requires axes (opset 13: an input)
    rank = np.ndim(x) + len(axes)
    for k in sorted(_norm_axis(ax, rank) for ax in axes):
        x = np.expand_dims(x, k)
    return x


def _fold_squeeze(imp, c: _Ctx, x, *_):
    axes = _axes_of(imp, c, 13)
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(_norm_axis(ax, np.ndim(x)) for ax in axes))


def _fold_reshape(imp, c: _Ctx, x, shape):
    shape = [int(s) for s in shape]
    if not c.attrs.get("allowzero", 0):
        shape = [np.shape(x)[k] if s == 0 else s for k, s in enumerate(shape)]
    return np.reshape(x, shape)


def _fold_slice(imp, c: _Ctx, x, *args):
    if imp.opset >= 10:
        starts, ends = [int(v) for v in args[0]], [int(v) for v in args[1]]
        axes = [int(v) for v in args[2]] if len(args) > 2 and args[2] is not None else list(range(len(starts)))
        steps = [int(v) for v in args[3]] if len(args) > 3 and args[3] is not None else [1] * len(starts)
    else:
        starts, ends = c.attrs["starts"], c.attrs["ends"]
        axes = c.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * np.ndim(x)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[_norm_axis(ax, np.ndim(x))] = slice(s, e, st)
    return np.asarray(x)[tuple(index)]


def _fold_div(imp, c: _Ctx, a, b):
    if np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        return np.trunc(np.asarray(a) / np.asarray(b)).astype(np.int64)
    return np.asarray(a) / np.asarray(b)


def _fold_constant_of_shape(imp, c: _Ctx, shape):
    value = c.attrs.get("value")
    v = numpy_helper.to_array(value).reshape(()) if value is not None else np.float32(0)
    return np.full([int(s) for s in shape], v)


_FOLD = {
    "Constant": _fold_constant,
    "Identity": lambda imp, c, x: x,
    "Cast": _fold_cast,
    "Shape": lambda imp, c, x: _shape_slice(c, np.shape(x)),
    "Gather": lambda imp, c, x, i: np.take(x, i, axis=c.attrs.get("axis", 0)),
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Concat": lambda imp, c, *xs: np.concatenate([np.atleast_1d(x) for x in xs], axis=c.attrs["axis"]),
    "Reshape": _fold_reshape,
    "Expand": lambda imp, c, x, s: np.broadcast_to(x, np.broadcast_shapes(np.shape(x), tuple(map(int, s)))).copy(),
    "ConstantOfShape": _fold_constant_of_shape,
    "Transpose": lambda imp, c, x: np.transpose(x, c.attrs.get("perm")),
    "Slice": _fold_slice,
    "Add": lambda imp, c, a, b: np.add(a, b),
    "Sub": lambda imp, c, a, b: np.subtract(a, b),
    "Mul": lambda imp, c, a, b: np.multiply(a, b),
    "Div": _fold_div,
}


# -- loading ----------------------------------------------------------------------------------

def _load(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        source = f"ONNX model {model.graph.name!r}"
        proto, check = model, model
    elif isinstance(model, (bytes, bytearray, memoryview)):
        source = "ONNX model (bytes)"
        try:
            proto = onnx.load_model_from_string(bytes(model))
        except Exception as exc:
            raise CompileError(f"cannot parse the ONNX model bytes: {exc}") from exc
        check = proto
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        source = f"ONNX file '{path}'"
        if not path.is_file():
            raise CompileError(f"ONNX file '{path}' does not exist")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:
            raise CompileError(f"cannot read ONNX file '{path}': {exc}") from exc
        check = str(path)
    else:
        raise CompileError(f"from_onnx expects an onnx.ModelProto, a file path or bytes, got {type(model).__name__}")
    try:
        onnx.checker.check_model(check)
    except Exception as exc:
        raise CompileError(f"{source} is not a valid ONNX model: {exc}") from exc
    return proto, source


def from_onnx(model) -> Graph:
    """The CIM IR of an ONNX model: an ``onnx.ModelProto``, a file path or the serialised bytes."""
    proto, source = _load(model)
    return _Importer(proto, source).run()
