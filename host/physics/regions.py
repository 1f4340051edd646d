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

The weights are computed in float64 and cast to ``dtype`` (float32 by default): column sums
of integer weights stay exact below 2**24, ADC codes are small integers, and the shift-add
and post-processing run in float64, so ideal devices give the same integers as the float64
reference.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from cimstack.chip.datapath import pulse_weights, slice_weights
from cimstack.physics.converters import post_process
from cimstack.physics.tile import TileEmulator

__all__ = ["RegionStack"]


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

    @staticmethod
    def _pad(s: torch.Tensor, rows: int) -> torch.Tensor:
        """``s`` (n, k, U) with zero rows appended up to ``rows``."""
        if s.shape[1] == rows:
            return s
        return torch.cat([s, s.new_zeros((s.shape[0], rows - s.shape[1], s.shape[2]))], dim=1)

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
            input_mode: str | None = None) -> torch.Tensor:
        """Post-processed outputs (passes, batch, max cols) of integer inputs ``x``.

        ``x``: (passes, batch, max rows) integers, each pass's inputs in its ``rows`` order,
        zero beyond them (checked by the caller: :meth:`cimstack.backends.Backend.vmm_regions`).
        Columns beyond a pass's ``cols`` are zero. ``noise`` and ``integer_noise`` as in
        :meth:`TileEmulator.vmm` (integer noise: datapath mode).
        """
        e0 = self.emus[0]
        cfg, n, dt = e0.cfg, len(self.emus), self.dtype
        batch, r_max = x.shape[1], x.shape[2]
        md = cfg.datapath.mode(input_mode)
        pulses = md.pulses
        live = e0.dac.live_pulses(x, input_mode)
        d = e0.dac.pulse_digits(x, input_mode, dtype=dt, dim=1, first=live)   # (n, live, B, R)
        if self.mode == "physical":
            d = e0.devices.iv(d)
        d = d.reshape(n, live * batch, r_max)
        s = self._pad(torch.bmm(d, self.w), pulses * batch)                   # (n, P*B, U)
        gen = e0.gens["read"]
        sigma_out = cfg.device.output_noise_lsb if noise else 0.0
        if self.mode == "datapath":
            if sigma_out > 0:
                z = torch.empty_like(s).normal_(0.0, sigma_out, generator=gen)
                s += z.add_(0.5).floor_() if integer_noise else z
        elif noise and self.var is not None:
            d2 = d * d
            sd = self._pad(torch.bmm(d2, self.var), pulses * batch).add_(sigma_out ** 2).sqrt_()
            s.addcmul_(sd, torch.empty_like(s).normal_(generator=gen))
            if self.ref_var is not None:                                      # one reference column per row
                sd_r = self._pad(torch.bmm(d2, self.ref_var), pulses * batch).sqrt_()
                s.sub_(sd_r.mul_(torch.empty_like(sd_r).normal_(generator=gen)))
        elif sigma_out > 0:
            s += torch.empty_like(s).normal_(0.0, sigma_out, generator=gen)
        # ADC per pass (each tile's gain and offset registers): floor(s*gain + 1/2) + offset, saturated
        gains = {e.adc.scale for e in self.emus}
        halves = {e.adc.offset + 0.5 for e in self.emus}
        if len(gains) == 1 and len(halves) == 1:
            s.mul_(gains.pop()).add_(halves.pop())
        else:
            s.mul_(torch.tensor([e.adc.scale for e in self.emus], dtype=dt, device=self.device).reshape(n, 1, 1))
            s.add_(torch.tensor([e.adc.offset + 0.5 for e in self.emus], dtype=dt, device=self.device).reshape(n, 1, 1))
        codes = s.floor_().clamp_(e0.adc.code_min, e0.adc.code_max)
        # shift-add: the pulses' codes weighted in one product, then the slices (exact: integers < 2**24)
        pw = torch.as_tensor(pulse_weights(cfg, md.name), dtype=dt, device=self.device)
        acc = torch.matmul(pw, codes.reshape(n, pulses, -1))                  # (n, B*U)
        acc = acc.to(torch.float64).reshape(n, batch, -1, cfg.datapath.slices)
        y = acc @ torch.as_tensor(slice_weights(cfg), dtype=torch.float64, device=self.device)   # (n, B, C)
        bias = torch.stack([e.bias[c] for e, c in zip(self.emus, self.cols)]).to(torch.float64).unsqueeze(1)
        scale = torch.stack([e.scale[c] for e, c in zip(self.emus, self.cols)]).to(torch.float64).unsqueeze(1)
        out = post_process(y, bias, scale, cfg.post.shift, False, cfg.post.out_bits)
        relu = torch.tensor([e.relu for e in self.emus], device=self.device).reshape(n, 1, 1)
        out = torch.where(relu, torch.relu(out), out)
        for i, w in enumerate(self.widths):
            out[i, :, w:] = 0
        return out
