"""``cimstack.compile(model, config) -> Deployment``: a model mapped and placed on a chip, ready
to be programmed and run on any backend.

    dep = cimstack.compile(model, cfg, example=x_train[:256])
    print(dep.placement.report())
    report = dep.program(GoldenBackend(cfg))        # write-verify every placed cell
    logits = dep.run(x_test)                        # on the backend last programmed

A :class:`Deployment` is the compiled model as data: the IR, its mapped layers (weight codes,
scales, per-layer settings), their placement, and the line maps of spare-line repairs, with
the cell targets they give. Its methods that touch a chip delegate: programming, repair and
refresh to :mod:`cimstack.runtime.programming`, running on a backend to
:mod:`cimstack.runtime.session`, saving to :mod:`cimstack.runtime.fileformat` (loading is
:func:`cimstack.runtime.saved.load_deployment`).
"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import torch

from cimstack.backends import Backend, CellJobs, WriteVerifyParams
from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import weights_to_codes
from cimstack.compiler import Graph, import_model
from cimstack.compiler.mapper import MappedLayer, calibrate, map_layer
from cimstack.compiler.placer import Placement, place
from cimstack.errors import CompileError, ConfigError, InputRangeError
from cimstack.physics.devices import level_step_us
from cimstack.physics.irdrop import compensate
from cimstack.runtime import programming
from cimstack.runtime.fileformat import save_deployment
from cimstack.runtime.programming import ProgramReport
from cimstack.runtime.repair import CellFault, identity_maps
from cimstack.runtime.session import Session
from cimstack.runtime.settings import LayerSetting, Settings

__all__ = ["compile", "Deployment"]


class Deployment:
    """A compiled model: the IR, its mapped layers and their placement on one chip config."""

    def __init__(self, cfg: ChipConfig, graph: Graph, layers: list[MappedLayer], placement: Placement,
                 seed: int, input_shape: tuple[int, ...], *, ir_compensation: bool | None = None):
        self.cfg, self.graph, self.layers, self.placement, self.seed = cfg, graph, layers, placement, seed
        self.input_shape = tuple(input_shape)         # one sample, as in the calibration batch
        self.by_name = {layer.name: layer for layer in layers}
        # post-processing passes the column sums through: scale 2**shift undoes the fixed
        # shift where the scale register is wide enough (else the shift's loss is dequantised)
        self.post_scale = min(1 << cfg.post.shift, (1 << cfg.post.scale_bits) - 1)
        # weight-mapping correction of IR drop: on by default where the wires have resistance
        self.ir_compensation = cfg.device.wire_resistance_ohm > 0 if ir_compensation is None else bool(ir_compensation)
        if self.ir_compensation and cfg.device.wire_resistance_ohm <= 0:
            raise ConfigError("ir_compensation needs device.wire_resistance_ohm > 0 (ideal wires have no IR drop)")
        self.tile_gain = {t: 1.0 for t in placement.tiles_used}     # analog gain left by the IR correction
        self._targets: dict[int, np.ndarray] = {}
        # per tile with repairs, the physical line of each placement row / column (cimstack.runtime.repair)
        self.row_map: dict[int, np.ndarray] = {}
        self.col_map: dict[int, np.ndarray] = {}
        # the run session (and its register cache) per backend (weak: a backend that goes away
        # takes its session with it, so a new one at the same address starts clean)
        self._sessions: weakref.WeakKeyDictionary[Backend, Session] = weakref.WeakKeyDictionary()
        self.backend: Backend | None = None
        self.info: dict = {}          # where it came from (data set, model file), saved with it

    # -- per-layer settings --------------------------------------------------------------------
    def settings(self, **info) -> Settings:
        """The per-layer hardware settings this deployment runs with (what tuning changes)."""
        return Settings(self.cfg.name, self.cfg.datapath.config_hash,
                        {layer.name: LayerSetting(int(layer.adc_gain), int(layer.adc_offset), layer.mode,
                                                  float(layer.x_range), layer.copies) for layer in self.layers},
                        dict(info))

    def apply(self, settings: Settings) -> None:
        """Run with ``settings`` (ADC registers, input modes and ranges of every layer they name).

        Weight copies change the placement, so they must already match: compile with
        ``compile(..., settings=settings)`` to take them too.
        """
        settings.check(self.cfg)
        unknown = set(settings.layers) - set(self.by_name)
        if unknown:
            raise ConfigError(f"settings name layer(s) {', '.join(sorted(unknown))} this deployment does not have")
        for name, s in settings.layers.items():
            layer = self.by_name[name]
            if s.copies != layer.copies:
                raise ConfigError(f"layer {name}: settings ask for {s.copies} weight copies, the deployment was "
                                  f"compiled with {layer.copies}; compile with settings= to change the placement")
        for name, s in settings.layers.items():
            layer = self.by_name[name]
            layer.adc_gain, layer.adc_offset = s.adc_gain, s.adc_offset
            layer.set_inputs(self.cfg, s.x_range, s.mode)

    # -- what goes on each tile ----------------------------------------------------------------
    def line_maps(self, tile: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols): the physical word line of each placement row and the physical column
        of each placement column of ``tile`` (the identity until a repair moves a line)."""
        a = self.cfg.array
        rows, cols = identity_maps(a.rows, a.cols)
        return self.row_map.get(tile, rows), self.col_map.get(tile, cols)

    def set_line_maps(self, tile: int, rows: np.ndarray, cols: np.ndarray) -> None:
        """Place the lines of ``tile`` by the maps ``rows``, ``cols`` (a repair's moves; see
        :meth:`line_maps`); the tile's cell targets follow."""
        self.row_map[tile], self.col_map[tile] = rows, cols
        self._targets.pop(tile, None)

    def clear_line_maps(self) -> None:
        """Every line back in place (a fresh chip); the cell targets follow."""
        self.row_map.clear()
        self.col_map.clear()
        self._targets.clear()

    def tile_weights(self, tile: int) -> np.ndarray:
        """The integer weight matrix (rows, cols) of a tile as the cells hold it: every block
        placed on it (on the lines the repairs moved it to), 0 elsewhere."""
        return self._physical(tile, np.int64, lambda b: b.weights)

    def used_lines(self, tile: int) -> np.ndarray:
        """(rows, cols) bool: the physical positions of a tile that some block uses."""
        return self._physical(tile, bool, lambda b: True)

    def _physical(self, tile: int, dtype, value) -> np.ndarray:
        a = self.cfg.array
        logical = np.zeros((a.rows, a.cols), dtype=dtype)
        for layer in self.layers:
            for b in layer.blocks:
                if b.tile == tile:
                    logical[b.row:b.row + b.rows, b.col:b.col + b.cols] = value(b)
        rows, cols = self.line_maps(tile)
        out = np.zeros_like(logical)
        out[np.ix_(rows, cols)] = logical
        return out

    def _used_cells(self, tile: int) -> np.ndarray:
        """(rows, units, cells) bool: the cells under the blocks of a tile."""
        dp = self.cfg.datapath
        used = np.repeat(self.used_lines(tile), dp.slices, axis=1)
        return np.repeat(used[:, :, None], dp.cells_per_unit, axis=2)

    def _tol(self, tol: int | None) -> int:
        """The write-verify tolerance (state LSBs); see :meth:`cell_jobs`."""
        half = (1 << (self.cfg.cell.frac_bits - 1)) if self.cfg.cell.frac_bits else 0
        if tol is None:
            # an IR-corrected target is a conductance, not a code bin: program it closely
            tol = min(1, half - 1) if self.ir_compensation else max(half - 1, 0)
        if not 0 <= tol <= 255:
            raise ConfigError(f"write-verify tolerance {tol} outside 0..255 state LSBs")
        return tol

    def cell_jobs(self, tile: int, layer: MappedLayer, tol: int | None = None) -> CellJobs:
        """Write-verify targets of every cell under ``layer``'s blocks on ``tile``.

        A cell of code ``k`` aims at the centre of its code bin, ``k * 2**frac + 2**(frac-1)``,
        within ``tol`` (default ``2**(frac-1) - 1``): every state in the window reads code
        ``k``, and the physics emulator, whose conductance is the continuous state, sees the
        same half-level offset on both cells of a pair (it cancels). With IR-drop correction
        the targets are the corrected states (:meth:`cell_targets`) and the default ``tol``
        is 1 state LSB, since the correction is a few per cent of a cell's conductance.
        """
        dp = self.cfg.datapath
        tol = self._tol(tol)
        row_map, col_map = self.line_maps(tile)
        rows, units, cells = [], [], []
        for b in layer.blocks:
            if b.tile != tile:
                continue
            phys_cols = col_map[b.col:b.col + b.cols]
            r, u, c = np.meshgrid(row_map[b.row:b.row + b.rows],
                                  (phys_cols[:, None] * dp.slices + np.arange(dp.slices)).ravel(),
                                  np.arange(dp.cells_per_unit), indexing="ij")
            rows.append(r.ravel())
            units.append(u.ravel())
            cells.append(c.ravel())
        if not rows:
            return CellJobs([], [], [], [], [])
        r, u, c = (np.concatenate(v) for v in (rows, units, cells))
        target = self.cell_targets(tile)[r, u, c]
        return CellJobs(r, u, c, target, np.full_like(target, tol))

    def cell_targets(self, tile: int) -> np.ndarray:
        """Write-verify target of every cell of a tile (rows, units, cells), state LSBs.

        The centre of each cell's code bin; with IR-drop compensation, the state whose
        conductance makes the array with resistive wires behave like the uncompensated one
        times :attr:`tile_gain` (:func:`cimstack.physics.irdrop.compensate`). Cells no
        block uses stay erased (state 0) and are not moved by the correction.
        """
        if tile not in self._targets:
            cfg, dp, frac = self.cfg, self.cfg.datapath, self.cfg.cell.frac_bits
            half = (1 << (frac - 1)) if frac else 0
            pos, neg = weights_to_codes(self.tile_weights(tile), cfg)
            codes = np.stack([pos, neg], axis=-1)[..., :dp.cells_per_unit]          # (rows, units, cells)
            target = (codes << frac) + half
            used = self._used_cells(tile)
            target = np.where(used, target, 0)
            if self.ir_compensation:
                target, self.tile_gain[tile] = self._compensate(target, used)
            self._targets[tile] = target
        return self._targets[tile]

    def _compensate(self, target: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, float]:
        """IR-drop weight-mapping correction of one tile's targets (physical column order:
        the (units, cells) axes flattened is the order along the word lines)."""
        cfg, frac = self.cfg, float(1 << self.cfg.cell.frac_bits)
        d, step = cfg.device, level_step_us(cfg)
        state_max = (1 << cfg.datapath.state_bits) - 1
        rows = target.shape[0]
        g0 = d.g_min_us + target.reshape(rows, -1) / frac * step
        corr = compensate(g0, d.wire_resistance_ohm, d.wire_resistance_ohm, d.g_min_us + state_max / frac * step,
                          g_min=d.g_min_us, fixed=~used.reshape(rows, -1))
        state = np.clip(np.round((corr.g - d.g_min_us) / step * frac), 0, state_max).astype(np.int64)
        return np.where(used, state.reshape(target.shape), target), corr.gain

    # -- programming (cimstack.runtime.programming) -------------------------------------------
    def program(self, backend: Backend, *, max_pulses: int = 100, amp_start: int = 1, amp_step: int = 1,
                amp_max: int | None = None, tol: int | None = None, strict: bool = False,
                progress: bool = False) -> ProgramReport:
        """Erase the tiles in use, set their registers and write-verify every placed cell
        (``max_pulses``, ``amp_*``: the :class:`~cimstack.backends.WriteVerifyParams`;
        ``amp_max`` defaults to the config's ``device.pulse_max_amplitude``).

        Every cell that ends out of tolerance (failed: out of pulses while moving; stuck: did
        not move) is reported in ``report.faults``. Where the config has spare lines
        (``array.spare_rows``/``spare_cols``), the rows and columns holding such cells are
        moved onto spares (:mod:`cimstack.runtime.repair`, ``report.repairs``); the faults left in use
        are ``report.unrepaired``, and with ``strict`` any of them raises
        :class:`~cimstack.errors.ProgrammingError` (its ``report`` attribute holds the report;
        the chip stays programmed as far as it got). The backend becomes the one :meth:`run` uses.
        """
        return programming.program(self, backend, WriteVerifyParams(max_pulses, amp_start, amp_step, amp_max),
                                   tol=tol, strict=strict, progress=progress)

    def check_cells(self, backend: Backend | None = None, tol: int | None = None) -> list[CellFault]:
        """Verify-read every cell in use (default: on the backend last programmed) and return
        those now off target (status ``"drifted"``): retention loss, read disturb, drift on a
        real array. :meth:`refresh` programs them again.

        One read per cell: the default ``tol`` is the programming tolerance plus three sigma
        of the verify read noise (``device.read_noise_sigma`` of full scale), so that a cell
        that is on target is not flagged for its noise."""
        return programming.check_cells(self, self._programmed(backend), tol)

    def refresh(self, backend: Backend | None = None, *, max_pulses: int = 100, amp_start: int = 1,
                amp_step: int = 1, amp_max: int | None = None, tol: int | None = None,
                strict: bool = False) -> ProgramReport:
        """Write-verify again the cells :meth:`check_cells` finds out of tolerance. Those
        that then fail are reported (``report.faults``) and repaired with the spare lines left,
        as in :meth:`program`; ``report.layers`` counts the refreshed cells per layer."""
        return programming.refresh(self, self._programmed(backend),
                                   WriteVerifyParams(max_pulses, amp_start, amp_step, amp_max), tol=tol, strict=strict)

    def save(self, path) -> None:
        """Write this deployment atomically (:mod:`cimstack.runtime.saved`; load it with
        :func:`cimstack.runtime.saved.load_deployment`)."""
        save_deployment(self, path)

    # -- running on a backend (cimstack.runtime.session) ---------------------------------------
    def session(self, backend: Backend | None = None) -> Session:
        """The run session of this deployment on ``backend`` (default: the one last
        programmed): it holds the ADC registers last written into each tile."""
        be = self._programmed(backend)
        s = self._sessions.get(be)
        if s is None:
            s = self._sessions[be] = Session(self, be)
        return s

    def _programmed(self, backend: Backend | None) -> Backend:
        be = backend or self.backend
        if be is None:
            raise ConfigError("the deployment has not been programmed on any backend: call program(backend) first")
        return be

    def attach(self, backend: Backend) -> None:
        """Run on a chip this deployment already programmed (in an earlier process, e.g.
        ``cimstack program`` then ``cimstack run --no-program``): set the tiles' registers and
        the noise seed as :meth:`program` does, without erasing or writing a cell. Only a
        backend that keeps its cells between processes (a device) can be attached; the models
        start erased."""
        self.session(backend).attach()

    def run(self, x, backend: Backend | None = None) -> torch.Tensor:
        """Outputs of the model for the batch ``x`` on ``backend`` (default: the one last
        programmed), float64."""
        return self.session(backend).run(x)

    def layer_vmm(self, name: str, x2d, backend: Backend | None = None) -> torch.Tensor:
        """One placed layer's product ``x2d @ M`` (no bias) on the chip, float64: inputs
        quantised to the layer's scale, every pass of its blocks run, results dequantised.
        Chip-in-the-loop training calls this from the model's own layers."""
        return self.session(backend).layer_vmm(name, x2d)

    def accuracy(self, x, y, backend: Backend | None = None) -> float:
        """Top-1 accuracy of :meth:`run` against integer labels ``y``."""
        pred = self.run(x, backend).argmax(dim=-1)
        return float((pred == torch.as_tensor(y)).double().mean())

    # -- on the host ---------------------------------------------------------------------------
    def reference(self, x) -> torch.Tensor:
        """The floating-point model (the IR with exact VMMs), float64."""
        with torch.no_grad():
            return self.graph.evaluate(self._check_input(x))

    def quantised(self, x) -> torch.Tensor:
        """The model with quantised weights and inputs but ideal, noise-free, unsaturated
        VMMs: what the chip would compute with an infinitely fine ADC."""
        def vmm(node, x2d):
            layer = self.by_name[node.name]
            xq = self._quantise_inputs(layer, x2d)
            w = torch.as_tensor(layer.quantised_matrix(), dtype=torch.float64)
            return (xq @ w) * layer.x_scale * torch.as_tensor(layer.w_scale)
        with torch.no_grad():
            return self.graph.evaluate(self._check_input(x), vmm)

    def _check_input(self, x) -> torch.Tensor:
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputRangeError(f"model inputs must be numbers ({exc})") from None
        if x.is_complex():
            raise InputRangeError(f"model inputs are complex ({x.dtype}); the chip takes real numbers")
        if not x.is_floating_point():
            x = x.to(torch.float64)
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputRangeError(f"inputs of shape {tuple(x.shape)}: the deployment was compiled for a batch of "
                                  f"samples of shape {self.input_shape}")
        if not bool(torch.isfinite(x).all()):
            raise InputRangeError("model inputs contain NaN or infinity")
        return x.to(torch.float64)

    def _quantise_inputs(self, layer: MappedLayer, x2d: torch.Tensor) -> torch.Tensor:
        md = self.cfg.datapath.mode(layer.mode)
        return torch.round(x2d / layer.x_scale).clamp_(md.in_min, md.in_max)

    def summary(self) -> str:
        lines = [f"deployment of {self.graph.name} on {self.cfg.name}: {len(self.layers)} analog layers, "
                 f"{len(self.graph.nodes) - len(self.layers)} digital ops"]
        for layer in self.layers:
            lines.append(f"  {layer.name:<16s} {layer.node.op:<6s} {layer.in_features:>4d} x {layer.out_features:<4d} "
                         f"{len(layer.blocks):>2d} block(s), input range {layer.x_range:.3g}, "
                         f"weight error {100 * layer.weight_error():.2f} %")
        return "\n".join(lines)


def compile(model, config: ChipConfig, example=None, *, strategy: str = "auto", weight_scale: str = "per_column",
            copies: int | dict[str, int] = 1, percentile: float = 99.0, seed: int | None = None,
            settings: Settings | str | Path | None = None, ir_compensation: bool | None = None) -> Deployment:
    """Import, quantise, tile and place ``model`` (a ``torch.nn.Module``, an ONNX model or
    file, or a CIM IR :class:`Graph`) for the chip ``config``.

    ``example``: a batch of typical inputs, used to calibrate each layer's input range (the
    ``percentile`` of |input|; 100 = the maximum; the default 99 clips the rare largest
    activations for finer steps everywhere else: +9 points for the digits ResNet on the golden
    model, none lost elsewhere) and to count VMMs per sample for the cost model. Layers trained
    with :mod:`cimstack.training` keep the input range they learned. ``copies``: weight copies per layer (an int for all, or {layer: n}).
    ``strategy``: placement (:data:`cimstack.compiler.placer.STRATEGIES`). ``seed``: the chip
    instance and noise seed used when programming (default ``config.seed``). ``settings``:
    per-layer hardware settings (:class:`~cimstack.tuning.Settings` or the path of a saved
    one, e.g. from :mod:`cimstack.tuning`), copies included. ``ir_compensation``: correct
    the weights for IR drop when programming (default: when the config's wires have resistance).
    """
    if not isinstance(config, ChipConfig):
        raise ConfigError(f"compile needs a ChipConfig, got {type(config).__name__}")
    if example is None:
        raise CompileError("compile needs example inputs (a calibration batch) to set each layer's input range")
    graph = import_model(model)
    if not graph.analog_nodes():
        raise CompileError(f"{graph.name} has no layer that maps onto the arrays (Linear, Conv, LSTM, GRU)")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile {percentile} outside (0, 100]")
    example = torch.as_tensor(example).to(torch.float64)
    try:
        ranges, calls = calibrate(graph, example, percentile)
    except (RuntimeError, IndexError) as exc:
        raise CompileError(f"running {graph.name} on the example inputs of shape {tuple(example.shape)} failed: {exc}") from exc
    if settings is not None:
        if copies != 1:
            raise ConfigError("give weight copies either in copies= or in settings=, not both")
        if not isinstance(settings, Settings):
            settings = Settings.load(settings)
        settings.check(config)
        copies = {name: s.copies for name, s in settings.layers.items()}
    if isinstance(copies, dict):
        unknown = set(copies) - {n.name for n in graph.analog_nodes()}
        if unknown:
            raise ConfigError(f"copies names unknown layer(s) {', '.join(sorted(unknown))}")
    layers = []
    for node in graph.analog_nodes():
        n = copies.get(node.name, 1) if isinstance(copies, dict) else copies
        # a hardware-aware trained layer brings the input range it learned (cimstack.training)
        x_range = node.attrs.get("input_range") or ranges.get(node.name, 1.0)
        layer = map_layer(node, config, x_range, weight_scale=weight_scale, copies=n)
        layer.calls_per_sample = calls.get(node.name, 1.0)
        layers.append(layer)
    placement = place(layers, config, strategy)
    dep = Deployment(config, graph, layers, placement, config.seed if seed is None else seed, example.shape[1:],
                     ir_compensation=ir_compensation)
    if settings is not None:
        dep.apply(settings)
    return dep
