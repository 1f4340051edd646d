"""Golden model: encodings, the PRNG, and the datapath against an independent scalar reference."""
import numpy as np
import pytest

from cimstack.chip import prng
from cimstack.chip.config import IRWIN_HALL_SIGMA, preset
from cimstack.chip.datapath import codes_to_weights, input_digits, pulse_weights, weights_to_codes
from cimstack.chip.enums import Polarity, Stuck
from cimstack.errors import InputRangeError
from cimstack.golden.tile import GoldenTile, Pulse


def offset_cfg():
    return preset("default").replace(mapping=dict(scheme="offset"), array=dict(mac_lanes=12, adc_share=4))


@pytest.mark.parametrize("cfg", [preset("default"), offset_cfg(), preset("opencimtc-576x128")],
                         ids=["differential", "offset", "opencimtc"])
def test_weight_codes_round_trip_over_the_whole_range(cfg):
    dp = cfg.datapath
    w = np.resize(np.arange(dp.weight_min, dp.weight_max + 1), (cfg.array.rows, cfg.array.cols))
    pos, neg = weights_to_codes(w, cfg)
    assert pos.min() >= 0 and pos.max() <= dp.code_max and neg.min() >= 0 and neg.max() <= dp.code_max
    assert (codes_to_weights(pos, neg, cfg) == w).all()


@pytest.mark.parametrize("mode, dac_bits", [("bit_serial", 1), ("amplitude", 3), ("unary", 1)])
def test_input_digits_reconstruct_inputs(mode, dac_bits):
    cfg = preset("default").replace(input=dict(bits=7, mode=mode, dac_bits=dac_bits))
    lo = -63 if mode == "unary" else -64
    x = np.resize(np.arange(lo, 64), (3, cfg.array.rows))
    d = input_digits(x, cfg)
    assert d.shape[0] == cfg.datapath.pulses
    assert d.min() >= cfg.datapath.digit_min and d.max() <= cfg.datapath.digit_max
    assert ((d * pulse_weights(cfg)[:, None, None]).sum(0) == x).all()


def test_prng_matches_the_documented_recurrence():
    x = np.array([prng.seed_state(123, 5)], dtype=np.uint32)
    v = int(x[0])
    for _ in range(1000):
        v ^= (v << 13) & 0xFFFFFFFF
        v ^= v >> 17
        v ^= (v << 5) & 0xFFFFFFFF
        x = prng.xorshift32(x)
        assert int(x[0]) == v
    assert prng.seed_state(0, 2**32 - 1 - 0) != 0          # zero state is replaced


@pytest.mark.parametrize("n", [1, 511, 512, 513, 1500])
def test_block_jumped_prng_equals_stepping(n):
    x0 = np.array([prng.seed_state(9, i) for i in range(5)], dtype=np.uint32)
    states = prng.xorshift32_states(x0, n)
    x = x0
    for k in range(n):
        x = prng.xorshift32(x)
        np.testing.assert_array_equal(states[k], x)


def test_irwin_hall_gaussian_statistics():
    """1e5 draws: mean 0 and sigma 147.80 within 4 standard errors."""
    x = np.array([prng.seed_state(7, l) for l in range(100)], dtype=np.uint32)
    z = []
    for _ in range(1000):
        x = prng.xorshift32(x)
        z.append(prng.gauss_from_state(x))
    z = np.concatenate(z).astype(float)
    n = z.size
    assert n >= 100_000
    assert abs(z.mean()) < 4 * IRWIN_HALL_SIGMA / np.sqrt(n)
    assert abs(z.std() / IRWIN_HALL_SIGMA - 1) < 4 * np.sqrt(0.5 / n) * 1.2   # kurtosis of IH(4) < 3
    assert z.min() >= -510 and z.max() <= 510


def reference_vmm(tile: GoldenTile, x: np.ndarray, lane_state: np.ndarray) -> np.ndarray:
    """A scalar, loop-by-loop reimplementation of the datapath, written from the spec."""
    cfg, dp = tile.cfg, tile.cfg.datapath
    L = cfg.array.mac_lanes
    codes = tile.codes()
    diff = codes[..., 0] - (codes[..., 1] if dp.cells_per_unit == 2 else dp.ref_code)
    digits = input_digits(x, cfg)
    acc = np.zeros(dp.units, dtype=np.int64)
    for g in range(dp.groups):
        for p in range(dp.pulses):
            for l in range(L):
                u = g * L + l
                s = int(sum(int(digits[p, r]) * int(diff[r, u]) for r in range(cfg.array.rows)))
                v = int(lane_state[l])
                v ^= (v << 13) & 0xFFFFFFFF
                v ^= v >> 17
                v ^= (v << 5) & 0xFFFFFFFF
                lane_state[l] = v
                z = sum((v >> (8 * k)) & 0xFF for k in range(4)) - 510
                a = s + ((z * dp.read_noise_q + (1 << 15)) >> 16)
                c = a * tile.adc_gain
                if cfg.adc.gain_shift:
                    c = (c + (1 << (cfg.adc.gain_shift - 1))) >> cfg.adc.gain_shift
                c = min(max(c + tile.adc_offset, dp.adc_min), dp.adc_max)
                acc[u] += c << (p * dp.pulse_shift)
    y = acc.reshape(cfg.array.cols, dp.slices) @ (1 << (np.arange(dp.slices) * cfg.cell.cell_bits))
    return tile.post_process(y)


@pytest.mark.parametrize("cfg", [preset("ice40-tiny"),
                                 preset("ice40-tiny").replace(input=dict(mode="unary", bits=3)),
                                 preset("ice40-tiny").replace(input=dict(mode="amplitude", dac_bits=3, bits=5),
                                                              mapping=dict(scheme="offset"))],
                         ids=["bit_serial", "unary", "amplitude-offset"])
def test_vectorised_golden_equals_scalar_reference(cfg):
    rng = np.random.default_rng(5)
    tile = GoldenTile(cfg)
    dp = cfg.datapath
    tile.program_weights(rng.integers(dp.weight_min, dp.weight_max + 1, (cfg.array.rows, cfg.array.cols)))
    tile.stuck[3, 2, 0] = Stuck.AT_MAX
    tile.adc_gain, tile.adc_offset = 5, -1
    lanes = tile.lane_rng.copy()
    bits = cfg.input.bits
    for x in rng.integers(-(1 << (bits - 1)) + 1, 1 << (bits - 1), (6, cfg.array.rows)):
        assert (tile.vmm(x) == reference_vmm(tile, x, lanes)).all()


def test_noise_free_unity_gain_equals_ideal_product():
    cfg = preset("ice40-tiny").replace(device=dict(output_noise_lsb=0.0), adc=dict(bits=12, gain=4, gain_shift=2))
    rng = np.random.default_rng(2)
    tile = GoldenTile(cfg)
    w = rng.integers(-7, 8, (16, 16))
    tile.program_weights(w)
    x = rng.integers(-7, 8, (50, 16))
    assert (tile.vmm(x) == x @ w).all()


def test_pulses_follow_soft_bounds():
    cfg = preset("ice40-tiny").replace(device=dict(pulse_c2c_sigma=0.0, pulse_step_lsb=4.0))
    tile = GoldenTile(cfg)
    gs = (1 << cfg.datapath.state_bits) - 1
    states = [int(tile.state[0, 0, 0])]
    for _ in range(40):
        states.append(tile.pulse(Pulse(0, 0, 0, Polarity.SET, 1)))
    steps = np.diff(states)
    assert states[-1] <= gs and steps[0] == 4 and (steps[:10] >= steps[10:20].max()).all()
    down = tile.pulse(Pulse(0, 0, 0, Polarity.RESET, 2))
    assert down < states[-1]
    tile.stuck[0, 1, 0] = Stuck.AT_0
    assert tile.pulse(Pulse(0, 1, 0, Polarity.SET, 3)) == 0      # stuck cells do not move


def test_bad_inputs_raise():
    tile = GoldenTile(preset("ice40-tiny"))
    with pytest.raises(InputRangeError, match="last axis must be the 16 rows"):
        tile.vmm(np.zeros(15, dtype=int))
    with pytest.raises(InputRangeError, match="outside"):
        tile.vmm(np.full(16, 8))
    with pytest.raises(InputRangeError, match="NaN"):
        tile.vmm(np.full(16, np.nan))
    with pytest.raises(InputRangeError, match="weights span"):
        tile.program_weights(np.full((16, 16), 9))
    with pytest.raises(InputRangeError, match="outside the tile"):
        tile.pulse(Pulse(16, 0, 0, Polarity.SET, 1))


def test_post_parameters_reject_non_integers():
    tile = GoldenTile(preset("ice40-tiny"))
    with pytest.raises(InputRangeError, match="post scale must hold integers"):
        tile.set_post(scale=np.full(16, 1.5))
    with pytest.raises(InputRangeError, match="post bias must be 16 integers"):
        tile.set_post(bias=np.zeros(15, dtype=int))


def test_input_mode_per_vmm_equals_a_chip_built_for_that_mode():
    """Choosing a mode per VMM gives exactly what a chip configured for that mode computes."""
    base = preset("default").replace(array=dict(rows=24, cols=16, mac_lanes=8, adc_share=2),
                                     input=dict(bits=7, mode="amplitude", dac_bits=2))
    rng = np.random.default_rng(5)
    w = rng.integers(-100, 100, (24, 16))
    for mode, over in (("bit_serial", dict(mode="bit_serial", dac_bits=1)), ("amplitude", {}),
                       ("unary", dict(mode="unary", dac_bits=2))):
        md = base.datapath.mode(mode)
        x = rng.integers(md.in_min, md.in_max + 1, (5, 24))
        a, b = GoldenTile(base), GoldenTile(base.replace(input=over))
        a.program_weights(w)
        b.program_weights(w)
        np.testing.assert_array_equal(a.vmm(x, mode), b.vmm(x))
    with pytest.raises(InputRangeError, match="outside"):
        GoldenTile(base).vmm(np.full(24, -64), "unary")        # unary has no most-negative code


@pytest.mark.parametrize("cfg", [preset("default"), preset("opencimtc-576x128"), preset("pcm-joshi2020"),
                                 preset("ice40-tiny").replace(input=dict(mode="unary", bits=3)), offset_cfg(),
                                 # |sums| reach past 2**24: the float64 product
                                 preset("default").replace(array=dict(rows=512), cell=dict(cell_bits=8),
                                                           mapping=dict(weight_bits=9),
                                                           input=dict(mode="amplitude", bits=9, dac_bits=9))],
                         ids=["default", "opencimtc", "pcm", "unary", "offset", "float64"])
def test_column_sums_equal_the_integer_product(cfg):
    """The floating-point BLAS product of column_sums is the integer one, extremes included."""
    rng = np.random.default_rng(3)
    tile = GoldenTile(cfg)
    dp, md = cfg.datapath, cfg.datapath.mode(None)
    w = rng.choice([dp.weight_min, dp.weight_max, 0, 1], (cfg.array.rows, cfg.array.cols))
    w[:, 0] = dp.weight_max
    tile.program_weights(w)
    tile.stuck[rng.random(tile.stuck.shape) < 0.05] = Stuck.AT_MAX
    x = rng.choice([md.in_min, md.in_max, 0, -1], (5, cfg.array.rows))
    x[0], x[1] = md.in_min, md.in_max                       # every row at an extreme: the largest sums
    want = input_digits(x, cfg) @ tile.effective_weights()
    got = tile.column_sums(x)
    assert got.dtype == np.int64 and (got == want).all()
    if cfg.array.rows == 512:
        assert np.abs(want).max() >= 1 << 24
