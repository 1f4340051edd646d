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

from cimstack.backends import Backend, Region
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
        # per layer: (line maps it was built for, regions, output index)
        self._regions: dict[str, tuple[tuple, list[Region], torch.Tensor]] = {}

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
        xq = dep._quantise_inputs(layer, x2d).to(torch.int32).numpy()     # inputs are at most 16 bits
        conversions = float(pulse_weights(cfg, layer.mode).sum() * slice_weights(cfg).sum())
        post = dep.post_scale / (1 << cfg.post.shift)
        # every conversion's ADC offset and mean rounding error, through the shift-add and post scale
        offset = (be.rounding_bias(layer.adc_gain) + layer.adc_offset) * conversions * post
        passes = dep.placement.passes[layer.name]
        regions, outputs = self.regions(layer.name)
        for p in passes:
            self.load_adc(p.tile, int(layer.adc_gain), int(layer.adc_offset))
        out = be.vmm_regions(regions, xq, layer.mode) - offset                 # (passes, batch, cols)
        # output units back to column-sum units: undo the ADC gain, the post scale/shift and
        # the analog gain the IR-drop correction left
        scale = torch.tensor([((1 << cfg.adc.gain_shift) / layer.adc_gain) / post / dep.tile_gain.get(p.tile, 1.0)
                              for p in passes], dtype=torch.float64).reshape(-1, 1, 1)
        y = torch.zeros((len(xq), layer.out_features + 1), dtype=torch.float64)    # the last column takes the padding
        y.index_add_(1, outputs, (out * scale).permute(1, 0, 2).reshape(len(xq), -1))
        return y[:, :-1] * (layer.x_scale / layer.copies) * torch.as_tensor(layer.w_scale)

    def regions(self, name: str) -> tuple[list[Region], torch.Tensor]:
        """The :class:`Region` of each pass of layer ``name`` (word lines and columns after
        repair) and, flattened over (pass, column), the output feature each column adds to
        (``out_features`` for padding)."""
        dep = self.dep
        key = (name, *(dep.line_maps(p.tile)[i].tobytes() for p in dep.placement.passes[name] for i in (0, 1)))
        if self._regions.get(name, (None,))[0] != key:
            layer = dep.by_name[name]
            regions, outs = [], []
            for p in dep.placement.passes[name]:
                row_map, col_map = dep.line_maps(p.tile)
                # blocks that share word lines (copies of a layer side by side) share their inputs
                rows, first = np.unique(np.concatenate([row_map[b.row:b.row + b.rows] for b in p.blocks]),
                                        return_index=True)
                inputs = np.concatenate([np.arange(b.in0, b.in0 + b.rows) for b in p.blocks])[first]
                cols = np.concatenate([col_map[b.col:b.col + b.cols] for b in p.blocks])
                outs.append(np.concatenate([np.arange(b.out0, b.out0 + b.cols) for b in p.blocks]))
                regions.append(Region(p.tile, rows, inputs, cols))
            width = max(len(o) for o in outs)
            index = np.full((len(outs), width), layer.out_features, dtype=np.int64)
            for i, o in enumerate(outs):
                index[i, :len(o)] = o
            self._regions[name] = (key, regions, torch.as_tensor(index.reshape(-1)))
        _, regions, index = self._regions[name]
        return regions, index

    def load_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        """Write a tile's ADC registers unless they already hold these values."""
        want = (adc_gain, adc_offset)
        if self.adc.get(tile) != want:
            self.backend.set_adc(tile, *want)
            self.adc[tile] = want
