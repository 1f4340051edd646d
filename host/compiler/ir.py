"""The CIM IR: a model as a list of ops, each either a VMM on crossbar arrays or a digital op.

Both importers (:mod:`.fx` for PyTorch modules, :mod:`.onnx` for ONNX graphs) produce a
:class:`Graph`; the mapper, placer and runtime only ever see this form.

Analog ops (``ANALOG_OPS``) are a matrix-vector product ``x @ M`` on the arrays, followed by
a digital bias add:

* ``linear`` — ``weight`` (out, in), ``bias`` (out,) or None.
* ``conv`` — ``weight`` (out, in, *kernel), ``bias``, ``stride``, ``padding``, ``dilation``
  (tuples, one entry per spatial dim; 1-D or 2-D). Lowered by im2col: one VMM per output
  position, the matrix is ``weight.reshape(out, -1).T``.
* ``lstm`` / ``gru`` — one unidirectional layer (``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` in
  PyTorch's gate order, ``hidden``, ``batch_first``). One VMM per time step on ``[x_t, h]``;
  the gate nonlinearities and the state update are digital. For the GRU the candidate gate
  needs its input and hidden parts apart (``r`` multiplies only the hidden part), so its
  matrix has four column groups ``[r, z, n_x, n_h]`` with zero blocks.

Digital ops run on the host between VMMs: ``relu``, ``sigmoid``, ``tanh``, ``gelu``,
``silu``, ``leaky_relu`` (``negative_slope``), ``hardtanh`` (``min``, ``max``), ``softmax``
/ ``log_softmax`` (``dim``), ``maxpool`` / ``avgpool`` (``kernel``, ``stride``, ``padding``),
``global_avgpool``, ``flatten`` (``start_dim``), ``reshape`` (``shape`` per sample),
``add`` (two inputs), ``affine`` (per-channel ``scale``, ``shift`` on dim 1: a BatchNorm that
could not be folded), ``select`` (``dim``, ``index``), ``mean`` (``dims``, ``keepdim``),
``cat`` (``dim``), ``identity``.

:meth:`Graph.evaluate` runs the graph in float; the analog ops call a ``vmm(node, x2d)``
callback, so the same executor serves the float reference, calibration and every backend.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cimstack.errors import CompileError

__all__ = ["Node", "Graph", "ANALOG_OPS", "DIGITAL_OPS", "Vmm", "float_vmm"]

ANALOG_OPS = ("linear", "conv", "lstm", "gru")
DIGITAL_OPS = ("relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu", "hardtanh", "softmax",
               "log_softmax", "maxpool", "avgpool", "global_avgpool", "flatten", "reshape", "add",
               "affine", "select", "mean", "cat", "identity")

Vmm = Callable[["Node", torch.Tensor], torch.Tensor]


@dataclass
class Node:
    """One op. ``inputs`` name earlier nodes (or the graph input); ``origin`` says where it
    came from in the source model, for messages."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)
    origin: str = ""

    def __post_init__(self):
        if self.op not in ANALOG_OPS + DIGITAL_OPS:
            raise CompileError(f"node {self.name!r}: unknown IR op {self.op!r}")

    @property
    def analog(self) -> bool:
        return self.op in ANALOG_OPS

    def describe(self) -> str:
        return f"{self.name} ({self.origin or self.op})"

    # -- the crossbar view of an analog op --------------------------------------------------
    def matrix(self) -> np.ndarray:
        """The (in_features, out_features) matrix the arrays hold, float64."""
        a = self.attrs
        if self.op == "linear":
            return np.asarray(a["weight"], dtype=np.float64).T
        if self.op == "conv":
            w = np.asarray(a["weight"], dtype=np.float64)
            return w.reshape(w.shape[0], -1).T
        if self.op == "lstm":
            return np.concatenate([a["w_ih"], a["w_hh"]], axis=1).astype(np.float64).T
        if self.op == "gru":
            h = a["hidden"]
            w_ih, w_hh = np.asarray(a["w_ih"], np.float64), np.asarray(a["w_hh"], np.float64)
            n_in = w_ih.shape[1]
            top = np.concatenate([w_ih[:2 * h], w_ih[2 * h:], np.zeros((h, n_in))], axis=0)      # x rows
            bottom = np.concatenate([w_hh[:2 * h], np.zeros((h, h)), w_hh[2 * h:]], axis=0)   # h rows
            return np.concatenate([top, bottom], axis=1).T
        raise CompileError(f"node {self.describe()} is digital and has no crossbar matrix")

    def bias(self) -> np.ndarray:
        """The digital bias added after the VMM, (out_features,) float64."""
        a = self.attrs
        if self.op in ("linear", "conv"):
            out = np.asarray(a["weight"]).shape[0]
            return np.zeros(out) if a.get("bias") is None else np.asarray(a["bias"], dtype=np.float64)
        if self.op == "lstm":
            return np.asarray(a["b_ih"], np.float64) + np.asarray(a["b_hh"], np.float64)
        if self.op == "gru":
            h = a["hidden"]
            b_ih, b_hh = np.asarray(a["b_ih"], np.float64), np.asarray(a["b_hh"], np.float64)
            return np.concatenate([b_ih[:2 * h] + b_hh[:2 * h], b_ih[2 * h:], b_hh[2 * h:]])
        raise CompileError(f"node {self.describe()} is digital and has no bias")

    @property
    def shape(self) -> tuple[int, int]:
        """(in_features, out_features) of an analog op."""
        m = self.matrix()
        return m.shape


def float_vmm(node: Node, x: torch.Tensor) -> torch.Tensor:
    """The exact floating-point VMM: the reference every backend is compared with."""
    m = torch.as_tensor(node.matrix(), dtype=x.dtype, device=x.device)
    return x @ m


@dataclass
class Graph:
    """A model in CIM IR: ``nodes`` in execution order, one input, one output."""

    nodes: list[Node]
    input: str = "input"
    output: str = ""
    name: str = "model"

    def __post_init__(self):
        seen = {self.input}
        for n in self.nodes:
            if n.name in seen:
                raise CompileError(f"node name {n.name!r} is used twice")
            missing = [i for i in n.inputs if i not in seen]
            if missing:
                raise CompileError(f"node {n.describe()} reads {', '.join(missing)}, which no earlier node produces")
            seen.add(n.name)
        if self.output not in seen:
            raise CompileError(f"the graph output {self.output!r} is not produced by any node")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def analog_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.analog]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def summary(self) -> str:
        lines = []
        for n in self.nodes:
            extra = ""
            if n.analog:
                k, m = n.shape
                extra = f"  [{k} x {m} on arrays]"
            lines.append(f"  {n.name:<20s} {n.op:<14s} <- {', '.join(n.inputs)}{extra}")
        return "\n".join(lines)

    def evaluate(self, x: torch.Tensor, vmm: Vmm = float_vmm) -> torch.Tensor:
        """Run the graph on a batch ``x``; analog ops call ``vmm(node, x2d) -> y2d``.

        Each intermediate result is dropped after the last node that reads it: a network's
        activations on a calibration batch would otherwise all be held at once."""
        last_use = {name: i for i, n in enumerate(self.nodes) for name in n.inputs}
        env = {self.input: x}
        for i, n in enumerate(self.nodes):
            args = [env[name] for name in n.inputs]
            env[n.name] = _EXEC[n.op](n, args, vmm)
            del args
            for name in n.inputs:
                if last_use[name] == i and name != self.output:
                    env.pop(name, None)
        return env[self.output]


# -- executors --------------------------------------------------------------------------------

def _bias(node: Node, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(node.bias(), dtype=like.dtype, device=like.device)


def _linear(n: Node, args, vmm: Vmm) -> torch.Tensor:
    x = args[0]
    lead = x.shape[:-1]
    y = vmm(n, x.reshape(-1, x.shape[-1])) + _bias(n, x)
    return y.reshape(*lead, -1)


def _conv(n: Node, args, vmm: Vmm) -> torch.Tensor:
    x, a = args[0], n.attrs
    w_shape = np.asarray(a["weight"]).shape
    out_ch, kernel = w_shape[0], tuple(w_shape[2:])
    if len(kernel) == 1:                          # 1-D: unfold over a dummy height of 1
        x4 = x.unsqueeze(2)
        k2, s2, p2, d2 = (1,) + kernel, (1,) + tuple(a["stride"]), (0,) + tuple(a["padding"]), (1,) + tuple(a["dilation"])
    else:
        x4, k2, s2, p2, d2 = x, kernel, tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"])
    cols = F.unfold(x4, k2, dilation=d2, padding=p2, stride=s2)        # (N, C*k, L)
    oh = (x4.shape[2] + 2 * p2[0] - d2[0] * (k2[0] - 1) - 1) // s2[0] + 1
    ow = (x4.shape[3] + 2 * p2[1] - d2[1] * (k2[1] - 1) - 1) // s2[1] + 1
    patches = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    y = vmm(n, patches) + _bias(n, x)
    y = y.reshape(x.shape[0], oh * ow, out_ch).transpose(1, 2).reshape(x.shape[0], out_ch, oh, ow)
    return y.squeeze(2) if len(kernel) == 1 else y


def _rnn(n: Node, args, vmm: Vmm) -> torch.Tensor:
    x, a = args[0], n.attrs
    if not a.get("batch_first", True):
        x = x.transpose(0, 1)
    batch, steps = x.shape[0], x.shape[1]
    h_size = a["hidden"]
    h = x.new_zeros(batch, h_size)
    c = x.new_zeros(batch, h_size)
    b = _bias(n, x)
    outs = []
    for t in range(steps):
        z = vmm(n, torch.cat([x[:, t], h], dim=1)) + b
        if n.op == "lstm":
            i, f, g, o = z.split(h_size, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            r, u, n_x, n_h = z.split(h_size, dim=1)
            r, u = torch.sigmoid(r), torch.sigmoid(u)
            cand = torch.tanh(n_x + r * n_h)
            h = (1 - u) * cand + u * h
        outs.append(h)
    seq = torch.stack(outs, dim=1)
    return seq if a.get("batch_first", True) else seq.transpose(0, 1)


def _pool(n: Node, args, _vmm) -> torch.Tensor:
    x, a = args[0], n.attrs
    dims = len(a["kernel"])
    fn = {("maxpool", 1): F.max_pool1d, ("maxpool", 2): F.max_pool2d,
          ("avgpool", 1): F.avg_pool1d, ("avgpool", 2): F.avg_pool2d}[(n.op, dims)]
    return fn(x, a["kernel"], a["stride"], a["padding"])


def _affine(n: Node, args, _vmm) -> torch.Tensor:
    x = args[0]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = torch.as_tensor(n.attrs["scale"], dtype=x.dtype).reshape(shape)
    shift = torch.as_tensor(n.attrs["shift"], dtype=x.dtype).reshape(shape)
    return x * scale + shift


def _select(n: Node, args, _vmm) -> torch.Tensor:
    return args[0].select(n.attrs["dim"], n.attrs["index"])


_EXEC = {
    "linear": _linear, "conv": _conv, "lstm": _rnn, "gru": _rnn,
    "relu": lambda n, a, v: F.relu(a[0]),
    "sigmoid": lambda n, a, v: torch.sigmoid(a[0]),
    "tanh": lambda n, a, v: torch.tanh(a[0]),
    "gelu": lambda n, a, v: F.gelu(a[0], approximate=n.attrs.get("approximate", "none")),
    "silu": lambda n, a, v: F.silu(a[0]),
    "leaky_relu": lambda n, a, v: F.leaky_relu(a[0], n.attrs["negative_slope"]),
    "hardtanh": lambda n, a, v: F.hardtanh(a[0], n.attrs["min"], n.attrs["max"]),
    "softmax": lambda n, a, v: F.softmax(a[0], dim=n.attrs["dim"]),
    "log_softmax": lambda n, a, v: F.log_softmax(a[0], dim=n.attrs["dim"]),
    "maxpool": _pool, "avgpool": _pool,
    "global_avgpool": lambda n, a, v: a[0].mean(dim=tuple(range(2, a[0].ndim)), keepdim=True),
    "flatten": lambda n, a, v: a[0].flatten(n.attrs.get("start_dim", 1), n.attrs.get("end_dim", -1)),
    "reshape": lambda n, a, v: a[0].reshape(a[0].shape[0], *n.attrs["shape"]),
    "add": lambda n, a, v: a[0] + a[1],
    "affine": _affine,
    "select": _select,
    "mean": lambda n, a, v: a[0].mean(dim=tuple(n.attrs["dims"]), keepdim=n.attrs.get("keepdim", False)),
    "cat": lambda n, a, v: torch.cat(a, dim=n.attrs["dim"]),
    "identity": lambda n, a, v: a[0],
}
