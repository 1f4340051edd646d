"""Chip-in-the-loop fine-tuning: the forward pass runs on the chip, the backward in software.

Every Linear/Conv layer of the PyTorch model that the deployment placed on the arrays gets a
forward hook that replaces the layer's output by what the chip computes for the same input
(:meth:`cimstack.Deployment.layer_vmm` on any backend: the physics emulator, the golden
model or the simulated SoC over the link), as ``y_sw + (y_chip - y_sw).detach()``. Values
downstream are therefore the chip's, and gradients are those of the software layer at the
chip's operating point (physics-aware training, Wright et al., Nature 2022; the hybrid
training of Yao et al., Nature 2020, which fine-tunes what the chip cannot be trusted to
hold). The digital parameters (biases, normalisation) are learned against the chip's real
errors; with ``train_weights`` the analog weights are learned too, and the deployment is
recompiled and the chip re-programmed every ``reprogram_every`` steps.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cimstack.backends import Backend
from cimstack.errors import CompileError, ConfigError
from cimstack.runtime.deployment import Deployment
from cimstack.runtime.deployment import compile as compile_model
from cimstack.training.analog import conv_as_matmul
from cimstack.zoo.datasets import Split

__all__ = ["ChipInTheLoop"]


def _module_matrix(mod: nn.Linear | nn.Conv1d | nn.Conv2d) -> np.ndarray:
    w = mod.weight.detach().to(torch.float64)
    return w.reshape(w.shape[0], -1).t().numpy()


class ChipInTheLoop:
    """Fine-tune ``model`` with its forward on ``backend`` through ``deployment``.

    ``deployment`` must have been compiled from ``model``; it is programmed on ``backend``
    here unless ``programmed`` says it already is. ``example`` is the calibration batch used
    when the weights are re-compiled (default: the first 256 training samples of ``fit``).
    """

    def __init__(self, model: nn.Module, deployment: Deployment, backend: Backend, *, programmed: bool = False,
                 program_args: dict | None = None):
        if not isinstance(deployment, Deployment):
            raise ConfigError(f"chip-in-the-loop needs a Deployment, got {type(deployment).__name__}")
        self.model, self.backend = model, backend
        self.program_args = dict(program_args or {})
        self.modules = dict(model.named_modules())
        self._hooks: list = []
        self.reprograms = 0
        self._attach(deployment)
        if not programmed:
            deployment.program(backend, **self.program_args)
            self.reprograms += 1

    # -- hooks ---------------------------------------------------------------------------------------
    def _attach(self, dep: Deployment) -> None:
        """Match each placed layer to its module and hook it."""
        for h in self._hooks:
            h.remove()
        self._hooks, self._hooked, self.deployment = [], [], dep
        for layer in dep.layers:
            node = layer.node
            target = node.origin.split()[1] if " " in node.origin else node.origin
            mod = self.modules.get(target)
            if node.op not in ("linear", "conv") or not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                raise CompileError(f"layer {node.describe()}: chip-in-the-loop training hooks Linear and Conv "
                                   f"modules; this one has no such module in the model")
            m_ir, m_mod = node.matrix(), _module_matrix(mod)
            if m_ir.shape != m_mod.shape:
                raise CompileError(f"layer {node.name}: the deployment ({m_ir.shape}) was not compiled from this model "
                                   f"({m_mod.shape})")
            # a BatchNorm folded into the layer scales its columns: divide it out again
            scale = (m_ir * m_mod).sum(0) / np.maximum((m_mod * m_mod).sum(0), 1e-300)
            scale = np.where(np.abs(scale) > 0, scale, 1.0)
            self._hooks.append(mod.register_forward_hook(self._hook(layer.name, torch.as_tensor(scale))))
            self._hooked.append(mod)

    def _hook(self, name: str, scale: torch.Tensor):
        def hook(mod: nn.Linear | nn.Conv1d | nn.Conv2d, args, out: torch.Tensor) -> torch.Tensor:
            x = args[0].detach().to(torch.float64)
            if isinstance(mod, nn.Linear):
                x2d = x.reshape(-1, mod.in_features)
                y = self.deployment.layer_vmm(name, x2d, self.backend) / scale
                y = y.reshape(*out.shape)
                bias_shape = (1,) * (out.ndim - 1) + (-1,)
            else:
                y = conv_as_matmul(mod, x, lambda p: self.deployment.layer_vmm(name, p, self.backend) / scale)
                bias_shape = (1, -1) + (1,) * (out.ndim - 2)
            if mod.bias is not None:
                y = y + mod.bias.detach().to(torch.float64).reshape(bias_shape)
            return out + (y.to(out.dtype) - out).detach()
        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- use -----------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output with every placed layer computed on the chip (differentiable)."""
        return self.model(x)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
        self.model.eval()
        with torch.no_grad():
            pred = torch.cat([self.model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
        return float((pred == y).double().mean())

    def fit(self, split: Split, *, epochs: int = 2, lr: float = 1e-3, batch_size: int = 64,
            train_weights: bool = False, reprogram_every: int | None = None, example=None,
            seed: int = 0, max_steps: int | None = None) -> dict:
        """Adam on cross-entropy through the chip forward. Trains the digital parameters
        (biases, normalisation), and the analog weights if ``train_weights``, re-programmed
        every ``reprogram_every`` steps (default 1: the gradient is only right while the chip
        holds the weights it is taken for; a CNN drifted to chance when re-programmed once per
        epoch). BatchNorm running statistics stay frozen (the model runs in eval mode): the
        chip's folded weights use them.

        Measured on the emulator: the digits CNN on the default chip went from 92 % to 96 %
        with one epoch of digital-only tuning; an MLP on a chip with 1 % of cells stuck at
        each end from 71 % to 90 % in two epochs of weight training."""
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"epochs = {epochs} and batch_size = {batch_size} must be at least 1")
        analog = {id(mod.weight) for mod in self._hooked}
        params = [p for p in self.model.parameters() if p.requires_grad and (train_weights or id(p) not in analog)]
        if not params:
            raise ConfigError("nothing to train: the model has no digital parameters (pass train_weights=True)")
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        example = split.x_train[:256] if example is None else example
        n = len(split.y_train)
        every = reprogram_every or 1
        history, step, t0 = [], 0, time.perf_counter()
        self.model.eval()
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=gen).split(batch_size):
                opt.zero_grad()
                F.cross_entropy(self.model(split.x_train[idx]), split.y_train[idx]).backward()
                opt.step()
                step += 1
                if train_weights and step % every == 0:
                    self.reprogram(example)
                if max_steps is not None and step >= max_steps:
                    break
            history.append(self.accuracy(split.x_test, split.y_test))
            if max_steps is not None and step >= max_steps:
                break
        return {"test_accuracy": history, "steps": step, "reprograms": self.reprograms,
                "seconds": time.perf_counter() - t0}

    def reprogram(self, example) -> None:
        """Compile the current weights (same chip, strategy and seed) and program the chip."""
        old = self.deployment
        dep = compile_model(self.model, old.cfg, example, seed=old.seed)
        dep.program(self.backend, **self.program_args)
        self.reprograms += 1
        self._attach(dep)
