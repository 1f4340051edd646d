"""Every pass of a layer in one batched VMM on the occupied part of the arrays: the fast path.

A deployed layer fills a few blocks of each array: the word lines that receive its inputs and
the columns it reads are usually a small part of a tile (6-29 % for the zoo's models).
:class:`RegionStack` holds, for a list of *regions* (a tile, the word lines driven, the logical
columns read), the per-unit analog weights and read-noise variances of just those cells
(:meth:`TileEmulator.region_weights`), zero-padded to one size, so that one batched matmul
computes every pass at once. Everything that makes it a chip stays: per input pulse and per
weight slice an analog column sum, per-read device noise (its variance from the rows each
pulse drives) and output noise per conversion, the ADC's gain, offset, rounding and
saturation, the shift-add and the tile's post-processing registers.

It equals :meth:`TileEmulator.vmm` on the whole array in distribution, and bit for bit
without noise, where :attr:`TileEmulator.region_exact` holds (ideal wires, no I-V offset,
per-read noise); callers use the whole-array path otherwise. Two things differ in how the
numbers are drawn, not in what they are: the read and output noise of one conversion are one
Gaussian draw with the summed variance (both are independent Gaussians added to the same
sum), and the draws come from the first region's tile's read generator in one tensor.

The weights are computed in float64 (from float32 cell states too) and cast to ``dtype``
(float32 by default): column sums of integer weights stay exact below 2**24, ADC codes are
small integers, the pulses' shift-add runs in float64 wherever it could pass 2**24, and the
slices' shift-add and post-processing run in float64, so ideal devices give the same
integers as the float64 reference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from cimstack.chip.datapath import pulse_weights, slice_weights
from cimstack.physics.converters import post_process
from cimstack.physics.tile import TileEmulator

__all__ = ["RegionStack", "Workspace"]


class Workspace:
    """Scratch memory that successive :meth:`RegionStack.vmm` calls reuse.

    A fresh multi-megabyte tensor costs a page fault per 4 KiB on first touch, as much as
    drawing its noise; one workspace per backend keeps the largest digit, sum and noise
    buffers a layer needed and hands out views of them.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` in buffer ``name`` (grown when too small)."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buf[:size].view(shape)


class RegionStack:
    """The cells a list of VMM passes reads, stacked; :meth:`vmm` runs them all.

    ``regions``: one ``(tile emulator, rows, cols)`` per pass, ``rows`` the physical word
    lines in input order and ``cols`` the logical columns read in output order (int64
    tensors). The stack remembers the cell-state tensors it was built from: :meth:`current`
    tells whether they are still the tiles' (a program, pulse or state load replaces or
    modifies them).
    """

    def __init__(self, regions: Sequence[tuple[TileEmulator, torch.Tensor, torch.Tensor]], *, mode: str = "physical",
                 t: float | None = None, drift_compensation: bool = False, dtype: torch.dtype = torch.float32):
        if not regions:
            raise ValueError("a RegionStack needs at least one region")
        self.emus = [e for e, _, _ in regions]
        self.mode, self.dtype = mode, dtype
        self.device = self.emus[0].device
        self._sources = [self._state_of(e) for e in self.emus]
        self._post: tuple[list, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        parts = [e.region_weights(r, c, mode=mode, t=t, drift_compensation=drift_compensation) for e, r, c in regions]
        n = len(regions)
        r_max = max(int(w.shape[0]) for w, _, _ in parts)
        u_max = max(int(w.shape[1]) for w, _, _ in parts)
        c_max = max(int(c.numel()) for _, _, c in regions)
        # each pass's logical columns, padded with column 0 (for the post-processing registers)
        self.cols = torch.zeros((n, c_max), dtype=torch.int64, device=self.device)
        self.widths = [int(c.numel()) for _, _, c in regions]
        for i, (_, _, c) in enumerate(regions):
            self.cols[i, :c.numel()] = c.to(self.device)
        self.w = torch.zeros((n, r_max, u_max), dtype=dtype, device=self.device)
        with_noise = any(v is not None for _, v, _ in parts)
        self.var = torch.zeros_like(self.w) if with_noise else None
        offset_scheme = self.emus[0].cfg.datapath.cells_per_unit == 1
        self.ref_var = torch.zeros((n, r_max, 1), dtype=dtype, device=self.device) \
            if with_noise and offset_scheme else None
        for i, (w, var, ref_var) in enumerate(parts):
            r, u = w.shape
            self.w[i, :r, :u] = w
            if self.var is not None and var is not None:
                self.var[i, :r, :u] = var
            if self.ref_var is not None and ref_var is not None:
                self.ref_var[i, :r] = ref_var

    def _post_registers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each pass's post-processing bias and scale at its columns (float64, (n, 1, cols))
        and ReLU flag ((n, 1, 1)), kept while the tiles' registers are the same tensors."""
        now = [(e.bias, e.scale, (e.bias._version, e.scale._version, e.relu)) for e in self.emus]
        cached = self._post
        if cached is None or any(a[0] is not b[0] or a[1] is not b[1] or a[2] != b[2] for a, b in zip(cached[0], now)):
            bias = torch.stack([e.bias[c] for e, c in zip(self.emus, self.cols)]).to(torch.float64).unsqueeze(1)
            scale = torch.stack([e.scale[c] for e, c in zip(self.emus, self.cols)]).to(torch.float64).unsqueeze(1)
            relu = torch.tensor([e.relu for e in self.emus], device=self.device).reshape(-1, 1, 1)
            cached = self._post = (now, (bias, scale, relu))
        return cached[1]

    @staticmethod
    def _products(d: torch.Tensor, m: torch.Tensor, out: torch.Tensor, *, add: bool) -> torch.Tensor:
        """``out[i] (+)= d[i] @ m[i]`` for every pass ``i``; below ``d``'s rows (pulses that
        drive nothing: their sums are exactly zero) ``out`` is left as it is, or zeroed."""
        k = d.shape[1]
        for i in range(d.shape[0]):
            if add:
                out[i, :k].addmm_(d[i], m[i])
            else:
                torch.mm(d[i], m[i], out=out[i, :k])
        if not add:
            out[:, k:] = 0.0
        return out

    @staticmethod
    def _state_of(e: TileEmulator) -> list[tuple[torch.Tensor | None, int]]:
        return [(v, -1 if v is None else v._version) for v in (e.state, e.stuck, e.nu, e.ref_state, e.ref_nu)]

    def current(self) -> bool:
        """True while every tile still holds the cell state this stack was built from."""
        for e, src in zip(self.emus, self._sources):
            for (old, ver), new in zip(src, (e.state, e.stuck, e.nu, e.ref_state, e.ref_nu)):
                if old is not new or (new is not None and new._version != ver):
                    return False
        return True

    def vmm(self, x: torch.Tensor, *, noise: bool = True, integer_noise: bool = True,
            input_mode: str | None = None, workspace: Workspace | None = None) -> torch.Tensor:
        """Post-processed outputs (passes, batch, max cols) of integer inputs ``x``.

        ``x``: (passes, batch, max rows) integers, each pass's inputs in its ``rows`` order,
        zero beyond them (checked by the caller: :meth:`cimstack.backends.Backend.vmm_regions`).
        Columns beyond a pass's ``cols`` are zero. ``noise`` and ``integer_noise`` as in
        :meth:`TileEmulator.vmm` (integer noise: datapath mode). ``workspace``: where the
        scratch tensors live (default: fresh ones).
        """
        ws = Workspace() if workspace is None else workspace
        e0 = self.emus[0]
        cfg, n, dt = e0.cfg, len(self.emus), self.dtype
        batch, r_max = x.shape[1], x.shape[2]
        md = cfg.datapath.mode(input_mode)
        pulses = md.pulses
        live = e0.dac.live_pulses(x, input_mode)
        d = e0.dac.pulse_digits(x, input_mode, dtype=dt, dim=1, first=live,
                                out=ws.take("digits", (n, live, batch, r_max), dt, self.device))
        if self.mode == "physical":
            d = e0.devices.iv(d)
        d = d.reshape(n, live * batch, r_max)
        rows, units = pulses * batch, self.w.shape[2]
        # the noise of every conversion first, then the column sums added onto it
        s = ws.take("sums", (n, rows, units), dt, self.device)                  # (n, P*B, U)
        gen = e0.gens["read"]
        sigma_out = cfg.device.output_noise_lsb if noise else 0.0
        if self.mode == "physical" and noise and self.var is not None:
            d2 = d * d                               # read noise: variance from the rows each pulse drives
            sd = self._products(d2, self.var, ws.take("sd", (n, rows, units), dt, self.device), add=False)
            s.normal_(generator=gen).mul_(sd.add_(sigma_out ** 2).sqrt_())
            if self.ref_var is not None:             # one reference column per row, shared by the units
                sd_r = self._products(d2, self.ref_var, ws.take("sd_ref", (n, rows, 1), dt, self.device), add=False)
                s.sub_(sd_r.sqrt_().mul_(torch.empty_like(sd_r).normal_(generator=gen)))
        elif sigma_out > 0:
            s.normal_(0.0, sigma_out, generator=gen)
            if self.mode == "datapath" and integer_noise:
                s.add_(0.5).floor_()                 # the RTL adds integer noise samples
        else:
            s.zero_()
        self._products(d, self.w, s, add=True)
        # ADC per pass (each tile's gain and offset registers): floor(s*gain + 1/2) + offset, saturated
        gains = {e.adc.scale for e in self.emus}
        halves = {e.adc.offset + 0.5 for e in self.emus}
        if len(gains) == 1 and len(halves) == 1:
            s.mul_(gains.pop()).add_(halves.pop())
        else:
            s.mul_(torch.tensor([e.adc.scale for e in self.emus], dtype=dt, device=self.device).reshape(n, 1, 1))
            s.add_(torch.tensor([e.adc.offset + 0.5 for e in self.emus], dtype=dt, device=self.device).reshape(n, 1, 1))
        codes = s.floor_().clamp_(e0.adc.code_min, e0.adc.code_max)
        # shift-add: the pulses' codes weighted in one product (in float64 where the weighted
        # sums could pass 2**24, beyond float32's integers), then the slices
        weights = pulse_weights(cfg, md.name)
        biggest = max(-e0.adc.code_min, e0.adc.code_max) * int(np.abs(weights).sum())
        acc_dt = dt if biggest < 1 << 24 else torch.float64
        pw = torch.as_tensor(weights, dtype=acc_dt, device=self.device)
        acc = torch.matmul(pw, codes.reshape(n, pulses, -1).to(acc_dt))      # (n, B*U)
        acc = acc.to(torch.float64).reshape(n, batch, -1, cfg.datapath.slices)
        y = acc @ torch.as_tensor(slice_weights(cfg), dtype=torch.float64, device=self.device)   # (n, B, C)
        bias, scale, relu = self._post_registers()
        out = post_process(y, bias, scale, cfg.post.shift, False, cfg.post.out_bits)
        out = torch.where(relu, torch.relu(out), out)
        for i, w in enumerate(self.widths):
            out[i, :, w:] = 0
        return out
