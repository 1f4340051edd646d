"""One tile of the chip as a float PyTorch model: the physics emulator's main object.

:class:`TileEmulator` holds the same state as :class:`cimstack.golden.GoldenTile` (a
real-valued conductance state per cell in state LSBs, stuck flags, post-processing and ADC
registers) plus what only physics has (per-device drift exponents, the offset scheme's
reference column as real devices). It computes a VMM in two modes:

``mode="datapath"``
    The float counterpart of the golden integer datapath: input digits per pulse, per-unit
    column sums in code units from the codes a VMM reads (``floor(state / 2**frac_bits)``,
    forced by stuck flags), Gaussian output noise of sigma ``device.output_noise_lsb`` per
    ADC conversion, then the ADC, shift-add and post-processing. The noise is rounded half up
    to integers by default, as the RTL adds an integer noise sample to an integer sum; without
    noise the result equals :meth:`GoldenTile.vmm` bit for bit.
``mode="physical"``
    Conductances in µS and voltages in V with every device non-ideality: programming noise,
    device-to-device variation and stuck-at faults (frozen at programming), drift to time
    ``t``, read noise, I-V nonlinearity, and the column currents of the crossbar, converted
    to code units by ``v_read * g_step`` before the same ADC and digital back end. Optional
    global drift compensation (Joshi et al., Nat. Commun. 2020) rescales the analog sums by
    ``readout(t0) / readout(t)`` before the ADC, i.e. stretches the integration time.

IR drop hook
    The physical mode computes bit-line currents with one pluggable function
    ``column_currents(v, G) -> I``: ``v`` (..., rows) word-line voltages in V, ``G``
    (rows, n_phys) the whole physical array in µS, ``I`` (..., n_phys) bit-line currents in
    µA. With ideal wires (``device.wire_resistance_ohm = 0``) it is
    :func:`ideal_column_currents`, ``v @ G``; otherwise :class:`~cimstack.physics.irdrop.IrDrop`
    with that resistance per word- and bit-line segment (``ir_drop="exact"``, nodal analysis,
    the default; or ``"fast"``, the first-order model). The physical column order, which is
    the order along the word lines, is that of :meth:`TileEmulator.physical_conductances`:
    differential pairs interleaved ``[u0+, u0-, u1+, u1-, ...]``, or for the offset scheme
    the ``units`` cells followed by the reference column.
    Per-read device noise is added in output space (exact for a linear ``column_currents``);
    with ``read_noise="per_call"`` it is drawn on the conductances instead and passes through
    the solver.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from cimstack.chip.config import ChipConfig
from cimstack.chip.datapath import check_post_params, weights_to_codes
from cimstack.chip.enums import Stuck
from cimstack.errors import ConfigError, InputRangeError
from cimstack.physics.converters import Adc, Dac, as_input_tensor, post_process, shift_add
from cimstack.physics.devices import device_model, level_step_us, seed_for
from cimstack.physics.irdrop import IR_MODELS, IrDrop

__all__ = ["ColumnCurrents", "GoldenTileState", "ideal_column_currents", "TileEmulator"]

ColumnCurrents = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GoldenTileState(Protocol):
    """What :meth:`TileEmulator.load_golden` reads of a :class:`cimstack.golden.GoldenTile`.

    Physics and the golden model are two models on one layer, so physics does not import it.
    """

    cfg: ChipConfig
    state: np.ndarray
    stuck: np.ndarray
    bias: np.ndarray
    scale: np.ndarray
    adc_gain: int
    adc_offset: int
    relu: bool


_MODES = ("physical", "datapath")
_READ_NOISE = ("per_read", "per_call")
_STREAM_PROG, _STREAM_READ, _STREAM_PULSE = 0, 1, 2
_SNAP = float(1 << 24)


def ideal_column_currents(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Bit-line currents with ideal wires (Kirchhoff): ``I[..., c] = sum_r v[..., r] G[r, c]``.

    Parameters
    ----------
    v : (..., rows) word-line voltages in V.
    g : (rows, n_phys) conductances in µS.

    Returns
    -------
    (..., n_phys) currents in µA.
    """
    return v @ g


class TileEmulator:
    """Float, differentiable model of one tile (see the module docstring for the modes).

    Parameters
    ----------
    cfg : the chip config every model reads.
    seed : seeds the programming, read and pulse generators (independent streams derived
        from ``(seed, tile, stream)``); defaults to ``cfg.seed``.
    tile : tile index, only used to derive the generator streams.
    column_currents : the crossbar solver (IR-drop hook); by default chosen by ``ir_drop``.
    ir_drop : ``"exact"`` (default) or ``"fast"``: the IR-drop model used when the config's
        wires have resistance (``device.wire_resistance_ohm > 0``); ``"off"`` ignores it.
    read_noise : ``"per_read"`` draws device read noise afresh for every input and pulse;
        ``"per_call"`` draws one noisy conductance matrix per :meth:`vmm` call (aihwkit's
        convention of one noise draw per evaluation time).
    dtype, device : torch dtype and device of the state. float64 keeps the datapath mode
        exact (integers below 2**53); float32 is faster for training.
    """

    def __init__(self, cfg: ChipConfig, seed: int | None = None, *, tile: int = 0,
                 column_currents: ColumnCurrents | None = None, ir_drop: str = "exact", read_noise: str = "per_read",
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        if not isinstance(cfg, ChipConfig):
            raise ConfigError(f"TileEmulator needs a ChipConfig, got {type(cfg).__name__}")
        if column_currents is not None and not callable(column_currents):
            raise ConfigError("column_currents must be a callable (v, G) -> I")
        if ir_drop not in IR_MODELS + ("off",):
            raise ConfigError(f"ir_drop = {ir_drop!r} is not one of {', '.join(IR_MODELS + ('off',))}")
        if read_noise not in _READ_NOISE:
            raise ConfigError(f"read_noise = {read_noise!r} is not one of {', '.join(_READ_NOISE)}")
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.cfg, self.tile = cfg, tile
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        r_wire = cfg.device.wire_resistance_ohm
        if column_currents is None:
            column_currents = IrDrop(r_wire, r_wire, ir_drop) if r_wire > 0 and ir_drop != "off" else ideal_column_currents
        self.column_currents: ColumnCurrents = column_currents
        self.read_noise = read_noise
        self.devices = device_model(cfg)
        self.dac, self.adc = Dac(cfg), Adc(cfg)
        dp, a = cfg.datapath, cfg.array
        self.frac_scale = float(1 << cfg.cell.frac_bits)
        self.g_step = level_step_us(cfg)
        shape = (a.rows, dp.units, dp.cells_per_unit)
        self.state = torch.zeros(shape, dtype=dtype, device=self.device)
        self.stuck = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.nu = torch.zeros(shape, dtype=dtype, device=self.device)
        if cfg.mapping.scheme == "offset":
            self.ref_state = torch.full((a.rows, 1), dp.ref_code * self.frac_scale, dtype=dtype, device=self.device)
            self.ref_nu = torch.zeros((a.rows, 1), dtype=dtype, device=self.device)
        else:
            self.ref_state = self.ref_nu = None
        self.bias = torch.zeros(a.cols, dtype=dtype, device=self.device)
        self.scale = torch.ones(a.cols, dtype=dtype, device=self.device)
        self.relu = cfg.post.relu
        self.reseed(cfg.seed if seed is None else seed)

    # -- registers -------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Restart the programming, read and pulse generators from ``seed``."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.gens = {}
        for name, stream in (("prog", _STREAM_PROG), ("read", _STREAM_READ), ("pulse", _STREAM_PULSE)):
            g = torch.Generator(device=self.device)
            g.manual_seed(seed_for(self.seed, self.tile, stream))
            self.gens[name] = g

    def reseed_reads(self, seed: int) -> None:
        """Restart only the read-noise generator (as :meth:`reseed` would), keeping the others."""
        self.gens["read"].manual_seed(seed_for(int(seed), self.tile, _STREAM_READ))

    def set_post(self, bias=None, scale=None) -> None:
        """Per-column post-processing bias and scale registers (same ranges as the RTL)."""
        for name, arr in check_post_params(bias, scale, self.cfg).items():
            setattr(self, name, torch.as_tensor(arr, dtype=self.dtype, device=self.device))

    # -- programming -----------------------------------------------------------------------
    def program_weights(self, w, *, prog_noise: bool = True, faults: bool = True, d2d: bool = True,
                        d2d_kind: str = "lognormal") -> None:
        """Program integer weights (rows, cols) through :func:`cimstack.chip.datapath.weights_to_codes`.

        Non-idealities frozen at programming time, each switchable: programming noise
        (:meth:`DeviceModel.program`), stuck-at faults (:meth:`DeviceModel.sample_stuck`,
        independently per physical cell) and device-to-device variation. Drift exponents are
        drawn for every device from its target conductance. With all three off the state is
        exactly ``code << frac_bits``, as :meth:`GoldenTile.program_weights` sets it.
        """
        pos, neg = weights_to_codes(w, self.cfg)
        codes = np.stack([pos, neg], axis=-1)[..., : self.cfg.datapath.cells_per_unit]
        self.program_codes(codes, prog_noise=prog_noise, faults=faults, d2d=d2d, d2d_kind=d2d_kind)

    def program_codes(self, codes, *, prog_noise: bool = True, faults: bool = True, d2d: bool = True,
                      d2d_kind: str = "lognormal") -> None:
        """Program target codes of shape (rows, units, cells_per_unit); see :meth:`program_weights`."""
        dp = self.cfg.datapath
        c = torch.as_tensor(np.asarray(codes), device=self.device)
        if tuple(c.shape) != tuple(self.state.shape) or c.is_floating_point() and bool((c != torch.floor(c)).any()):
            raise InputRangeError(f"codes must be integers of shape {tuple(self.state.shape)}, got {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) > dp.code_max):
            raise InputRangeError(f"codes must lie in 0..{dp.code_max}")
        c = c.to(self.dtype)
        gen = self.gens["prog"]
        stuck = self.devices.sample_stuck(c.shape, gen, device=self.device) if faults else torch.zeros_like(self.stuck)
        state, nu = self._program_cells(c, stuck, gen, prog_noise, d2d, d2d_kind)
        self.state, self.stuck, self.nu = state, stuck, nu
        if self.ref_state is not None:
            ref = torch.full_like(self.ref_state, float(dp.ref_code))
            self.ref_state, self.ref_nu = self._program_cells(ref, torch.zeros_like(ref, dtype=torch.int64), gen,
                                                              prog_noise, d2d, d2d_kind)

    def _program_cells(self, codes: torch.Tensor, stuck: torch.Tensor, gen: torch.Generator, noise: bool,
                       d2d: bool, d2d_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        g_target = self.cfg.device.g_min_us + codes * self.g_step
        g_prog = self.devices.program(g_target, gen, noise=noise, d2d=d2d, d2d_kind=d2d_kind)
        # state = code << frac plus the programming error in state LSBs: exact when error-free
        state = codes * self.frac_scale + (g_prog - g_target) / self.g_step * self.frac_scale
        nu = self.devices.sample_nu(self._stuck_override(g_target, stuck), gen)
        return state, nu

    def set_state(self, state, stuck=None, nu=None) -> None:
        """Load a cell state (rows, units, cells) in state LSBs, e.g. a golden tile's.

        ``stuck`` uses the golden encoding (0, 1 = code 0, 2 = code_max); ``nu`` defaults to
        fresh drift exponents for the loaded conductances.
        """
        st = torch.as_tensor(np.asarray(state), device=self.device).to(self.dtype)
        if tuple(st.shape) != tuple(self.state.shape) or not bool(torch.isfinite(st).all()):
            raise InputRangeError(f"cell states must be finite, of shape {tuple(self.state.shape)}")
        sk = self.stuck if stuck is None else torch.as_tensor(np.asarray(stuck), device=self.device).to(torch.int64)
        if tuple(sk.shape) != tuple(self.state.shape) or not bool(torch.isin(sk, torch.tensor([Stuck.NONE, Stuck.AT_0, Stuck.AT_MAX], device=self.device)).all()):
            raise InputRangeError(f"stuck map must have shape {tuple(self.state.shape)} with values 0, 1, 2")
        if nu is None:
            g = self.cfg.device.g_min_us + st / self.frac_scale * self.g_step
            nu_t = self.devices.sample_nu(self._stuck_override(g, sk), self.gens["prog"])
        else:
            nu_t = torch.as_tensor(np.asarray(nu), device=self.device).to(self.dtype)
            if tuple(nu_t.shape) != tuple(self.state.shape) or bool((nu_t < 0).any()):
                raise InputRangeError(f"drift exponents must be non-negative, of shape {tuple(self.state.shape)}")
        self.state, self.stuck, self.nu = st, sk.clone(), nu_t

    def load_golden(self, golden: GoldenTileState) -> None:
        """Copy a golden tile's cell state, stuck map and registers (drift exponents are zeroed)."""
        if golden.cfg != self.cfg:
            raise ConfigError("the golden tile was built from a different chip config")
        self.set_state(golden.state, golden.stuck, nu=np.zeros(golden.state.shape))
        self.set_post(golden.bias, golden.scale)
        self.adc.set_registers(gain=int(golden.adc_gain), offset=int(golden.adc_offset))
        self.relu = bool(golden.relu)

    # -- pulses ----------------------------------------------------------------------------
    def apply_pulses(self, row, unit, cell, polarity, amplitude, *, noise: bool = True) -> torch.Tensor:
        """Apply one programming pulse to each of a set of distinct cells; returns their new states.

        The float twin of :meth:`GoldenTile.pulse` (:meth:`DeviceModel.pulse`), vectorised:
        all index arguments broadcast to one 1-D set of targets, which must be distinct
        (simultaneous pulses on one cell have no sequential meaning).
        """
        dp, a = self.cfg.datapath, self.cfg.array
        try:
            r, u, c, pol, amp = torch.broadcast_tensors(*(torch.as_tensor(np.asarray(v), device=self.device)
                                                          for v in (row, unit, cell, polarity, amplitude)))
        except RuntimeError as exc:
            raise InputRangeError(f"pulse arguments do not broadcast: {exc}") from None
        r, u, c, pol, amp = (t.reshape(-1) for t in (r, u, c, pol, amp))
        for name, t, hi in (("row", r, a.rows), ("unit", u, dp.units), ("cell", c, dp.cells_per_unit)):
            if t.is_floating_point() or (t.numel() and (int(t.min()) < 0 or int(t.max()) >= hi)):
                raise InputRangeError(f"pulse {name} indices must be integers in 0..{hi - 1}")
        flat = (r * dp.units + u) * dp.cells_per_unit + c
        if torch.unique(flat).numel() != flat.numel():
            raise InputRangeError("pulses in one call must target distinct cells")
        new = self.devices.pulse(self.state[r, u, c], pol, amp, self.gens["pulse"],
                                 stuck=self.stuck[r, u, c], noise=noise)
        self.state = self.state.index_put((r, u, c), new)
        return new

    # -- views -----------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """Codes a VMM reads (rows, units, cells): ``floor(state >> frac)``, clamped, stuck-forced."""
        dp = self.cfg.datapath
        code = torch.clamp(torch.floor(self.state / self.frac_scale), 0, dp.code_max)
        code = torch.where(self.stuck == Stuck.AT_0, torch.zeros_like(code), code)
        return torch.where(self.stuck == Stuck.AT_MAX, torch.full_like(code, dp.code_max), code)

    def effective_weights(self) -> torch.Tensor:
        """Per-unit signed code difference (rows, units) the datapath mode's bit lines see."""
        c = self.codes()
        if self.cfg.datapath.cells_per_unit == 2:
            return c[..., 0] - c[..., 1]
        return c[..., 0] - self.cfg.datapath.ref_code

    @property
    def region_exact(self) -> bool:
        """Whether a VMM restricted to the word lines that get inputs and the columns read
        (:meth:`region_weights`, :mod:`cimstack.physics.regions`) equals :meth:`vmm` on the
        whole array: with ideal wires an idle row carries no current unless the I-V curve
        has an offset (``iv_a1``), and per-read noise is drawn in output space."""
        return (self.column_currents is ideal_column_currents and self.cfg.device.iv_a1 == 0.0
                and self.read_noise == "per_read")

    def region_weights(self, rows: torch.Tensor, cols: torch.Tensor, *, mode: str = "physical",
                       t: float | None = None, drift_compensation: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What one VMM on word lines ``rows`` read at logical columns ``cols`` needs, float64.

        Returns ``(w, var, ref_var)``: ``w`` (rows, cols * slices) the per-unit analog weight
        in code units (G+ - G- over the level step, drifted to ``t`` and drift-compensated;
        in ``"datapath"`` mode the integer code differences), units in the order
        ``col * slices + s``; ``var`` the same shape, the per-read noise variance each row adds
        to a unit's sum per unit of squared drive, in code units squared (None without read
        noise); ``ref_var`` (rows, 1) that of the offset scheme's shared reference column
        (None for differential pairs). Physical weights are snapped to a 2**-24 grid as
        :meth:`analog_sums` snaps its sums, so ideal devices give exact integers.
        """
        dp = self.cfg.datapath
        units = (cols.to(self.device).reshape(-1, 1) * dp.slices
                 + torch.arange(dp.slices, device=self.device)).reshape(-1)
        rows = rows.to(self.device)
        if mode == "datapath":
            return self.effective_weights()[rows][:, units].to(torch.float64), None, None
        t = self._time(t)
        g_prog, nu = self._physical_prog(dtype=torch.float64)     # exact from float32 states too
        g_prog, nu = g_prog[rows], nu[rows]
        if dp.cells_per_unit == 2:
            plus, minus = units * 2, units * 2 + 1
        else:
            plus, minus = units, torch.full_like(units, dp.units)
        g_t = g_prog * self.devices.drift_factor(nu, t)
        w = (g_t[:, plus] - g_t[:, minus]) / self.g_step
        gain = float(self.drift_compensation_factor(t)) if drift_compensation else 1.0
        w = torch.round(w * gain * _SNAP) / _SNAP
        sigma2 = (self.devices.read_noise_sigma(g_prog, g_t, t) * (gain / self.g_step)) ** 2
        if not bool((sigma2 > 0).any()):
            return w, None, None
        if dp.cells_per_unit == 2:
            return w, sigma2[:, plus] + sigma2[:, minus], None
        return w, sigma2[:, plus], sigma2[:, dp.units:dp.units + 1]

    def _stuck_override(self, g: torch.Tensor, stuck: torch.Tensor) -> torch.Tensor:
        d = self.cfg.device
        g = torch.where(stuck == Stuck.AT_0, torch.full_like(g, d.g_min_us), g)
        return torch.where(stuck == Stuck.AT_MAX, torch.full_like(g, d.g_max_us), g)

    def _physical_prog(self, conductances=None, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Programmed conductances and drift exponents in physical column order (rows, n_phys),
        computed in ``dtype`` (default: the tile's)."""
        rows = self.cfg.array.rows
        g_min = self.cfg.device.g_min_us
        dt = self.dtype if dtype is None else dtype
        if conductances is None:
            g = g_min + self.state.to(dt) / self.frac_scale * self.g_step
            ref = None if self.ref_state is None else g_min + self.ref_state.to(dt) / self.frac_scale * self.g_step
        else:
            g, ref = self._check_conductances(conductances)
        g = self._stuck_override(g, self.stuck).reshape(rows, -1)
        nu = self.nu.to(dt).reshape(rows, -1)
        if ref is not None:
            assert self.ref_nu is not None            # a reference column (offset scheme) has its drift exponents
            g = torch.cat([g, ref], dim=-1)
            nu = torch.cat([nu, self.ref_nu.to(dt)], dim=-1)
        return g, nu

    def _check_conductances(self, conductances):
        dp, rows = self.cfg.datapath, self.cfg.array.rows
        try:
            gp, gm = conductances
        except (TypeError, ValueError):
            raise InputRangeError("conductances must be a pair (G+, G-)") from None
        if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (gp, gm)):
            raise InputRangeError("conductances must be floating-point torch tensors in µS")
        gp, gm = gp.to(self.dtype), gm.to(self.dtype)
        want_m = (rows, dp.units) if dp.cells_per_unit == 2 else (rows, 1)
        if tuple(gp.shape) != (rows, dp.units) or tuple(gm.shape) != want_m:
            raise InputRangeError(f"conductances must have shapes G+ {(rows, dp.units)} and G- {want_m}, "
                                  f"got {tuple(gp.shape)} and {tuple(gm.shape)}")
        if dp.cells_per_unit == 2:
            return torch.stack([gp, gm], dim=-1), None
        return gp.unsqueeze(-1), gm

    def physical_conductances(self, t: float | None = None) -> torch.Tensor:
        """The crossbar as ``column_currents`` sees it: (rows, n_phys) µS after drift to ``t``.

        Column order: ``[u0+, u0-, u1+, ...]`` for differential pairs; the ``units`` cells
        then the reference column for the offset scheme. No read noise.
        """
        g, nu = self._physical_prog()
        return g * self.devices.drift_factor(nu, self._time(t))

    def _combine(self, i_phys: torch.Tensor) -> torch.Tensor:
        """Bit-line currents of the physical columns to per-unit differences (G+ minus G-)."""
        units = self.cfg.datapath.units
        if self.cfg.datapath.cells_per_unit == 2:
            return i_phys[..., 0::2] - i_phys[..., 1::2]
        return i_phys[..., :units] - i_phys[..., units:]

    def _time(self, t: float | None) -> float:
        return self.cfg.device.drift_t0_s if t is None else t

    # -- drift compensation ----------------------------------------------------------------
    def drift_compensation_factor(self, t: float, conductances=None) -> torch.Tensor:
        """Global drift compensation ``alpha = readout(t0) / readout(t)`` (Joshi et al. 2020).

        ``readout`` is the summed magnitude of every unit's analog output for a calibration
        input of one unit pulse on all rows; it uses the expected (noise-free) reads, as a
        calibration averaged over many reads would. Returns 1 when the array reads zero.
        """
        t = self._time(t)
        with torch.no_grad():
            g, nu = self._physical_prog(None if conductances is None else tuple(c.detach() for c in conductances))
            x = torch.ones((1, self.cfg.array.rows), dtype=self.dtype, device=self.device)
            v = self.devices.iv(x) * self.cfg.input.v_read
            r0 = self._combine(self.column_currents(v, g)).abs().sum()
            rt = self._combine(self.column_currents(v, g * self.devices.drift_factor(nu, t))).abs().sum()
            return r0 / rt if rt > 0 else torch.ones((), dtype=self.dtype, device=self.device)

    # -- inference -------------------------------------------------------------------------
    def analog_sums(self, x, *, mode: str = "physical", t: float | None = None, noise: bool = True,
                    drift_compensation: bool = False, integer_noise: bool = True,
                    conductances=None, input_mode: str | None = None) -> torch.Tensor:
        """Per-pulse, per-unit column sums in code units before the ADC: (pulses, batch, units).

        Inputs ``x`` of shape (batch, rows) (or (rows,)); see :meth:`vmm` for the arguments.
        """
        if mode not in _MODES:
            raise ConfigError(f"mode = {mode!r} is not one of {', '.join(_MODES)}")
        xt = as_input_tensor(x, self.cfg, self.dtype, self.device, input_mode)
        xb = xt.reshape(-1, self.cfg.array.rows)
        digits = self.dac.digits(xb, input_mode)                         # (P, B, R)
        dev = self.cfg.device
        if mode == "datapath":
            if t is not None or drift_compensation or conductances is not None:
                raise ConfigError("t, drift_compensation and conductances apply to mode='physical' only")
            s = digits @ self.effective_weights()
            if noise and dev.output_noise_lsb > 0:
                n = dev.output_noise_lsb * torch.randn(s.shape, generator=self.gens["read"], dtype=self.dtype, device=self.device)
                s = s + (torch.floor(n + 0.5) if integer_noise else n)
            return s
        t_eff = self._time(t)
        g_prog, nu = self._physical_prog(conductances)
        g_t = g_prog * self.devices.drift_factor(nu, t_eff)
        v = self.devices.iv(digits) * self.cfg.input.v_read             # (P, B, R) volts
        per_call = noise and self.read_noise == "per_call"
        g_read = self.devices.read(g_prog, g_t, t_eff, self.gens["read"]) if per_call else g_t
        s = self._combine(self.column_currents(v, g_read))
        if noise and self.read_noise == "per_read":
            s = s + self._read_noise_current(v, g_prog, g_t, t_eff)
        s = s / (self.cfg.input.v_read * self.g_step)                  # µA -> code units
        if drift_compensation:
            s = s * self.drift_compensation_factor(t_eff, conductances)
        # Snap to a 2**-24 code-unit grid: removes float round-off (~1e-12) so ideal devices
        # give exact integer sums and hit the ADC's rounding ties the way the integer
        # datapath does; a shift of < 6e-8 code units is physically irrelevant.
        s = s + (torch.round(s * _SNAP) / _SNAP - s).detach()
        if noise and dev.output_noise_lsb > 0:
            s = s + dev.output_noise_lsb * torch.randn(s.shape, generator=self.gens["read"], dtype=self.dtype, device=self.device)
        return s

    def _read_noise_current(self, v: torch.Tensor, g_prog: torch.Tensor, g_t: torch.Tensor, t: float) -> torch.Tensor:
        """Per-read device noise in output space: for independent Gaussian cell noise the
        bit-line current noise is Gaussian with variance ``sum_r v_r^2 sigma_rc^2``."""
        sigma = self.devices.read_noise_sigma(g_prog.detach(), g_t.detach(), t)
        if not bool((sigma > 0).any()):
            return torch.zeros((), dtype=self.dtype, device=self.device)
        var = (v.detach() ** 2) @ (sigma ** 2)                          # (P, B, n_phys)
        gen, units = self.gens["read"], self.cfg.datapath.units
        if self.cfg.datapath.cells_per_unit == 2:
            sd = torch.sqrt(var[..., 0::2] + var[..., 1::2])
            return sd * torch.randn(sd.shape, generator=gen, dtype=self.dtype, device=self.device)
        sd_u, sd_r = torch.sqrt(var[..., :units]), torch.sqrt(var[..., units:])
        n_u = sd_u * torch.randn(sd_u.shape, generator=gen, dtype=self.dtype, device=self.device)
        n_r = sd_r * torch.randn(sd_r.shape, generator=gen, dtype=self.dtype, device=self.device)
        return n_u - n_r                                               # the reference noise is shared

    def vmm(self, x, *, mode: str = "physical", t: float | None = None, noise: bool = True,
            drift_compensation: bool = False, integer_noise: bool = True, conductances=None,
            input_mode: str | None = None) -> torch.Tensor:
        """One VMM per input row: ADC codes, shift-add and post-processing, like the chip.

        Parameters
        ----------
        x : integer-valued inputs (batch, rows) or (rows,); a float tensor that requires
            grad gets straight-through gradients.
        mode : ``"physical"`` or ``"datapath"`` (module docstring).
        t : read time in seconds since programming (physical mode; default ``drift_t0_s``).
        noise : draw read-time noise (output noise, and device read noise in physical mode);
            programming-time non-idealities are part of the state and always present.
        drift_compensation : rescale by :meth:`drift_compensation_factor` (physical mode).
        integer_noise : datapath mode only: round the output noise half up to integers as
            the RTL does.
        conductances : physical mode: a (G+, G-) pair in µS replacing the programmed array
            (for training; gradients flow to it). Stuck flags and drift exponents still apply.
        input_mode : how inputs become pulses (a name in ``cfg.datapath.modes``; default the
            config's ``input.mode``), selectable per VMM as on the chip.

        Returns
        -------
        Float tensor (batch, cols) or (cols,) of integer values (post-processed outputs).
        """
        single = (x.ndim if isinstance(x, torch.Tensor) else np.ndim(x)) == 1
        s = self.analog_sums(x, mode=mode, t=t, noise=noise, drift_compensation=drift_compensation,
                             integer_noise=integer_noise, conductances=conductances, input_mode=input_mode)
        y = shift_add(self.adc(s), self.cfg, input_mode)
        p = self.cfg.post
        out = post_process(y, self.bias, self.scale, p.shift, self.relu, p.out_bits)
        return out[0] if single else out

