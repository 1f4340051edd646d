"""The interface every backend implements, and what they share.

A backend holds the state of every tile. :meth:`Backend.erase` puts tiles into their
as-fabricated state: every cell at conductance state 0 (fully RESET) with the stuck-at
faults of this chip instance (:func:`fabricate`, drawn from the config's stuck-at rates
and the seed, the same for every backend), and restarts the noise generators.

What callers may ask of a backend besides its methods are its capabilities, class attributes
of every backend (:attr:`Backend.keeps_state_across_processes`, :attr:`Backend.bit_exact`):
callers test those, never the backend's name. The settings of a write-verify run travel as
one :class:`WriteVerifyParams`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np
import torch

from cimstack.chip.config import ChipConfig
from cimstack.errors import ConfigError, InputRangeError
from cimstack.golden.writeverify import WriteVerifyJob
from cimstack.physics.devices import device_model, seed_for

__all__ = ["Backend", "CellJobs", "Region", "WriteVerifyParams", "fabricate", "adc_tie_bias"]

_STREAM_FAB, _STREAM_VERIFY = 3, 4
_CHUNK = 4096          # VMM rows per call of a model (bounds the memory of the per-pulse sums)


def fabricate(cfg: ChipConfig, seed: int, tile: int) -> np.ndarray:
    """The stuck-at map (golden encoding) of one tile of the chip instance ``seed``."""
    dp = cfg.datapath
    gen = torch.Generator().manual_seed(seed_for(seed, tile, _STREAM_FAB))
    shape = (cfg.array.rows, dp.units, dp.cells_per_unit)
    model = device_model(cfg)
    return model.sample_stuck(shape, gen).numpy()


def adc_tie_bias(cfg: ChipConfig, gain: int) -> float:
    """Mean error, in ADC LSBs, of one conversion of an integer column sum.

    The ADC rounds ``sum * gain / 2**gain_shift`` half up. With integer sums the fractional
    part takes ``m = 2**gain_shift / gcd(gain, 2**gain_shift)`` values; when they are equally
    likely, rounding half up is off by ``+1/(2m)`` on average (ties always go up), and 0
    when ``m == 1``. Summed over every pulse and slice of a VMM this is a per-column offset
    worth correcting: 1084 output LSBs on the default chip (gain 1/2, 8 pulses, 2 slices).
    """
    full = 1 << cfg.adc.gain_shift
    m = full // math.gcd(int(gain), full)
    return 0.0 if m == 1 else 1.0 / (2 * m)


@dataclass(frozen=True)
class WriteVerifyParams:
    """The ISPP settings of a write-verify run (:func:`cimstack.golden.writeverify.ispp`).

    At most ``max_pulses`` pulses per cell; the amplitude is ``amp_start`` on the first pulse
    and after every change of polarity and grows by ``amp_step`` on each pulse of the same
    polarity, up to ``amp_max``: ``None`` stands for the config's ``device.pulse_max_amplitude``
    (:meth:`resolved` fills it in). The hardware's ranges are checked where the run executes
    (:func:`cimstack.golden.writeverify.check_write_verify`).
    """

    max_pulses: int = 100
    amp_start: int = 1
    amp_step: int = 1
    amp_max: int | None = None

    def resolved(self, cfg: ChipConfig) -> WriteVerifyParams:
        """These settings with ``amp_max`` taken from ``cfg`` where it is left open."""
        return self if self.amp_max is not None else replace(self, amp_max=cfg.device.pulse_max_amplitude)


@dataclass(frozen=True, eq=False)
class Region:
    """The part of a tile one VMM pass of a layer uses (:meth:`Backend.vmm_regions`).

    ``rows``: the physical word lines driven, distinct; ``inputs``: which feature of the
    layer's input each of them gets; ``cols``: the physical columns read, in output order.
    Parallel int64 arrays.
    """

    tile: int
    rows: np.ndarray
    inputs: np.ndarray
    cols: np.ndarray

    def __post_init__(self):
        for name in ("rows", "inputs", "cols"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64).ravel())
        if len(self.rows) != len(self.inputs):
            raise InputRangeError(f"region on tile {self.tile}: {len(self.rows)} rows but {len(self.inputs)} inputs")
        if len(np.unique(self.rows)) != len(self.rows):
            raise InputRangeError(f"region on tile {self.tile}: a word line is driven twice")


class CellJobs:
    """Cells to program on one tile: parallel int64 arrays ``row``, ``unit``, ``cell``,
    ``target`` (state LSBs) and ``tol``."""

    def __init__(self, row, unit, cell, target, tol):
        self.row, self.unit, self.cell, self.target, self.tol = (np.asarray(v, dtype=np.int64).ravel()
                                                                 for v in (row, unit, cell, target, tol))

    def __len__(self) -> int:
        return len(self.row)

    def jobs(self, cfg: ChipConfig) -> list[WriteVerifyJob]:
        lanes = cfg.array.mac_lanes
        return [WriteVerifyJob(int(r), int(u) // lanes, int(u) % lanes, int(c), int(t), int(tol))
                for r, u, c, t, tol in zip(self.row, self.unit, self.cell, self.target, self.tol)]


class Backend(ABC):
    """What a deployment needs of a chip: erase, tile registers, write-verify and VMMs.

    Capabilities (class attributes; callers test these, not :attr:`name`):

    ``keeps_state_across_processes``
        The cells keep what was programmed after this process ends (a chip does; the models
        start erased in every process), so a deployment can attach to it without programming.
    ``bit_exact``
        The integer datapath, bit for bit: equal VMM results and write-verify outcomes on
        every bit-exact backend for the same seed (the golden model and the chip do; the
        physics emulator agrees statistically).
    """

    name = "backend"                               # a label for reports
    keeps_state_across_processes: bool = False
    bit_exact: bool = False

    def __init__(self, cfg: ChipConfig):
        if not isinstance(cfg, ChipConfig):
            raise ConfigError(f"a backend needs a ChipConfig, got {type(cfg).__name__}")
        self.cfg = cfg

    @abstractmethod
    def erase(self, tiles, seed: int) -> None:
        """Tiles to their as-fabricated state; every noise generator restarted from ``seed``."""

    @abstractmethod
    def configure_tile(self, tile: int, adc_gain: int, adc_offset: int, post_scale: int) -> None:
        """ADC registers of a tile; post-processing bias 0, scale ``post_scale`` on every
        column, no ReLU."""

    @abstractmethod
    def set_adc(self, tile: int, adc_gain: int, adc_offset: int) -> None:
        """Only the ADC gain (integration time) and offset registers of a tile: what the
        runtime rewrites between layers that share a tile but were tuned differently."""

    @abstractmethod
    def write_verify(self, tile: int, jobs: CellJobs,
                     params: WriteVerifyParams = WriteVerifyParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Program cells with the ISPP settings ``params``; per cell (status, pulses, final
        error in state LSBs)."""

    @abstractmethod
    def reseed_noise(self, seed: int) -> None:
        """Restart the read-noise generators from ``seed`` (cell states are kept), so that
        runs compared against each other see the same noise draws."""

    @abstractmethod
    def vmm(self, tile: int, x: np.ndarray, mode: str | None = None) -> torch.Tensor:
        """Integer inputs (batch, rows) in order; post-processed outputs (batch, cols) as float64."""

    def vmm_regions(self, regions: list[Region], x, mode: str | None = None) -> torch.Tensor:
        """Every pass of a layer: outputs (passes, batch, max cols) float64, pass ``i``'s
        first ``len(regions[i].cols)`` columns its outputs, the rest zero.

        ``x`` (batch, features) integer inputs; region ``i`` drives its ``rows`` with
        ``x[:, inputs]`` and leaves every other word line at zero. This default runs one
        whole-array :meth:`vmm` per region; the emulator computes only the cells in use.
        """
        x = self._check_region_inputs(regions, x)
        rows = self.cfg.array.rows
        out = torch.zeros((len(regions), len(x), max(len(r.cols) for r in regions)), dtype=torch.float64)
        for i, r in enumerate(regions):
            xin = np.zeros((len(x), rows), dtype=np.int64)
            xin[:, r.rows] = x[:, r.inputs]
            out[i, :, :len(r.cols)] = self.vmm(r.tile, xin, mode)[:, torch.as_tensor(r.cols)]
        return out

    def _check_region_inputs(self, regions: list[Region], x) -> np.ndarray:
        """``x`` as a signed integer array (any width), the regions checked against it."""
        x = np.asarray(x)
        if x.ndim != 2 or x.dtype.kind not in "iu":
            raise InputRangeError(f"layer inputs must be integers of shape (batch, features), got {x.dtype} {x.shape}")
        if x.dtype.kind == "u":
            x = x.astype(np.int64)
        if not regions:
            raise InputRangeError("vmm_regions needs at least one region")
        a = self.cfg.array
        for r in regions:
            self._check_tile(r.tile)
            if r.rows.size and (r.rows.min() < 0 or r.rows.max() >= a.rows):
                raise InputRangeError(f"region on tile {r.tile}: word lines outside 0..{a.rows - 1}")
            if r.cols.size and (r.cols.min() < 0 or r.cols.max() >= a.cols):
                raise InputRangeError(f"region on tile {r.tile}: columns outside 0..{a.cols - 1}")
            if r.inputs.size and (r.inputs.min() < 0 or r.inputs.max() >= x.shape[1]):
                raise InputRangeError(f"region on tile {r.tile}: input features outside 0..{x.shape[1] - 1}")
        return x

    @abstractmethod
    def pulse(self, tile: int, row, unit, cell, polarity, amplitude=1) -> np.ndarray:
        """One programming pulse on each of a set of distinct cells (parallel int arrays,
        broadcast); returns their states after it (state LSBs). For training on the chip."""

    @abstractmethod
    def read_cells(self, tile: int, row, unit, cell) -> np.ndarray:
        """Verify reads of a set of cells (state LSBs, with the verify read noise)."""

    def rounding_bias(self, adc_gain: int) -> float:
        """Mean ADC rounding error per conversion (ADC LSBs) that the runtime subtracts:
        the integer datapath's tie bias (:func:`adc_tie_bias`)."""
        return adc_tie_bias(self.cfg, adc_gain)

    def close(self) -> None:  # noqa: B027 - only a backend holding a link has anything to close
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_tile(self, tile: int) -> None:
        if not 0 <= tile < self.cfg.array.tiles:
            raise InputRangeError(f"tile {tile} outside 0..{self.cfg.array.tiles - 1}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.name})"


def _cell_args(cfg: ChipConfig, *args) -> list[np.ndarray]:
    """Cell index (and pulse) arguments broadcast to flat int64 arrays, indices checked."""
    try:
        arrs = [a.ravel() for a in np.broadcast_arrays(*(np.asarray(a, dtype=np.int64) for a in args))]
    except ValueError as exc:
        raise InputRangeError(f"cell arguments do not broadcast: {exc}") from None
    dp = cfg.datapath
    for name, a, hi in (("row", arrs[0], cfg.array.rows), ("unit", arrs[1], dp.units), ("cell", arrs[2], dp.cells_per_unit)):
        if a.size and (a.min() < 0 or a.max() >= hi):
            raise InputRangeError(f"cell {name} indices must lie in 0..{hi - 1}")
    return arrs


def _neutral_post(cfg: ChipConfig, post_scale: int) -> tuple[np.ndarray, np.ndarray]:
    cols = cfg.array.cols
    return np.zeros(cols, dtype=np.int64), np.full(cols, int(post_scale), dtype=np.int64)


def _results(results) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r.status for r in results], dtype=np.int64), np.array([r.pulses for r in results], dtype=np.int64),
            np.array([r.error for r in results], dtype=np.int64))
