"""Import a PyTorch module into the CIM IR through ``torch.fx.symbolic_trace``.

Leaf modules (Linear, Conv, BatchNorm, activations, pooling, Flatten, LSTM/GRU) and the
common functional and method calls become IR nodes; BatchNorm is folded into the preceding
Linear/Conv when that layer feeds nothing else, otherwise it stays as a digital ``affine``.
Anything else raises :class:`~cimstack.errors.CompileError` naming the node and the op.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import cast, overload

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import Argument

from cimstack.compiler.ir import Graph, Node
from cimstack.errors import CompileError

__all__ = ["from_torch"]

_ACT_MODULES = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu",
                nn.SiLU: "silu", nn.Dropout: "identity", nn.Identity: "identity"}
_ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
              torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu", F.silu: "silu", F.dropout: "identity"}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_SUPPORTED = ("Linear, Conv1d, Conv2d (groups=1), BatchNorm1d/2d, ReLU, ReLU6, Sigmoid, Tanh, GELU, SiLU, "
              "LeakyReLU, Hardtanh, Softmax, LogSoftmax, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d(1), "
              "Flatten, Dropout, Identity, LSTM, GRU (one unidirectional layer), +, cat, flatten, view/reshape, "
              "mean, indexing with one integer")


_LEAVES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LSTM, nn.GRU)


@overload
def _np(t: torch.Tensor) -> np.ndarray: ...
@overload
def _np(t: torch.Tensor | None) -> np.ndarray | None: ...
def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().to(torch.float64).numpy().copy()


def _pair(v, dims: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with subclasses of the mapped layers (e.g. the hardware-aware training
    layers of :mod:`cimstack.training`) kept as leaves like the torch.nn originals."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


class _Importer:
    def __init__(self, model: nn.Module):
        self.model = model
        try:
            self.gm = torch.fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
        except Exception as exc:
            raise CompileError(f"torch.fx cannot trace {type(model).__name__}: {exc}") from exc
        self.modules = dict(self.gm.named_modules())
        self.nodes: list[Node] = []
        self.values: dict[str, object] = {}     # fx node name -> IR value name, a tuple, or ("size", ...)
        self.input = None
        self.output = None

    # -- helpers ----------------------------------------------------------------------------
    def fail(self, node: torch.fx.Node, what: str) -> CompileError:
        return CompileError(f"node {node.name!r} ({what}) cannot be mapped onto the chip; supported: {_SUPPORTED}")

    def value(self, node: torch.fx.Node, arg) -> str:
        if not isinstance(arg, torch.fx.Node):
            raise CompileError(f"node {node.name!r} ({node.op} {node.target}): argument {arg!r} must be a tensor")
        v = self.values[arg.name]
        if isinstance(v, tuple) and v[0] == "c_n":
            raise self.fail(node, f"the cell state c_n of LSTM {v[1]!r}; use the output sequence or h_n")
        if not isinstance(v, str):
            raise CompileError(f"node {node.name!r} uses {arg.name!r}, which is not a tensor here ({v!r})")
        return v

    def first(self, node: torch.fx.Node) -> str:
        """The IR value of ``node``'s first argument."""
        return self.value(node, node.args[0])

    def emit(self, fx_node: torch.fx.Node, op: str, inputs, origin: str, **attrs) -> str:
        self.nodes.append(Node(fx_node.name, op, tuple(inputs), attrs, origin))
        self.values[fx_node.name] = fx_node.name
        return fx_node.name

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> Graph:
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if self.input is not None:
                    raise CompileError(f"node {n.name!r}: models with more than one input are not supported")
                self.input = n.name
                self.values[n.name] = n.name
            elif n.op == "call_module":
                self.call_module(n)
            elif n.op == "call_function":
                self.call_function(n)
            elif n.op == "call_method":
                self.call_method(n)
            elif n.op == "get_attr":
                raise self.fail(n, f"a raw parameter or buffer {n.target!r} used in a functional call")
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise CompileError(f"node {n.name!r}: the model must return one tensor, not {type(out).__name__}")
                self.output = self.value(n, out)
        graph = Graph(self.nodes, self.input or "input", self.output or "", type(self.model).__name__)
        return _fold_batchnorm(graph)

    def call_module(self, n: torch.fx.Node) -> None:
        mod = self.modules[cast(str, n.target)]              # call_module: the module's qualified name
        kind = type(mod).__name__
        origin = f"{kind} {n.target}"
        x = self.value(n, n.args[0]) if n.args else None
        learned = getattr(mod, "learned_input_range", None)     # hardware-aware trained layers
        extra = {} if learned is None else {"input_range": learned}
        if isinstance(mod, nn.Linear):
            self.emit(n, "linear", [x], origin, weight=_np(mod.weight), bias=_np(mod.bias), **extra)
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            dims = 1 if isinstance(mod, nn.Conv1d) else 2
            if mod.groups != 1:
                raise self.fail(n, f"{origin} with groups={mod.groups}; only groups=1 maps onto one crossbar matrix")
            if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
                raise self.fail(n, f"{origin} with padding={mod.padding!r}, padding_mode={mod.padding_mode!r}; "
                                   "give integer zero padding")
            self.emit(n, "conv", [x], origin, weight=_np(mod.weight), bias=_np(mod.bias),
                      stride=_pair(mod.stride, dims), padding=_pair(mod.padding, dims),
                      dilation=_pair(mod.dilation, dims), **extra)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.running_mean is None:
                raise self.fail(n, f"{origin} without running statistics (track_running_stats=False)")
            scale = _np(mod.weight) if mod.affine else np.ones(mod.num_features)
            shift = _np(mod.bias) if mod.affine else np.zeros(mod.num_features)
            running_var = cast(torch.Tensor, mod.running_var)   # registered together with running_mean
            inv = scale / np.sqrt(_np(running_var) + mod.eps)
            self.emit(n, "affine", [x], origin, scale=inv, shift=shift - _np(mod.running_mean) * inv)
        elif type(mod) in _ACT_MODULES:
            self.emit(n, _ACT_MODULES[type(mod)], [x], origin)
        elif isinstance(mod, nn.ReLU6):
            self.emit(n, "hardtanh", [x], origin, min=0.0, max=6.0)
        elif isinstance(mod, nn.Hardtanh):
            self.emit(n, "hardtanh", [x], origin, min=float(mod.min_val), max=float(mod.max_val))
        elif isinstance(mod, nn.LeakyReLU):
            self.emit(n, "leaky_relu", [x], origin, negative_slope=float(mod.negative_slope))
        elif isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            if mod.dim is None:
                raise self.fail(n, f"{origin} without an explicit dim")
            self.emit(n, "softmax" if isinstance(mod, nn.Softmax) else "log_softmax", [x], origin, dim=mod.dim)
        elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
            self.pool(n, "maxpool" if "Max" in kind else "avgpool", x, origin, mod.kernel_size, mod.stride,
                      mod.padding, 1 if kind.endswith("1d") else 2, getattr(mod, "dilation", 1),
                      mod.ceil_mode, getattr(mod, "count_include_pad", True))
        elif isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            size = _pair(mod.output_size, 1 if kind.endswith("1d") else 2)
            if any(s != 1 for s in size):
                raise self.fail(n, f"{origin} with output_size={mod.output_size}; only global pooling (1) is supported")
            self.emit(n, "global_avgpool", [x], origin)
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1:
                raise self.fail(n, f"{origin} with start_dim={mod.start_dim}; the batch dimension must stay")
            self.emit(n, "flatten", [x], origin, start_dim=1, end_dim=mod.end_dim)
        elif isinstance(mod, (nn.LSTM, nn.GRU)):
            self.rnn(n, mod, x, origin)
        else:
            raise self.fail(n, f"module {n.target!r} of type {kind}")

    def pool(self, n, op, x, origin, kernel, stride, padding, dims, dilation, ceil_mode, count_include_pad) -> None:
        if ceil_mode or _pair(dilation, dims) != (1,) * dims or not count_include_pad:
            raise self.fail(n, f"{origin} with ceil_mode/dilation/count_include_pad other than the defaults")
        stride = kernel if stride is None or stride == [] else stride
        self.emit(n, op, [x], origin, kernel=_pair(kernel, dims), stride=_pair(stride, dims),
                  padding=_pair(padding, dims))

    def rnn(self, n, mod, x, origin) -> None:
        if mod.num_layers != 1 or mod.bidirectional or getattr(mod, "proj_size", 0):
            raise self.fail(n, f"{origin} with num_layers={mod.num_layers}, bidirectional={mod.bidirectional}; "
                               "stack single-layer unidirectional modules instead")
        if len(n.args) > 1 and n.args[1] is not None:
            raise self.fail(n, f"{origin} called with an initial state; only zero initial states are supported")
        h = mod.hidden_size
        zeros = np.zeros(len(mod.weight_ih_l0))
        self.nodes.append(Node(n.name, "lstm" if isinstance(mod, nn.LSTM) else "gru", (x,), dict(
            # the layer-0 parameters are set by name (setattr), so their types are not declared
            w_ih=_np(cast(torch.Tensor, mod.weight_ih_l0)), w_hh=_np(cast(torch.Tensor, mod.weight_hh_l0)),
            b_ih=_np(cast(torch.Tensor, mod.bias_ih_l0)) if mod.bias else zeros,
            b_hh=_np(cast(torch.Tensor, mod.bias_hh_l0)) if mod.bias else zeros,
            hidden=h, batch_first=bool(mod.batch_first)), origin))
        # the module returns (output, h_n) or (output, (h_n, c_n))
        self.values[n.name] = ("rnn", n.name, bool(mod.batch_first), isinstance(mod, nn.LSTM))

    def getitem(self, n: torch.fx.Node) -> None:
        src, index = n.args
        v = self.values[cast(torch.fx.Node, src).name]      # traced from a Proxy: src is a Node
        if isinstance(v, tuple) and v[0] == "rnn":          # (output, h_n) or (output, (h_n, c_n))
            _, rnn_name, batch_first, is_lstm = v
            if index == 0:
                self.values[n.name] = rnn_name
            elif index == 1 and is_lstm:
                self.values[n.name] = ("lstm_state", rnn_name, batch_first)
            elif index == 1:
                self.h_n(n, rnn_name, batch_first)
            else:
                raise self.fail(n, f"index {index} into the output of an RNN")
            return
        if isinstance(v, tuple) and v[0] == "lstm_state":
            if index == 0:
                self.h_n(n, v[1], v[2])
            else:                # c_n: an error only if something uses it
                self.values[n.name] = ("c_n", v[1])
            return
        if isinstance(v, tuple) and v[0] == "h_n":
            if index not in (0, -1):
                raise self.fail(n, f"index {index} into h_n of a single-layer RNN")
            self.values[n.name] = v[1]
            return
        if isinstance(v, tuple) and v[0] == "size":
            raise self.fail(n, "indexing a shape")
        x = self.value(n, src)
        idx = index if isinstance(index, tuple) else (index,)
        ints = [(d, i) for d, i in enumerate(idx) if isinstance(i, int)]
        if len(ints) != 1 or any(not (isinstance(i, int) or i == slice(None)) for i in idx):
            raise self.fail(n, f"indexing with {index!r}; only one integer index with full slices is supported")
        dim, i = ints[0]
        if dim == 0:
            raise self.fail(n, "indexing the batch dimension")
        self.emit(n, "select", [x], f"getitem {index!r}", dim=dim, index=i)

    def h_n(self, n: torch.fx.Node, rnn_name: str, batch_first: bool) -> None:
        """h_n of a one-layer RNN is the output's last step; it is kept as (N, H) and marked so
        that ``h_n[0]``, ``h_n[-1]`` and ``h_n.squeeze(0)`` (the only uses we map) select it."""
        self.emit(n, "select", [rnn_name], f"h_n of {rnn_name}", dim=1 if batch_first else 0, index=-1)
        self.values[n.name] = ("h_n", n.name)

    def call_function(self, n: torch.fx.Node) -> None:
        f = n.target
        name = getattr(f, "__name__", str(f))
        if f is operator.getitem:
            return self.getitem(n)
        if f in (operator.add, torch.add) or (f is operator.iadd):
            a, b = n.args[:2]
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or n.kwargs.get("alpha", 1) != 1:
                raise self.fail(n, "add with a constant or alpha; only the sum of two tensors (residual) is supported")
            self.emit(n, "add", [self.value(n, a), self.value(n, b)], "add")
            return
        if f in _ACT_FUNCS:
            self.emit(n, _ACT_FUNCS[f], [self.first(n)], name)
            return
        if f is torch.flatten:
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            if start != 1:
                raise self.fail(n, f"torch.flatten with start_dim={start}; the batch dimension must stay")
            self.emit(n, "flatten", [self.first(n)], "flatten", start_dim=1, end_dim=end)
            return
        if f is torch.cat:
            tensors = cast(Sequence[Argument], n.args[0])       # torch.cat's list (or tuple) of tensors
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            if dim == 0:
                raise self.fail(n, "torch.cat along the batch dimension")
            self.emit(n, "cat", [self.value(n, t) for t in tensors], "cat", dim=dim)
            return
        if f in (F.max_pool2d, F.avg_pool2d, F.max_pool1d, F.avg_pool1d):
            op = "maxpool" if "max" in name else "avgpool"
            kernel = n.args[1] if len(n.args) > 1 else n.kwargs["kernel_size"]
            stride = n.args[2] if len(n.args) > 2 else n.kwargs.get("stride")
            padding = n.args[3] if len(n.args) > 3 else n.kwargs.get("padding", 0)
            self.pool(n, op, self.first(n), name, kernel, stride, padding, 1 if "1d" in name else 2,
                      n.kwargs.get("dilation", 1), n.kwargs.get("ceil_mode", False),
                      n.kwargs.get("count_include_pad", True))
            return
        if f in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d):
            size = n.args[1] if len(n.args) > 1 else n.kwargs["output_size"]
            if any(s != 1 for s in _pair(size, 2)):
                raise self.fail(n, f"{name} with output_size={size}; only global pooling (1) is supported")
            self.emit(n, "global_avgpool", [self.first(n)], name)
            return
        if f in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            if dim is None:
                raise self.fail(n, f"{name} without an explicit dim")
            self.emit(n, "log_softmax" if "log" in name else "softmax", [self.first(n)], name, dim=dim)
            return
        raise self.fail(n, f"function {name}")

    def call_method(self, n: torch.fx.Node) -> None:
        m = cast(str, n.target)                              # call_method: the method's name
        if m == "size":
            self.values[n.name] = ("size",) + tuple(n.args[1:])
            return
        v = self.values.get(n.args[0].name) if isinstance(n.args[0], torch.fx.Node) else None
        if isinstance(v, tuple) and v[0] == "h_n" and m == "squeeze" and tuple(n.args[1:]) in ((0,), ()):
            self.values[n.name] = v[1]
            return
        x = self.value(n, n.args[0])
        if m in _ACT_METHODS:
            self.emit(n, _ACT_METHODS[m], [x], f"Tensor.{m}")
        elif m in ("view", "reshape"):
            shape = n.args[1:]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = tuple(shape[0])
            first = shape[0] if shape else None
            batch_kept = (isinstance(first, torch.fx.Node) and self.values.get(first.name) == ("size", 0)) or first == -1
            rest = shape[1:]
            if not batch_kept or not all(isinstance(s, int) for s in rest) or (first == -1 and -1 in rest):
                raise self.fail(n, f"Tensor.{m}{tuple(shape)!r}; keep the batch dimension as x.size(0) and give the rest as integers")
            self.emit(n, "reshape", [x], f"Tensor.{m}", shape=tuple(rest))
        elif m == "flatten":
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            if start != 1:
                raise self.fail(n, f"Tensor.flatten with start_dim={start}; the batch dimension must stay")
            self.emit(n, "flatten", [x], "Tensor.flatten", start_dim=1, end_dim=n.args[2] if len(n.args) > 2 else -1)
        elif m == "mean":
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else tuple(cast(Sequence[Argument], dims or ()))   # int(s)
            if not dims or 0 in dims:
                raise self.fail(n, "Tensor.mean over the batch dimension or all dimensions")
            self.emit(n, "mean", [x], "Tensor.mean", dims=dims, keepdim=bool(n.kwargs.get("keepdim", False)))
        elif m in ("contiguous", "clone", "detach"):
            self.emit(n, "identity", [x], f"Tensor.{m}")
        elif m in ("add", "add_"):
            other = n.args[1]
            if not isinstance(other, torch.fx.Node):
                raise self.fail(n, "Tensor.add of a constant")
            self.emit(n, "add", [x, self.value(n, other)], "Tensor.add")
        else:
            raise self.fail(n, f"method Tensor.{m}")


def _fold_batchnorm(graph: Graph) -> Graph:
    """Fold an ``affine`` (BatchNorm) into the Linear/Conv before it when nothing else reads
    that layer: ``W' = W * s`` per output channel, ``b' = b * s + t``."""
    removed: dict[str, str] = {}
    kept = []
    by_name = {n.name: n for n in graph.nodes}
    for n in graph.nodes:
        n.inputs = tuple(removed.get(i, i) for i in n.inputs)
        src = by_name.get(n.inputs[0]) if n.op == "affine" else None
        if (src is not None and src.op in ("linear", "conv") and len(graph.consumers(src.name)) == 1
                and np.asarray(src.attrs["weight"]).shape[0] == len(n.attrs["scale"])):
            s, t = np.asarray(n.attrs["scale"]), np.asarray(n.attrs["shift"])
            w = np.asarray(src.attrs["weight"])
            src.attrs["weight"] = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
            b = src.bias()
            src.attrs["bias"] = b * s + t
            src.origin += f" + folded {n.origin}"
            removed[n.name] = src.name
            continue
        kept.append(n)
    output = removed.get(graph.output, graph.output)
    return Graph(kept, graph.input, output, graph.name)


def from_torch(model: nn.Module) -> Graph:
    """The CIM IR of ``model`` (in eval mode; its parameters are copied)."""
    if not isinstance(model, nn.Module):
        raise CompileError(f"expected a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    root = model
    if isinstance(model, _LEAVES):           # a bare layer: trace it as the only child
        root = nn.Sequential(model)
    try:
        return _Importer(root).run()
    finally:
        model.train(was_training)
