"""Mixed-precision training on the arrays (Nandakumar et al., Front. Neurosci. 2020; Wu et
al., Adv. Mater. 2023): the weights live only in the devices, updates are accumulated digitally.

Each weight is a differential pair of cells, ``w = (G+ - G-) * w_unit`` with the states in
state LSBs. Per mini-batch:

1. **forward** VMMs on the chip, through any :class:`cimstack.backends.Backend` (the physics
   emulator, the golden model, or the simulated SoC over the link): inputs quantised to the
   chip's input bits, outputs from the ADC;
2. **backward** in digital arithmetic from the weights as the host last read them (the
   transposed read is not wired in the SoC; Nandakumar et al. run it on the array);
3. the weight gradient ``-lr * x^T delta`` is added to a high-precision accumulator ``chi``
   (in state LSBs); ``n = trunc(chi / eps)`` SET pulses go to G+ (n > 0) or G- (n < 0),
   through the device's nonlinear, noisy pulse response; ``chi -= n * eps``. ``eps`` is the
   mean state change of one pulse (at a quarter of the range: SET steps shrink as a cell
   fills, Nandakumar's soft bounds);
4. **refresh**: a pair whose larger cell has passed ``refresh_at`` of the range is
   re-programmed by write-verify to the same difference with the other cell at zero.

``accumulate=False`` is the naive variant the papers compare with: each update is rounded to
whole pulses at once and the remainder thrown away, so updates smaller than half a pulse
are lost. ``MixedPrecisionMLP.float_baseline`` trains the same network, same optimiser, in
floating point. Biases are digital.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import trange

from cimstack.backends import Backend, CellJobs, WriteVerifyParams
from cimstack.chip.datapath import pulse_weights, slice_weights
from cimstack.chip.enums import Polarity
from cimstack.errors import ConfigError
from cimstack.physics.devices import device_model
from cimstack.zoo.datasets import Split

__all__ = ["MixedPrecisionMLP", "MixedPrecisionStats"]


@dataclass
class MixedPrecisionStats:
    """What a run of :meth:`MixedPrecisionMLP.fit` did."""

    epochs: int = 0
    test_accuracy: list[float] = field(default_factory=list)     # after each epoch
    update_pulses: int = 0            # pulses from the chi updates
    refresh_pulses: int = 0           # write-verify pulses of the refreshes
    refreshes: int = 0                # pairs refreshed
    weights: int = 0
    seconds: float = 0.0

    @property
    def pulses_per_weight_per_epoch(self) -> float:
        return (self.update_pulses + self.refresh_pulses) / max(self.weights * self.epochs, 1)

    def as_dict(self) -> dict:
        return dict(self.__dict__, pulses_per_weight_per_epoch=self.pulses_per_weight_per_epoch)


class MixedPrecisionMLP:
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` (ReLU between) with layer ``l`` on tile ``l``.

    ``backend``: where the weights live and the forward VMMs run; its config must use
    differential pairs. Each weight is one pair: with bit-sliced weights, the most significant
    slice's pair (the others stay at zero), so the pulse granularity is a device's own.
    ``w_max``: the weight of a full-scale pair. ``lr``, ``batch_size``: plain SGD.
    ``max_pulses``: most pulses one update may give one cell.
    """

    def __init__(self, backend: Backend, sizes=(64, 32, 10), *, w_max: float = 1.0, lr: float = 0.05,
                 batch_size: int = 16, accumulate: bool = True, refresh_at: float = 0.9, max_pulses: int = 8,
                 range_percentile: float = 99.0, seed: int = 0):
        cfg = backend.cfg
        dp, a = cfg.datapath, cfg.array
        if cfg.mapping.scheme != "differential":
            raise ConfigError(f"mixed-precision training keeps each weight in a differential pair: config "
                              f"{cfg.name!r} uses the {cfg.mapping.scheme!r} scheme")
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or len(sizes) - 1 > a.tiles:
            raise ConfigError(f"{len(sizes) - 1} layers need as many tiles; the chip has {a.tiles}")
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            if n_in > a.rows or n_out > a.cols:
                raise ConfigError(f"layer {i} ({n_in} x {n_out}) does not fit one {a.rows}x{a.cols} array")
        for name, v in (("w_max", w_max), ("lr", lr)):
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} = {v!r} must be positive")
        if not 0 < refresh_at <= 1:
            raise ConfigError(f"refresh_at = {refresh_at!r} must lie in (0, 1]")
        self.backend, self.cfg, self.sizes = backend, cfg, sizes
        self.lr, self.batch_size, self.accumulate = lr, batch_size, accumulate
        self.max_pulses, self.range_percentile, self.seed = max_pulses, range_percentile, seed
        self.full = float((1 << dp.state_bits) - 1)
        self.refresh_level = refresh_at * self.full
        self.w_unit = w_max / self.full
        self.eps = float(device_model(cfg).pulse_step_mean(torch.tensor(self.full / 4), Polarity.SET, 1))
        self.md = dp.mode()
        # output units -> x @ (G+ - G-) in states: undo ADC gain and the code = state >> frac read
        top = dp.slices - 1                          # the pair of the most significant slice
        self.unit_offset, self.slices = top, dp.slices
        self.out_scale = ((1 << cfg.adc.gain_shift) / cfg.adc.gain * float(1 << cfg.cell.frac_bits)
                          / float(1 << (top * cfg.cell.cell_bits)))
        self.conversions = float(pulse_weights(cfg).sum() * slice_weights(cfg).sum())
        gen = torch.Generator().manual_seed(seed)
        self.biases = [torch.zeros(n, dtype=torch.float64) for n in sizes[1:]]
        init = [(torch.rand((n_in, n_out), generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(n_in)
                for n_in, n_out in zip(sizes, sizes[1:])]
        self.chi = [torch.zeros_like(w) for w in init]
        self.ranges: list[float | None] = [None] * len(init)
        self.stats = MixedPrecisionStats(weights=sum(w.numel() for w in init))
        backend.erase(list(range(len(init))), seed)
        self.states = []                                   # host view (n_in, n_out, 2), state LSBs
        for t, w in enumerate(init):
            backend.configure_tile(t, cfg.adc.gain, cfg.adc.offset, 1)
            self.states.append(self._program(t, w / self.w_unit))

    # -- the arrays --------------------------------------------------------------------------------
    def _program(self, tile: int, diff: torch.Tensor, rows=None, cols=None, *, refresh: bool = False) -> torch.Tensor:
        """Write-verify pairs to the state difference ``diff`` (G+ or G- carries it, the other
        cell 0); returns the cells' states as read back (whole layer, or updates ``rows, cols``)."""
        d = torch.clamp(diff, -self.full, self.full).round().to(torch.int64).numpy()
        if rows is None:
            rows, cols = np.meshgrid(np.arange(d.shape[0]), np.arange(d.shape[1]), indexing="ij")
            rows, cols, d = rows.ravel(), cols.ravel(), d.ravel()
        assert cols is not None                            # given together with rows
        pos, neg = np.maximum(d, 0), np.maximum(-d, 0)
        r, u = np.concatenate([rows, rows]), self._unit(np.concatenate([cols, cols]))
        c = np.concatenate([np.zeros_like(rows), np.ones_like(rows)])
        tol = max(1, int(self.eps))
        status, pulses, _ = self.backend.write_verify(tile, CellJobs(r, u, c, np.concatenate([pos, neg]), np.full(len(r), tol)),
                                                      WriteVerifyParams(max_pulses=100, amp_start=1, amp_step=1,
                                                                        amp_max=self.cfg.device.pulse_max_amplitude))
        if refresh:
            self.stats.refresh_pulses += int(pulses.sum())
        read = torch.as_tensor(self.backend.read_cells(tile, r, u, c), dtype=torch.float64)
        if len(self.states) > tile:
            st = self.states[tile]
            st[torch.as_tensor(r), torch.as_tensor(np.concatenate([cols, cols])), torch.as_tensor(c)] = read
            return st
        return read.reshape(2, *diff.shape).permute(1, 2, 0).contiguous()

    def _unit(self, cols: np.ndarray) -> np.ndarray:
        """Physical column unit of logical columns."""
        return np.asarray(cols) * self.slices + self.unit_offset

    def weights(self, layer: int) -> torch.Tensor:
        """The layer's weights as the host last read them."""
        st = self.states[layer]
        return (st[..., 0] - st[..., 1]) * self.w_unit

    def _vmm(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chip's ``x @ W`` for a batch; also the quantised inputs it used."""
        a, md = self.cfg.array, self.md
        x_range = self.ranges[layer]
        if x_range is None or self.training:
            r = float(np.percentile(x.abs().numpy(), self.range_percentile)) or 1.0
            x_range = r if x_range is None else 0.9 * x_range + 0.1 * r
            self.ranges[layer] = x_range
        s_x = x_range / md.in_max
        xi = torch.clamp(torch.round(x / s_x), md.in_min, md.in_max)
        pad = np.zeros((len(x), a.rows), dtype=np.int64)
        pad[:, :x.shape[1]] = xi.to(torch.int64).numpy()
        y = self.backend.vmm(layer, pad)[:, :self.sizes[layer + 1]]
        y = y - self.backend.rounding_bias(self.cfg.adc.gain) * self.conversions
        return y * self.out_scale * s_x * self.w_unit, xi * s_x

    # -- training ------------------------------------------------------------------------------------
    training = False

    @overload
    def forward(self, x: torch.Tensor, keep: Literal[False] = False) -> torch.Tensor: ...
    @overload
    def forward(self, x: torch.Tensor, keep: Literal[True]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]: ...
    @overload
    def forward(self, x: torch.Tensor, keep: bool) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]: ...
    def forward(self, x: torch.Tensor, keep: bool = False):
        acts, h = [], x.to(torch.float64)
        for layer in range(len(self.states)):
            y, xq = self._vmm(layer, h)
            z = y + self.biases[layer]
            acts.append((xq, z))
            h = torch.relu(z) if layer < len(self.states) - 1 else z
        return (h, acts) if keep else h

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        logits, acts = self.forward(x, keep=True)
        delta = (torch.softmax(logits, -1) - F.one_hot(y, logits.shape[-1]).to(torch.float64)) / len(x)
        for layer in reversed(range(len(self.states))):
            xq, z = acts[layer]
            grad_w, grad_b = xq.t() @ delta, delta.sum(0)
            if layer:
                delta = (delta @ self.weights(layer).t()) * (acts[layer - 1][1] > 0)
            self.biases[layer] -= self.lr * grad_b
            self._update(layer, -self.lr * grad_w / self.w_unit)

    def _update(self, layer: int, dstate: torch.Tensor) -> None:
        """Turn a desired state change into pulses (module docstring, step 3)."""
        if self.accumulate:
            self.chi[layer] += dstate
            n = torch.trunc(self.chi[layer] / self.eps)
        else:
            n = torch.round(dstate / self.eps)
        n = torch.clamp(n, -self.max_pulses, self.max_pulses)
        if self.accumulate:
            self.chi[layer] -= n * self.eps
        k = n.abs().to(torch.int64)
        st = self.states[layer]
        for p in range(int(k.max()) if k.numel() else 0):
            r, u = torch.nonzero(k > p, as_tuple=True)
            cell = (n[r, u] < 0).to(torch.int64)
            st[r, u, cell] = torch.as_tensor(self.backend.pulse(layer, r.numpy(), self._unit(u.numpy()), cell.numpy(), Polarity.SET, 1),
                                             dtype=torch.float64)
            self.stats.update_pulses += len(r)
        full = st.amax(dim=-1) > self.refresh_level
        if bool(full.any()):
            r, u = torch.nonzero(full, as_tuple=True)
            diff = (st[r, u, 0] - st[r, u, 1])
            self._program(layer, diff, r.numpy(), u.numpy(), refresh=True)
            self.stats.refreshes += len(r)

    def fit(self, split: Split, epochs: int = 10, progress: bool = False) -> MixedPrecisionStats:
        """Train on ``split`` for ``epochs``; the test accuracy (on the chip) after each epoch."""
        gen = torch.Generator().manual_seed(self.seed)
        n = len(split.y_train)
        t0 = time.perf_counter()
        for _ in trange(epochs, desc="mixed-precision", disable=not progress):
            self.training = True
            for idx in torch.randperm(n, generator=gen).split(self.batch_size):
                self._step(split.x_train[idx].to(torch.float64), split.y_train[idx])
            self.training = False
            self.stats.epochs += 1
            self.stats.test_accuracy.append(self.accuracy(split.x_test, split.y_test))
        self.stats.seconds += time.perf_counter() - t0
        return self.stats

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.forward(x.to(torch.float64)).argmax(-1) == y).double().mean())

    # -- the floating-point twin -----------------------------------------------------------------------
    @staticmethod
    def float_baseline(split: Split, sizes=(64, 32, 10), *, lr: float = 0.05, batch_size: int = 16,
                       epochs: int = 10, seed: int = 0) -> list[float]:
        """The same network, initialisation, batches and SGD in float64; test accuracy per epoch."""
        gen = torch.Generator().manual_seed(seed)
        ws = [(torch.rand((a, b), generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(a)
              for a, b in zip(sizes, sizes[1:])]
        bs = [torch.zeros(b, dtype=torch.float64) for b in sizes[1:]]
        for p in ws + bs:
            p.requires_grad_(True)
        opt = torch.optim.SGD(ws + bs, lr=lr)
        gen = torch.Generator().manual_seed(seed)

        def net(x):
            h = x.to(torch.float64)
            for i, (w, b) in enumerate(zip(ws, bs)):
                h = h @ w + b
                h = torch.relu(h) if i < len(ws) - 1 else h
            return h

        out, n = [], len(split.y_train)
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=gen).split(batch_size):
                opt.zero_grad()
                F.cross_entropy(net(split.x_train[idx]), split.y_train[idx]).backward()
                opt.step()
            with torch.no_grad():
                out.append(float((net(split.x_test).argmax(-1) == split.y_test).double().mean()))
        return out
