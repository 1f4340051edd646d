"""The chip configuration: the single source of truth every layer reads.

A :class:`ChipConfig` is a tree of frozen dataclasses. The RTL elaborates from it, the golden
model and the physics emulator compute with it, and :attr:`ChipConfig.datapath` derives the
integer widths and loop counts they all share.

Every field is declared once, with :func:`spec`: its default, the range or choices it allows
and its one-line meaning sit beside it (a :class:`FieldSpec` in the field's metadata, which
also feeds the generated reference docs/config.md). At construction one loop checks every
field against its spec; an out-of-range value raises :class:`~cimstack.errors.ConfigError`
naming the field and the range. The checks of how fields fit together follow, each a named
``_check_*`` method of the dataclass that holds the fields.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import tomli_w

from cimstack.chip.enums import InputEncoding
from cimstack.errors import ConfigError

__all__ = [
    "ArrayConfig", "CellConfig", "MappingConfig", "InputConfig", "AdcConfig", "PostConfig",
    "DeviceConfig", "ClockConfig", "SocConfig", "ChipConfig", "Datapath", "InputMode", "INPUT_MODES", "PRESETS", "preset", "load",
    "NOISE_FRAC_BITS", "IRWIN_HALL_SIGMA", "FieldSpec", "spec",
]

#: Fixed-point fraction of the noise scale factors (read noise, cycle-to-cycle pulse noise).
NOISE_FRAC_BITS = 16
#: Standard deviation of the PRNG's Gaussian approximation: the sum of the four bytes of a
#: xorshift32 output minus 510 (Irwin-Hall, n=4): sqrt(4 * (256**2 - 1) / 12).
IRWIN_HALL_SIGMA = math.sqrt(4 * (256 ** 2 - 1) / 12)

#: A range bound: a number, or a function of the dataclass holding the field, for a range that
#: depends on a field declared before it (``array.spare_rows`` below ``array.rows``).
Bound = int | float | Callable[[Any], int | float]


#: The input encodings a VMM may select; a mode's index is its hardware code.
INPUT_MODES = tuple(e.config_name for e in InputEncoding)      # the TOML spellings, in code order


# -- field declarations and the per-field check ------------------------------------------------

@dataclass(frozen=True)
class FieldSpec:
    """What one config field allows and means; :func:`spec` puts it in the field's metadata.

    ``kind`` is the type of the default (``int``, ``float``, ``bool`` or ``str``) and picks the
    check: a number within ``lo`` .. ``hi``, one of ``choices``, a bool, or (a ``str`` without
    choices) a non-empty string.
    """

    kind: str
    doc: str
    lo: Bound | None = None
    hi: Bound | None = None
    choices: tuple[str, ...] = ()

    def bounds(self, section: Any) -> tuple[int | float, int | float]:
        """``(lo, hi)`` for the dataclass ``section`` holding the field (a bound that depends on
        another field is evaluated there)."""
        # only numeric fields ask, and spec() gives every numeric field both bounds
        return cast("tuple[int | float, int | float]",
                    tuple(b(section) if callable(b) else b for b in (self.lo, self.hi)))

    def check(self, path: str, value: Any, section: Any) -> None:
        """Raise :class:`ConfigError` naming ``path`` (e.g. ``adc.bits``) and the range unless
        ``value`` is allowed."""
        if self.choices:
            if value not in self.choices:
                raise ConfigError(f"{path} = {value!r} is not one of {', '.join(self.choices)}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{path} must be true or false, got {value!r}")
        elif self.kind == "str":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path} must be a non-empty string, got {value!r}")
        elif self.kind == "int":
            lo, hi = self.bounds(section)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{path} must be an integer in {lo}..{hi}, got {value!r}")
            if not lo <= value <= hi:
                raise ConfigError(f"{path} = {value} is out of range: allowed {lo}..{hi}")
        else:
            lo, hi = self.bounds(section)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ConfigError(f"{path} must be a number in [{lo}, {hi}], got {value!r}")
            if not lo <= value <= hi:
                raise ConfigError(f"{path} = {value} is out of range: allowed [{lo}, {hi}]")


def spec(default: Any, *, doc: str, lo: Bound | None = None, hi: Bound | None = None,
         choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field with ``default`` and its :class:`FieldSpec` (``metadata["spec"]``):
    ``doc`` its meaning, ``lo``/``hi`` its inclusive range (numbers) or ``choices`` (strings)."""
    kind = type(default).__name__
    if kind not in ("int", "float", "bool", "str"):
        raise TypeError(f"a config field's default must be an int, float, bool or str, got {default!r}")
    if kind in ("int", "float") and (lo is None or hi is None):
        raise TypeError(f"a numeric config field needs lo and hi ({doc!r})")
    return field(default=default, metadata={"spec": FieldSpec(kind, doc, lo, hi, tuple(choices))})


def _check_fields(obj: Any, section: str) -> None:
    """Check every field of the dataclass ``obj`` that has a :class:`FieldSpec`, in declaration
    order (so a bound may read an earlier field); ``section`` prefixes the names in errors
    (``""`` at the top level)."""
    for f in fields(obj):
        s = f.metadata.get("spec")
        if s is not None:
            s.check(f"{section}.{f.name}" if section else f.name, getattr(obj, f.name), obj)


# -- sections -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArrayConfig:
    """Tile count and the geometry of each tile's crossbar.

    ``cols`` counts logical weight columns; each occupies ``datapath.slices`` column units
    (bit slices), each unit one cell (offset scheme) or a cell pair (differential scheme).
    ``mac_lanes`` column units are accumulated in parallel, ``adc_share`` units share one ADC.

    ``spare_rows`` and ``spare_cols`` (the last word lines and logical columns of every
    tile) are held back from placement: programming moves a row or column whose cells fail
    write-verify onto a spare (``Deployment.program``, ``cimstack.runtime.repair``). They are a host policy
    over the same arrays, so they are left out of the config hash the gateware carries.
    """

    tiles: int = spec(4, lo=1, hi=48, doc="tiles (crossbar arrays) on the chip")
    rows: int = spec(64, lo=1, hi=4096, doc="word lines per tile")
    cols: int = spec(64, lo=1, hi=4096, doc="logical weight columns per tile")
    mac_lanes: int = spec(16, lo=1, hi=512, doc="column units accumulated in parallel; divides cols x slices "
                                                "and is a multiple of the slices")
    adc_share: int = spec(4, lo=1, hi=512, doc="column units per ADC (conversion time only); divides mac_lanes")
    spare_rows: int = spec(0, lo=0, hi=lambda a: a.rows - 1,
                           doc="word lines per tile held back to replace rows with cells that fail to program "
                               "(less than rows)")
    spare_cols: int = spec(0, lo=0, hi=lambda a: a.cols - 1,
                           doc="logical columns per tile held back to replace columns with cells that fail to "
                               "program (less than cols)")

    def __post_init__(self):
        _check_fields(self, "array")

    @property
    def usable_rows(self) -> int:
        """Word lines per tile that placement may use (the rest are spares)."""
        return self.rows - self.spare_rows

    @property
    def usable_cols(self) -> int:
        """Logical columns per tile that placement may use (the rest are spares)."""
        return self.cols - self.spare_cols


@dataclass(frozen=True)
class CellConfig:
    """The integer conductance state stored per cell.

    A cell holds ``cell_bits + frac_bits`` bits of state; a VMM reads the top ``cell_bits``
    (the conductance code, ``2**cell_bits`` levels), the fraction lets pulse updates be finer
    than one level.
    """

    cell_bits: int = spec(4, lo=1, hi=8, doc="conductance code bits per cell (2**bits levels)")
    frac_bits: int = spec(4, lo=0, hi=8, doc="extra state bits below the code, for fine pulse updates")

    def __post_init__(self):
        _check_fields(self, "cell")


@dataclass(frozen=True)
class MappingConfig:
    """How a signed integer weight becomes cells.

    ``differential``: |w| split into cell-sized digits, the sign picks G+ or G- of a pair.
    ``offset``: w split into balanced signed digits ``u - 2**(cell_bits-1)``; the reference
    column holds the mid code and is subtracted on the bit line.
    """

    weight_bits: int = spec(8, lo=2, hi=16, doc="signed weight width")
    scheme: str = spec("differential", choices=("differential", "offset"),
                       doc="`differential` (G+/G- pair, digits of \\|w\\|) or `offset` (balanced digits "
                           "and a reference column)")

    def __post_init__(self):
        _check_fields(self, "mapping")


@dataclass(frozen=True)
class InputConfig:
    """How signed integer inputs drive the word lines.

    ``bit_serial``: one two's-complement bit plane per pulse (top plane weighs -2**(b-1)).
    ``amplitude``: ``dac_bits``-wide digits per pulse, unsigned except the signed top digit.
    ``unary``: 2**(b-1)-1 pulses of amplitude sign(x), pulse k active while |x| > k.
    ``v_read`` is the word-line voltage of one input unit (used by the physics emulator).
    """

    bits: int = spec(8, lo=2, hi=16, doc="signed input width (unary mode: at most 8)")
    mode: str = spec("bit_serial", choices=INPUT_MODES,
                     doc="default input encoding; each VMM may select another at run time")
    dac_bits: int = spec(1, lo=1, hi=lambda i: i.bits, doc="DAC digit width in amplitude mode (1 otherwise)")
    v_read: float = spec(0.1, lo=1e-3, hi=2.0, doc="word-line voltage of one input unit (V), physics emulator")

    def __post_init__(self):
        _check_fields(self, "input")
        self._check_dac_bits_need_amplitude()
        self._check_unary_bits()

    def _check_dac_bits_need_amplitude(self) -> None:
        """``input.dac_bits`` is 1 unless the mode is ``amplitude`` (bit_serial drives one bit)."""
        if self.mode == "bit_serial" and self.dac_bits != 1:
            raise ConfigError(f"input.dac_bits = {self.dac_bits} needs input.mode = 'amplitude'; bit_serial uses 1")

    def _check_unary_bits(self) -> None:
        """Unary mode takes at most 8-bit inputs (2**(bits-1)-1 pulses per VMM)."""
        if self.mode == "unary" and self.bits > 8:
            raise ConfigError(f"input.bits = {self.bits} is out of range for unary mode: allowed 2..8 (2**(bits-1)-1 pulses)")


@dataclass(frozen=True)
class AdcConfig:
    """Column ADC: code = clamp(round((sum + noise) * gain / 2**gain_shift) + offset).

    ``gain`` models the integration time (OpenCIMTC's IT 1..63) and is a run-time register.
    """

    bits: int = spec(8, lo=2, hi=16, doc="ADC output width")
    gain: int = spec(8, lo=1, hi=255, doc="integration-time gain (run-time register)")
    gain_shift: int = spec(4, lo=0, hi=16, doc="the gain is gain / 2**gain_shift")
    offset: int = spec(0, lo=lambda a: -(1 << (a.bits - 1)), hi=lambda a: (1 << (a.bits - 1)) - 1,
                       doc="ADC offset in codes (run-time register)")

    def __post_init__(self):
        _check_fields(self, "adc")


@dataclass(frozen=True)
class PostConfig:
    """Digital post-processing of each column: ((y + bias) * scale) >> shift, ReLU, saturate."""

    out_bits: int = spec(24, lo=2, hi=32, doc="saturation width of the tile outputs")
    bias_bits: int = spec(16, lo=2, hi=24, doc="width of the per-column bias")
    scale_bits: int = spec(8, lo=1, hi=16, doc="width of the per-column scale")
    shift: int = spec(0, lo=0, hi=24, doc="right shift after scaling")
    relu: bool = spec(False, doc="ReLU at reset (run-time register)")

    def __post_init__(self):
        _check_fields(self, "post")


@dataclass(frozen=True)
class DeviceConfig:
    """Device physics and non-idealities.

    ``model = "pcm"`` uses the PCM statistical model of Joshi et al. 2020 (programming-noise
    polynomial, state-dependent drift exponent, 1/f read noise); ``"generic"`` uses the
    constant ``*_sigma`` fields: ``prog_noise_sigma`` is a fraction of ``g_max_us``,
    ``read_noise_sigma`` a fraction of the cell's conductance, ``d2d_sigma`` and
    ``pulse_c2c_sigma`` are relative.
    ``output_noise_lsb`` is the read noise the RTL injects per ADC conversion from its PRNG,
    in units of one cell code times one input unit. ``pulse_step_lsb`` is the state change
    (in state LSBs) of a unit-amplitude SET pulse on a cell at zero conductance (soft bounds).
    """

    model: str = spec("generic", choices=("generic", "pcm"),
                      doc="`generic` (the constant sigmas below) or `pcm` (Joshi et al. 2020 statistics)")
    g_min_us: float = spec(0.1, lo=0.0, hi=1e4, doc="lowest conductance (µS)")
    g_max_us: float = spec(10.0, lo=1e-3, hi=1e4, doc="highest conductance (µS)")
    prog_noise_sigma: float = spec(0.01, lo=0.0, hi=1.0, doc="programming noise σ / g_max (generic model)")
    read_noise_sigma: float = spec(0.0, lo=0.0, hi=1.0,
                                   doc="per-cell read noise σ / g (generic model); in the RTL, the write-verify "
                                       "read noise σ / full scale")
    output_noise_lsb: float = spec(0.5, lo=0.0, hi=256.0,
                                   doc="on-chip read noise per ADC conversion, σ in code x input units "
                                       "(PRNG-driven in the RTL)")
    drift_nu: float = spec(0.0, lo=0.0, hi=1.0, doc="mean drift exponent ν (generic model)")
    drift_nu_std: float = spec(0.0, lo=0.0, hi=1.0, doc="device-to-device σ of ν")
    drift_t0_s: float = spec(20.0, lo=1e-9, hi=1e9, doc="drift reference time t0 (s)")
    stuck_at_0_rate: float = spec(0.0, lo=0.0, hi=0.5, doc="probability that a cell is stuck at g_min")
    stuck_at_gmax_rate: float = spec(0.0, lo=0.0, hi=0.5, doc="probability that a cell is stuck at g_max")
    d2d_sigma: float = spec(0.0, lo=0.0, hi=1.0, doc="device-to-device conductance variation (relative)")
    pulse_step_lsb: float = spec(4.0, lo=1 / 16, hi=4096.0,
                                 doc="soft-bounds step of a unit SET pulse at G = 0, in state LSBs")
    pulse_c2c_sigma: float = spec(0.1, lo=0.0, hi=1.0, doc="cycle-to-cycle noise of a pulse step (relative)")
    pulse_max_amplitude: int = spec(7, lo=1, hi=255, doc="largest write-verify pulse amplitude")
    iv_a1: float = spec(0.0, lo=-10.0, hi=10.0,
                        doc="I-V nonlinearity x -> a1 + a2 x + a3 sign(x) x², constant term")
    iv_a2: float = spec(1.0, lo=-10.0, hi=10.0, doc="I-V nonlinearity, linear term")
    iv_a3: float = spec(0.0, lo=-10.0, hi=10.0, doc="I-V nonlinearity, quadratic term")
    wire_resistance_ohm: float = spec(0.0, lo=0.0, hi=1e3,
                                      doc="wire segment resistance (Ω); above 0 the emulator solves IR drop "
                                          "and compile corrects for it")

    def __post_init__(self):
        _check_fields(self, "device")
        self._check_conductance_range()

    def _check_conductance_range(self) -> None:
        """``device.g_max_us`` exceeds ``device.g_min_us``."""
        if self.g_max_us <= self.g_min_us:
            raise ConfigError(f"device.g_max_us = {self.g_max_us} must exceed device.g_min_us = {self.g_min_us}")


@dataclass(frozen=True)
class ClockConfig:
    """System clock of the SoC and the host UART rate."""

    clock_hz: int = spec(25_000_000, lo=1_000_000, hi=500_000_000, doc="SoC clock (Hz); at least 4x uart_baud")
    uart_baud: int = spec(115_200, lo=1200, hi=12_000_000, doc="host UART rate (baud)")

    def __post_init__(self):
        _check_fields(self, "clock")
        self._check_uart_oversampling()

    def _check_uart_oversampling(self) -> None:
        """``clock.clock_hz`` is at least 4 x ``clock.uart_baud`` (the UART samples each bit)."""
        if self.clock_hz < 4 * self.uart_baud:
            raise ConfigError(f"clock.uart_baud = {self.uart_baud} needs clock.clock_hz >= 4x baud, got {self.clock_hz}")


@dataclass(frozen=True)
class SocConfig:
    """On-chip memories around the tiles and the host link's frame limit.

    ``act_words`` 32-bit words of activation buffer; ``wv_jobs`` entries of write-verify job
    list (and as many results); ``max_payload`` the largest frame payload in bytes the host
    bridge buffers (a frame is checked completely before anything it carries is applied);
    ``instr_words`` 64-bit words of sequencer program memory.
    """

    act_words: int = spec(4096, lo=16, hi=65536, doc="activation buffer, 32-bit words")
    wv_jobs: int = spec(1024, lo=1, hi=65536, doc="write-verify job list entries per run")
    max_payload: int = spec(1024, lo=64, hi=16384, doc="largest frame payload the host bridge buffers (bytes)")
    instr_words: int = spec(256, lo=4, hi=4096, doc="sequencer program memory, 64-bit instructions")

    def __post_init__(self):
        _check_fields(self, "soc")


@dataclass(frozen=True)
class InputMode:
    """How one input mode expands a VMM's inputs into pulses (selectable per VMM at run time)."""

    name: str
    code: InputEncoding    # hardware encoding
    pulses: int            # input pulses per VMM
    pulse_shift: int       # shift between successive pulses' partial results (0 for unary)
    digit_min: int         # most negative input digit of one pulse
    digit_max: int         # most positive input digit of one pulse
    in_min: int            # input range of the mode
    in_max: int


@dataclass(frozen=True)
class Datapath:
    """Integer widths and loop counts derived from a config; RTL and golden model both use these.

    ``pulses`` .. ``digit_max`` describe the config's own ``input.mode``; ``modes`` every mode a
    VMM may select at run time (unary only up to 8-bit inputs). Widths cover all of them.
    """

    slices: int            # column units per logical column (weight bit slices)
    units: int             # column units per tile = cols * slices
    groups: int            # MAC passes over the rows: units / mac_lanes
    pulses: int            # input pulses per VMM
    pulse_shift: int       # shift between successive pulses' partial results (0 for unary)
    digit_min: int         # most negative input digit of one pulse
    digit_max: int         # most positive input digit of one pulse
    cells_per_unit: int    # 2 for a differential pair, 1 with an offset reference column
    state_bits: int        # stored bits per cell
    code_max: int          # largest conductance code
    ref_code: int          # code of the reference column (offset scheme)
    weight_min: int
    weight_max: int
    sum_bits: int          # signed width of one column unit's analog sum
    acc_bits: int          # signed width of the shift-accumulated column result
    adc_min: int
    adc_max: int
    read_noise_q: int      # output noise scale, NOISE_FRAC_BITS fraction, per PRNG unit
    c2c_noise_q: int       # pulse cycle-to-cycle noise scale, NOISE_FRAC_BITS fraction
    pulse_step_q: int      # pulse step in 1/16 state LSB
    verify_noise_q: int    # write-verify read noise scale (state LSBs), NOISE_FRAC_BITS fraction
    config_hash: int       # 32-bit hash of the config, for the gateware's ID register
    input_mode: str = "bit_serial"                             # the config's own mode
    modes: dict[str, InputMode] = field(default_factory=dict[str, InputMode], compare=False)   # name -> InputMode

    def mode(self, name: str | None = None) -> InputMode:
        """The :class:`InputMode` called ``name`` (``None``: the config's own mode)."""
        if name is None:
            name = self.input_mode
        try:
            return self.modes[name]
        except KeyError:
            raise ConfigError(f"input mode {name!r} is not available; this chip has {', '.join(self.modes)}") from None


def _mode_info(name: str, bits: int, dac_bits: int) -> InputMode:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if name == "unary":
        return InputMode(name, InputEncoding.from_config(name), (1 << (bits - 1)) - 1, 0, -1, 1, lo + 1, hi)
    db = 1 if name == "bit_serial" else dac_bits
    pulses = math.ceil(bits / db)
    top_bits = bits - db * (pulses - 1)      # the signed top digit's width
    dmin = -(1 << (top_bits - 1))
    dmax = max((1 << db) - 1 if pulses > 1 else 0, (1 << (top_bits - 1)) - 1)
    return InputMode(name, InputEncoding.from_config(name), pulses, db, dmin, dmax, lo, hi)


def _signed_bits(lo: int, hi: int) -> int:
    """Width of the smallest two's-complement signal holding every integer in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


@dataclass(frozen=True)
class ChipConfig:
    """The whole chip. Build it from a preset (:func:`preset`), a TOML file (:func:`load`) or
    directly; derive variants with :meth:`replace`."""

    name: str = spec("default", doc="config name (also names build folders)")
    array: ArrayConfig = field(default_factory=ArrayConfig)
    cell: CellConfig = field(default_factory=CellConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    input: InputConfig = field(default_factory=InputConfig)
    adc: AdcConfig = field(default_factory=AdcConfig)
    post: PostConfig = field(default_factory=PostConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    soc: SocConfig = field(default_factory=SocConfig)
    seed: int = spec(1, lo=0, hi=2**32 - 1, doc="seed of the chip instance and of every on-chip PRNG stream")

    def __post_init__(self):
        _check_fields(self, "")          # each section has checked its own fields
        self._check_offset_cell_bits()  # before the datapath, which needs it
        self._check_mac_lanes()
        self._check_adc_share()
        self._check_noise_scalers()
        self._check_accumulator_width()

    def _check_offset_cell_bits(self) -> None:
        """The offset scheme needs ``cell.cell_bits`` >= 2 (a reference code with a digit below it)."""
        if self.mapping.scheme == "offset" and self.cell.cell_bits < 2:
            raise ConfigError("cell.cell_bits = 1 is out of range for the offset scheme: allowed 2..8")

    def _check_mac_lanes(self) -> None:
        """``array.mac_lanes`` divides the column units and is a multiple of the weight slices."""
        a, dp = self.array, self.datapath
        if dp.units % a.mac_lanes:
            raise ConfigError(
                f"array.mac_lanes = {a.mac_lanes} must divide the {dp.units} column units "
                f"(array.cols {a.cols} x {dp.slices} weight slices)")
        if a.mac_lanes % dp.slices:
            raise ConfigError(
                f"array.mac_lanes = {a.mac_lanes} must be a multiple of the {dp.slices} weight slices "
                f"so a column's slices are accumulated together")

    def _check_adc_share(self) -> None:
        """``array.adc_share`` divides ``array.mac_lanes``."""
        a = self.array
        if a.mac_lanes % a.adc_share:
            raise ConfigError(f"array.adc_share = {a.adc_share} must divide array.mac_lanes = {a.mac_lanes}")

    def _check_noise_scalers(self) -> None:
        """The RTL's fixed-point noise scales fit their registers: the output noise (from
        ``device.output_noise_lsb``) under 2**20, the write-verify read noise (from
        ``device.read_noise_sigma`` and the cell's state bits) under 2**16."""
        dp = self.datapath
        if dp.read_noise_q >= 1 << 20:
            raise ConfigError(f"device.output_noise_lsb = {self.device.output_noise_lsb} is too large for the RTL noise scaler")
        if dp.verify_noise_q >= 1 << 16:
            raise ConfigError(f"device.read_noise_sigma = {self.device.read_noise_sigma} is too large for the write-verify read noise scaler")

    def _check_accumulator_width(self) -> None:
        """The column accumulator (from ``array.rows``, ``input.bits`` and ``mapping.weight_bits``)
        fits in 48 bits."""
        if self.datapath.acc_bits > 48:
            raise ConfigError(f"the column accumulator would need {self.datapath.acc_bits} bits (> 48): "
                              f"reduce array.rows, input.bits or mapping.weight_bits")

    # -- derived ---------------------------------------------------------------------------
    @functools.cached_property
    def datapath(self) -> Datapath:
        return _derive(self)

    def replace(self, **changes: Any) -> ChipConfig:
        """A copy with top-level fields replaced; sections may be given as dicts of changes."""
        resolved: dict[str, Any] = {}
        for key, value in changes.items():
            current = getattr(self, key, None)
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                value = _build_section(type(current), cast("dict[str, Any]", value), key, base=current)
            resolved[key] = value
        return replace(self, **resolved)

    # -- TOML ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChipConfig:
        if not isinstance(data, dict):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard for untyped callers
            raise ConfigError(f"a chip config must be a table, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            ftype = _SECTIONS.get(key)
            if ftype is not None:
                if not isinstance(value, dict):
                    raise ConfigError(f"[{key}] must be a table, got {value!r}")
                value = _build_section(ftype, cast("dict[str, Any]", value), key)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> ChipConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_dict(data)


def _build_section(ftype: type, values: dict[str, Any], section: str, base: Any = None) -> Any:
    known = {f.name for f in fields(ftype)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in [{section}]; known: {', '.join(sorted(known))}")
    if base is None:
        return ftype(**values)
    return replace(base, **values)


#: TOML table name -> section dataclass, as ChipConfig declares them
_SECTIONS: dict[str, type] = {f.name: cast(type, f.default_factory) for f in fields(ChipConfig)
                              if f.default_factory is not dataclasses.MISSING}


def _derive(cfg: ChipConfig) -> Datapath:
    a, c, m, i, d = cfg.array, cfg.cell, cfg.mapping, cfg.input, cfg.device
    code_max = (1 << c.cell_bits) - 1
    if m.scheme == "differential":
        slices = math.ceil((m.weight_bits - 1) / c.cell_bits)
        cells_per_unit, ref_code = 2, 0
        wmax = (1 << (m.weight_bits - 1)) - 1
        wmin = -wmax
        cell_diff_min, cell_diff_max = -code_max, code_max
    else:                               # cell_bits >= 2: ChipConfig._check_offset_cell_bits
        # balanced digits reach (ref_code - 1) * sum_s 2**(s*cb): add slices until w_max fits
        cells_per_unit, ref_code = 1, 1 << (c.cell_bits - 1)
        slices = 1
        while (ref_code - 1) * sum(1 << (s * c.cell_bits) for s in range(slices)) < (1 << (m.weight_bits - 1)) - 1:
            slices += 1
        wmax = (1 << (m.weight_bits - 1)) - 1
        wmin = -(1 << (m.weight_bits - 1))
        cell_diff_min, cell_diff_max = -ref_code, code_max - ref_code
    modes = {name: _mode_info(name, i.bits, i.dac_bits) for name in INPUT_MODES
             if name != "unary" or i.bits <= 8}
    own = modes[i.mode]
    adc_min, adc_max = -(1 << (cfg.adc.bits - 1)), (1 << (cfg.adc.bits - 1)) - 1
    slice_weight = sum(1 << (s * c.cell_bits) for s in range(slices))
    sum_bits = acc_bits = 1
    for md in modes.values():           # widths cover every mode a VMM may select
        prods = [md.digit_min * cell_diff_min, md.digit_min * cell_diff_max,
                 md.digit_max * cell_diff_min, md.digit_max * cell_diff_max]
        sum_bits = max(sum_bits, _signed_bits(a.rows * min(prods), a.rows * max(prods)) + 1)  # +1: noise headroom
        pulse_weight = sum(1 << (p * md.pulse_shift) for p in range(md.pulses))
        acc_bound = (-adc_min) * pulse_weight * slice_weight
        acc_bits = max(acc_bits, _signed_bits(-acc_bound, acc_bound))
    # the hash names the gateware: the spare lines are a host policy over the same arrays
    hardware = cfg.to_dict()
    hardware["array"] = {k: v for k, v in hardware["array"].items() if not k.startswith("spare_")}
    digest = hashlib.sha256(tomli_w.dumps(hardware).encode()).digest()
    return Datapath(
        slices=slices, units=a.cols * slices, groups=(a.cols * slices) // a.mac_lanes or 1,
        pulses=own.pulses, pulse_shift=own.pulse_shift, digit_min=own.digit_min, digit_max=own.digit_max,
        cells_per_unit=cells_per_unit, state_bits=c.cell_bits + c.frac_bits, code_max=code_max,
        ref_code=ref_code, weight_min=wmin, weight_max=wmax, sum_bits=sum_bits, acc_bits=acc_bits,
        adc_min=adc_min, adc_max=adc_max,
        read_noise_q=round(d.output_noise_lsb / IRWIN_HALL_SIGMA * (1 << NOISE_FRAC_BITS)),
        c2c_noise_q=round(d.pulse_c2c_sigma / IRWIN_HALL_SIGMA * (1 << NOISE_FRAC_BITS)),
        pulse_step_q=max(1, round(d.pulse_step_lsb * 16)),
        verify_noise_q=round(d.read_noise_sigma * ((1 << (c.cell_bits + c.frac_bits)) - 1)
                             / IRWIN_HALL_SIGMA * (1 << NOISE_FRAC_BITS)),
        config_hash=int.from_bytes(digest[:4], "little"), input_mode=i.mode, modes=modes,
    )


# -- presets --------------------------------------------------------------------------------

def _default() -> ChipConfig:
    return ChipConfig()


def _opencimtc() -> ChipConfig:
    # Yu et al., Nat. Commun. 2025: 576x128 arrays, 4-bit signed weights on differential
    # pairs (G = w/7 * 19.16 uS), 2-bit input digits, 4-bit ADC with code = round(I*IT*7/120.7)
    # which is sum * IT / 63; we use the power-of-two 1/64.
    return ChipConfig(
        name="opencimtc-576x128",
        array=ArrayConfig(tiles=8, rows=576, cols=128, mac_lanes=32, adc_share=8),
        cell=CellConfig(cell_bits=3, frac_bits=4),
        mapping=MappingConfig(weight_bits=4, scheme="differential"),
        input=InputConfig(bits=4, mode="amplitude", dac_bits=2, v_read=0.1),
        adc=AdcConfig(bits=4, gain=32, gain_shift=6, offset=0),
        device=DeviceConfig(g_min_us=0.0, g_max_us=19.16, prog_noise_sigma=0.02, output_noise_lsb=0.5),
    )


def _pcm() -> ChipConfig:
    # Joshi et al., Nat. Commun. 2020 / aihwkit PCMLikeNoiseModel: g_max 25 uS, t0 = 20 s.
    return ChipConfig(
        name="pcm-joshi2020",
        array=ArrayConfig(tiles=4, rows=256, cols=256, mac_lanes=32, adc_share=4),
        cell=CellConfig(cell_bits=4, frac_bits=4),
        mapping=MappingConfig(weight_bits=8, scheme="differential"),
        input=InputConfig(bits=8, mode="bit_serial"),
        adc=AdcConfig(bits=8, gain=8, gain_shift=5),
        device=DeviceConfig(model="pcm", g_min_us=0.0, g_max_us=25.0, drift_t0_s=20.0,
                            output_noise_lsb=0.5),
    )


def _ice40_tiny() -> ChipConfig:
    return ChipConfig(
        name="ice40-tiny",
        array=ArrayConfig(tiles=1, rows=16, cols=16, mac_lanes=4, adc_share=2),
        cell=CellConfig(cell_bits=3, frac_bits=3),
        mapping=MappingConfig(weight_bits=4, scheme="differential"),
        input=InputConfig(bits=4, mode="bit_serial"),
        adc=AdcConfig(bits=6, gain=4, gain_shift=2),
        post=PostConfig(out_bits=16, bias_bits=12, scale_bits=4),
        clock=ClockConfig(clock_hz=12_000_000, uart_baud=115_200),
        soc=SocConfig(act_words=512, wv_jobs=256, max_payload=256, instr_words=64),
    )


def _icebreaker() -> ChipConfig:
    # ice40-tiny with one MAC lane and one ADC, so the whole SoC fits the iCE40UP5K's 5280
    # logic cells (98 %, docs/boards.md); at 115200 baud the UART, not the lanes, sets the pace
    return _ice40_tiny().replace(name="icebreaker", array=dict(mac_lanes=1, adc_share=1))


def _ulx3s_85f() -> ChipConfig:
    # the default chip's datapath, two tiles of 64x64 with 8 MAC lanes, at 30 MHz from the
    # ULX3S 85F's 25 MHz oscillator (docs/boards.md gives its resources and fmax)
    return ChipConfig(name="ulx3s-85f", array=ArrayConfig(tiles=2, rows=64, cols=64, mac_lanes=8, adc_share=4),
                      clock=ClockConfig(clock_hz=30_000_000, uart_baud=115_200))


PRESETS = {
    "default": _default,
    "opencimtc-576x128": _opencimtc,
    "pcm-joshi2020": _pcm,
    "ice40-tiny": _ice40_tiny,
    "icebreaker": _icebreaker,
    "ulx3s-85f": _ulx3s_85f,
}


def preset(name: str) -> ChipConfig:
    """A named preset: ``default``, ``opencimtc-576x128``, ``pcm-joshi2020``, ``ice40-tiny``,
    ``icebreaker``, ``ulx3s-85f``."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def load(spec: str | Path) -> ChipConfig:
    """A preset name or the path of a TOML file."""
    if isinstance(spec, str) and spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"{spec!s} is neither a preset ({', '.join(PRESETS)}) nor a readable file")
    return ChipConfig.from_toml(path.read_text(), source=str(path))
