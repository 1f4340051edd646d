"""Per-layer tuning of the hardware parameters of a deployment: OpenCIMTC's inference-phase
optimisation (Yu et al., Nat. Commun. 2025), in two stages.

For every analog layer the tuner searches

* the ADC gain (integration time) and ADC offset registers,
* the input expansion mode (bit-serial, multi-bit amplitude or unary pulses),
* the input scaling (the layer's input range, as multiples of the calibrated one),
* the number of weight copies (averaged digitally; read and ADC noise fall as 1/sqrt(copies)),

minimising a figure of merit on a calibration batch:

    fom = ln(NMSE) + w_cells * ln(cells / cells_1) + w_cycles * ln(cycles / cycles_1)

NMSE is the layer output's error against the floating-point layer on the same (floating-point)
inputs, ``sum (y_chip - y_fp)^2 / sum y_fp^2``; cells and cycles (array cycles per sample,
:func:`cimstack.compiler.placer.vmm_cycles`) are taken relative to one copy in the config's own input
mode. With the default weights a second copy must cut the error by 16 % and unary pulses
(3.5x the cycles of 2-bit amplitude pulses on the OpenCIMTC chip) by 12 % to be chosen.

Stage 1, :meth:`Tuner.tune`, runs **emulator-in-the-loop**: each layer is mapped alone with
each candidate number of copies, programmed by write-verify on a fresh emulator chip, and its
registers, mode and range searched by a :mod:`~cimstack.tuning.search` searcher (``genetic``
as OpenCIMTC, or the cheaper ``coordinate``). Stage 2, :meth:`Tuner.refine`, runs
**device-in-the-loop** on the programmed deployment itself (the simulated SoC, a board, or any
backend): a coordinate search within a small radius of the stage-1 values, with the copies
fixed. Every evaluation restarts the read noise from the same seed, so candidates are compared
on the same noise draws. The result is a :class:`~cimstack.tuning.Settings`; a deployment
compiled with it (``cimstack.compile(..., settings=...)``) writes each layer's ADC registers
into its tiles through the runtime before the layer's VMMs run.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from tqdm import tqdm

from cimstack.backends import Backend, EmulatorBackend
from cimstack.compiler.ir import float_vmm
from cimstack.compiler.mapper import MappedLayer, with_copies
from cimstack.compiler.placer import place, vmm_cycles
from cimstack.errors import ConfigError, PlacementError
from cimstack.runtime.deployment import Deployment
from cimstack.runtime.settings import LayerSetting, Settings
from cimstack.tuning.search import SEARCHERS

__all__ = ["Tuner", "LayerScore", "LayerReport", "TuningReport", "gain_grid", "SCALES"]

_Chip = tuple[Deployment, MappedLayer, Backend]           # a layer alone, programmed on a fresh chip

SCALES = (0.4, 0.5, 0.63, 0.8, 1.0, 1.25, 1.6, 2.0)     # input-range multipliers searched
NOISE_SEED = 12345                                      # read-noise seed of every evaluation


def gain_grid(current: int) -> list[int]:
    """ADC gains searched: about 2**(k/2) from 1 to 255, plus the current one."""
    return sorted({int(round(2 ** (k / 2))) for k in range(16)} | {255, int(current)})


@dataclass
class LayerScore:
    nmse: float
    cells: int
    cycles: float
    fom: float


@dataclass
class LayerReport:
    """One layer: its score with the settings it started from and with the tuned ones."""

    layer: str
    before: LayerScore
    after: LayerScore
    setting: LayerSetting
    evaluations: int
    seconds: float


@dataclass
class TuningReport:
    settings: Settings
    stage: str
    searcher: str
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def evaluations(self) -> int:
        return sum(r.evaluations for r in self.layers)

    def table(self) -> str:
        lines = [f"{self.stage} tuning ({self.searcher}): {self.evaluations} evaluations in {self.seconds:.1f} s",
                 f"  {'layer':<14s} {'NMSE before':>11s} {'after':>9s} {'gain':>5s} {'off':>4s} {'mode':>10s} "
                 f"{'x_range':>7s} {'copies':>6s}"]
        for r in self.layers:
            s = r.setting
            lines.append(f"  {r.layer:<14s} {r.before.nmse:>11.4g} {r.after.nmse:>9.4g} {s.adc_gain:>5d} {s.adc_offset:>4d} "
                         f"{s.mode:>10s} {s.x_range:>7.3g} {s.copies:>6d}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"stage": self.stage, "searcher": self.searcher, "seconds": self.seconds,
                "evaluations": self.evaluations, "settings": self.settings.to_dict(),
                "layers": [{"layer": r.layer, "before": r.before.__dict__, "after": r.after.__dict__,
                            "evaluations": r.evaluations, "seconds": r.seconds} for r in self.layers]}


class Tuner:
    """Tunes the layers of ``deployment`` on the calibration batch ``x`` (model inputs).

    Parameters
    ----------
    deployment : the compiled model (its current settings are the starting point).
    x : calibration inputs; OpenCIMTC uses 256 samples.
    max_rows : VMM rows per layer kept for the objective (conv layers and RNNs produce
        many per sample; a fixed random subset keeps each evaluation cheap).
    copies : candidate weight copies (those that do not fit on the chip alone are dropped).
    w_cells, w_cycles : the figure of merit's weights (module docstring).
    backend_factory : makes the chip of stage 1 (default: a physical :class:`EmulatorBackend`).
    """

    def __init__(self, deployment, x, *, max_rows: int = 2048, copies: Sequence[int] = (1, 2, 4),
                 w_cells: float = 0.25, w_cycles: float = 0.1, scales: Sequence[float] = SCALES,
                 backend_factory: Callable[[], Backend] | None = None, seed: int = 0):
        self.dep, self.cfg = deployment, deployment.cfg
        if max_rows < 1 or not copies or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in copies):
            raise ConfigError(f"max_rows must be >= 1 and copies positive integers, got {max_rows}, {copies}")
        if w_cells < 0 or w_cycles < 0:
            raise ConfigError("the figure-of-merit weights w_cells and w_cycles must be >= 0")
        self.copies, self.scales = sorted(set(copies) | {1}), tuple(scales)
        self.w_cells, self.w_cycles = float(w_cells), float(w_cycles)
        self.backend_factory = backend_factory or (lambda: EmulatorBackend(self.cfg))
        self.inputs, self.targets = self._capture(x, max_rows, seed)
        self.start = deployment.settings()

    # -- the objective -------------------------------------------------------------------------
    def _capture(self, x, max_rows: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Floating-point inputs of every analog layer on the batch, and its exact outputs."""
        seen: dict[str, list[torch.Tensor]] = {}

        def record(node, x2d):
            seen.setdefault(node.name, []).append(x2d.detach())
            return float_vmm(node, x2d)

        with torch.no_grad():
            self.dep.graph.evaluate(self.dep._check_input(x), record)
        gen = torch.Generator().manual_seed(seed)
        inputs, targets = {}, {}
        for layer in self.dep.layers:
            xs = torch.cat(seen[layer.name])
            if len(xs) > max_rows:
                xs = xs[torch.randperm(len(xs), generator=gen)[:max_rows]]
            inputs[layer.name] = xs
            targets[layer.name] = float_vmm(layer.node, xs)
        return inputs, targets

    def nmse(self, layer: str, y: torch.Tensor) -> float:
        t = self.targets[layer]
        return float(((y - t) ** 2).sum() / max(float((t ** 2).sum()), 1e-300))

    def costs(self, layer: MappedLayer, copies: int, mode: str) -> tuple[int, float]:
        """Cells the layer occupies and array cycles per sample with ``copies`` and ``mode``."""
        dp = self.cfg.datapath
        cells = copies * layer.in_features * layer.out_features * dp.slices * dp.cells_per_unit
        passes = max(1, len(self.dep.placement.passes.get(layer.name, ())) // max(layer.copies, 1))
        return cells, copies * passes * layer.calls_per_sample * vmm_cycles(self.cfg, mode)

    def score(self, dep, layer: MappedLayer, backend: Backend, s: LayerSetting) -> LayerScore:
        """Run ``layer`` of ``dep`` on ``backend`` with setting ``s``; its figure of merit."""
        layer.adc_gain, layer.adc_offset = s.adc_gain, s.adc_offset
        layer.set_inputs(self.cfg, s.x_range, s.mode)
        backend.reseed_noise(NOISE_SEED)
        y = dep.layer_vmm(layer.name, self.inputs[layer.name], backend)
        nmse = self.nmse(layer.name, y)
        cells, cycles = self.costs(layer, s.copies, s.mode)
        cells1, cycles1 = self.costs(layer, 1, self.cfg.input.mode)
        fom = (math.log(max(nmse, 1e-12)) + self.w_cells * math.log(cells / cells1)
               + self.w_cycles * math.log(cycles / cycles1))
        return LayerScore(nmse, cells, cycles, fom)

    def space(self, layer: str, copies: Sequence[int] | None = None) -> dict[str, list]:
        """The candidate values of every parameter of ``layer``."""
        s = self.start.layers[layer]
        half = 1 << (self.cfg.adc.bits - 1)
        offsets = sorted({o for o in (0, -1, 1, -2, 2, -half // 8, half // 8, -half // 4, half // 4)
                          if -half <= o < half} | {s.adc_offset})
        return {"adc_gain": gain_grid(s.adc_gain), "adc_offset": offsets, "mode": list(self.cfg.datapath.modes),
                "x_range": sorted({s.x_range * k for k in self.scales} | {s.x_range}),
                "copies": list(self.copies if copies is None else copies)}

    # -- stage 1: emulator in the loop -----------------------------------------------------------
    def _scratch(self, layer: MappedLayer, copies: int) -> _Chip:
        """``layer`` alone with ``copies`` copies, placed and programmed on a fresh chip."""
        alone = with_copies(layer, self.cfg, copies)
        placement = place([alone], self.cfg, "layer_per_array")
        dep = Deployment(self.cfg, self.dep.graph, [alone], placement, self.dep.seed, self.dep.input_shape,
                         ir_compensation=self.dep.ir_compensation)
        backend = self.backend_factory()
        dep.program(backend)
        return dep, alone, backend

    def tune(self, searcher: str = "genetic", *, layers: Sequence[str] | None = None, progress: bool = False,
             **search_args) -> TuningReport:
        """Stage 1: search every layer (or ``layers``) on emulator chips; returns the settings
        and the per-layer NMSE before and after (``search_args`` go to the searcher)."""
        if searcher not in SEARCHERS:
            raise ConfigError(f"searcher {searcher!r} is not one of {', '.join(SEARCHERS)}")
        names = self._names(layers)
        t0 = time.perf_counter()
        report = TuningReport(Settings(self.cfg.name, self.cfg.datapath.config_hash, dict(self.start.layers)),
                              "emulator-in-the-loop", searcher)
        for name in _progress(names, "tuning", progress):
            t1 = time.perf_counter()
            layer, start = self.dep.by_name[name], self.start.layers[name]
            chips: dict[int, _Chip | None] = {}

            def chip(c: int) -> _Chip | None:
                """(deployment, layer, backend) with ``c`` copies; None where they do not fit."""
                if c not in chips:
                    try:
                        chips[c] = self._scratch(layer, c)
                    except PlacementError:
                        if c == 1:
                            raise
                        chips[c] = None
                return chips[c]

            def objective(p: dict) -> float:
                made = chip(p["copies"])
                return math.inf if made is None else self.score(*made, LayerSetting(**p)).fom

            base: dict[str, Any] = dict(start.__dict__, copies=1)
            before = self.score(*cast(_Chip, chip(1)), LayerSetting(**base))       # one copy fits (or chip raises)
            res = SEARCHERS[searcher](self.space(name), objective, start=base, **search_args)
            best = LayerSetting(**res.best)
            after = self.score(*cast(_Chip, chip(best.copies)), best)     # copies that do not fit score inf
            report.settings.layers[name] = best
            report.layers.append(LayerReport(name, before, after, best, res.evaluations, time.perf_counter() - t1))
        report.seconds = time.perf_counter() - t0
        report.settings.info = {"stage": report.stage, "searcher": searcher}
        return report

    def global_gain(self) -> tuple[int, Settings]:
        """The baseline that per-layer tuning is measured against: one ADC gain for every
        layer (everything else as compiled), the one minimising the sum of the layers' ln NMSE
        on emulator chips; returns it and the settings."""
        chips = {layer.name: self._scratch(layer, 1) for layer in self.dep.layers}
        totals: dict[int, float] = {}
        for g in gain_grid(self.cfg.adc.gain):
            totals[g] = 0.0
            for name, made in chips.items():
                s = _changed(self.start.layers[name], adc_gain=g, copies=1)
                totals[g] += math.log(max(self.score(*made, s).nmse, 1e-12))
        best = min(totals, key=totals.__getitem__)
        layers = {n: _changed(s, adc_gain=best) for n, s in self.start.layers.items()}
        return best, Settings(self.cfg.name, self.cfg.datapath.config_hash, layers, {"stage": "global gain"})

    # -- stage 2: device in the loop --------------------------------------------------------------
    def refine(self, deployment, backend: Backend | None = None, *, layers: Sequence[str] | None = None,
               radius: int = 1, sweeps: int = 2, progress: bool = False) -> TuningReport:
        """Stage 2: refine ``deployment`` (compiled with the stage-1 settings and programmed on
        ``backend``, default its own) by coordinate search within ``radius`` steps of its
        current registers, input range and mode, measured on that chip. The deployment keeps
        the refined settings."""
        be = backend or deployment.backend
        if be is None:
            raise ConfigError("refine needs a programmed deployment: call deployment.program(backend) first")
        shapes = {layer.name: (layer.in_features, layer.out_features) for layer in deployment.layers}
        if deployment.cfg != self.cfg or shapes != {n: (v.in_features, v.out_features) for n, v in self.dep.by_name.items()}:
            raise ConfigError("refine needs a deployment of the same model and chip config as the tuner's")
        names = self._names(layers)
        t0 = time.perf_counter()
        current = deployment.settings()
        report = TuningReport(Settings(self.cfg.name, self.cfg.datapath.config_hash, dict(current.layers)),
                              "device-in-the-loop", "coordinate")
        for name in _progress(names, "refining", progress):
            t1 = time.perf_counter()
            layer, s0 = deployment.by_name[name], current.layers[name]
            space = self.space(name, copies=[s0.copies])
            for key in ("adc_gain", "adc_offset", "x_range"):
                if getattr(s0, key) not in space[key]:
                    space[key] = sorted(space[key] + [getattr(s0, key)])

            def objective(p: dict) -> float:
                return self.score(deployment, layer, be, LayerSetting(**p)).fom

            before = self.score(deployment, layer, be, s0)
            res = SEARCHERS["coordinate"](space, objective, start=dict(s0.__dict__), radius=radius, sweeps=sweeps)
            best = LayerSetting(**res.best)
            after = self.score(deployment, layer, be, best)            # leaves the layer on ``best``
            report.settings.layers[name] = best
            report.layers.append(LayerReport(name, before, after, best, res.evaluations, time.perf_counter() - t1))
        report.seconds = time.perf_counter() - t0
        report.settings.info = {"stage": report.stage, "searcher": "coordinate", "radius": radius}
        return report

    def _names(self, layers: Sequence[str] | None) -> list[str]:
        names = [layer.name for layer in self.dep.layers] if layers is None else list(layers)
        unknown = set(names) - set(self.dep.by_name)
        if unknown:
            raise ConfigError(f"no analog layer(s) {', '.join(sorted(unknown))}; layers: {', '.join(self.dep.by_name)}")
        return names


def _changed(s: LayerSetting, **changes: Any) -> LayerSetting:
    """A new setting from the fields of ``s`` with ``changes`` (typed: the fields' dict mixes types)."""
    fields: dict[str, Any] = dict(s.__dict__, **changes)
    return LayerSetting(**fields)


def _progress(items, desc: str, enabled: bool):
    return tqdm(items, desc=desc, disable=not enabled, leave=False)
