"""Running a deployment on a backend.

A :class:`Session` is one deployment on one backend: it evaluates the CIM IR on the host and
sends every analog op to the arrays it was placed on (inputs quantised to the layer's input
scale, one VMM per pass, partial sums and copies combined and dequantised digitally, then the
bias); digital ops run in float64 on the host. Identical VMM results give identical outputs,
so golden and device agree bit for bit.

The session owns the register cache: the ADC registers it last wrote into each tile, so that
layers sharing a tile but tuned differently rewrite them only when they change. The
deployment keeps one session per backend (:meth:`cimstack.Deployment.session`), weakly: a
backend that goes away takes its session with it, so a new one at the same address starts
clean. :meth:`cimstack.Deployment.run`, ``layer_vmm`` and ``attach`` delegate here, and
programming (:mod:`cimstack.runtime.programming`) sets the registers through :meth:`Session.configure`.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from cimstack.backends import Backend
from cimstack.chip.datapath import pulse_weights, slice_weights
from cimstack.errors import ConfigError, InputRangeError

__all__ = ["Session", "check_backend"]


def check_backend(dep, backend: Backend) -> None:
    """Refuse a backend that runs another chip config than ``dep`` was compiled for."""
    if backend.cfg != dep.cfg:
        raise ConfigError(f"the backend runs config {backend.cfg.name!r}, the deployment was compiled "
                          f"for {dep.cfg.name!r}")


class Session:
    """The deployment ``dep`` running on ``backend`` (held weakly: the deployment's table of
    sessions is keyed by the backend)."""

    def __init__(self, dep, backend: Backend):
        self.dep = dep
        self._backend = weakref.ref(backend)
        # ADC registers (gain, offset) this session last wrote, per tile
        self.adc: dict[int, tuple[int, int]] = {}

    @property
    def backend(self) -> Backend:
        be = self._backend()
        if be is None:
            raise ConfigError("the backend of this session has been closed and collected")
        return be

    def configure(self) -> None:
        """Registers of every tile in use as programming leaves them: the config's ADC gain and
        offset, neutral post-processing."""
        dep, be = self.dep, self.backend
        gain, offset = dep.cfg.adc.gain, dep.cfg.adc.offset
        for t in dep.placement.tiles_used:
            be.configure_tile(t, gain, offset, dep.post_scale)
            self.adc[t] = (gain, offset)

    def attach(self) -> None:
        """Run on a chip that already holds the deployment: the noise seed and the registers
        :meth:`configure` sets, no cell written; see :meth:`cimstack.Deployment.attach`."""
        dep, be = self.dep, self.backend
        check_backend(dep, be)
        if not be.keeps_state_across_processes:
            raise ConfigError(f"the {be.name} backend starts erased in every process: program it "
                              f"(leave out --no-program)")
        be.reseed_noise(dep.seed)
        if dep.ir_compensation:
            for t in dep.placement.tiles_used:
                dep.cell_targets(t)                # sets the tile's gain that the correction left
        self.configure()
        dep.backend = be

    def run(self, x) -> torch.Tensor:
        """Outputs of the model for the batch ``x``, float64."""
        x = self.dep._check_input(x)
        with torch.no_grad():
            return self.dep.graph.evaluate(x, self.vmm)

    def layer_vmm(self, name: str, x2d) -> torch.Tensor:
        """One placed layer's product ``x2d @ M`` (no bias); see :meth:`cimstack.Deployment.layer_vmm`."""
        dep = self.dep
        if name not in dep.by_name:
            raise ConfigError(f"no placed layer {name!r}; layers: {', '.join(dep.by_name)}")
        layer = dep.by_name[name]
        x2d = torch.as_tensor(x2d, dtype=torch.float64)
        if x2d.ndim != 2 or x2d.shape[1] != layer.in_features:
            raise InputRangeError(f"layer {name} takes (batch, {layer.in_features}) inputs, got {tuple(x2d.shape)}")
        return self.vmm(layer.node, x2d)

    def vmm(self, node, x2d: torch.Tensor) -> torch.Tensor:
        """The analog op ``node`` on the arrays, for inputs ``x2d`` (batch, in_features)."""
        dep, be, cfg = self.dep, self.backend, self.dep.cfg
        layer = dep.by_name[node.name]
        xq = dep._quantise_inputs(layer, x2d).to(torch.int64).numpy()
        rows = cfg.array.rows
        conversions = float(pulse_weights(cfg, layer.mode).sum() * slice_weights(cfg).sum())
        y = torch.zeros((x2d.shape[0], layer.out_features), dtype=torch.float64)
        post = dep.post_scale / (1 << cfg.post.shift)
        # every conversion's ADC offset and mean rounding error, through the shift-add and post scale
        offset = (be.rounding_bias(layer.adc_gain) + layer.adc_offset) * conversions * post
        for p in dep.placement.passes[layer.name]:
            xin = np.zeros((len(xq), rows), dtype=np.int64)
            for b in p.blocks:
                xin[:, b.row:b.row + b.rows] = xq[:, b.in0:b.in0 + b.rows]
            if p.tile in dep.row_map:               # repaired rows: their inputs go to the spare lines
                routed = np.zeros_like(xin)
                routed[:, dep.row_map[p.tile]] = xin
                xin = routed
            self.load_adc(p.tile, int(layer.adc_gain), int(layer.adc_offset))
            out = be.vmm(p.tile, xin, layer.mode) - offset
            if p.tile in dep.col_map:               # repaired columns: read from the spare lines
                out = out[:, torch.as_tensor(dep.col_map[p.tile])]
            # output units back to column-sum units: undo the ADC gain, the post scale/shift
            # and the analog gain the IR-drop correction left
            scale = ((1 << cfg.adc.gain_shift) / layer.adc_gain) / post / dep.tile_gain.get(p.tile, 1.0)
            for b in p.blocks:
                y[:, b.out0:b.out0 + b.cols] += out[:, b.col:b.col + b.cols] * scale
        return y * (layer.x_scale / layer.copies) * torch.as_tensor(layer.w_scale)

    def load_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        """Write a tile's ADC registers unless they already hold these values."""
        want = (adc_gain, adc_offset)
        if self.adc.get(tile) != want:
            self.backend.set_adc(tile, *want)
            self.adc[tile] = want
