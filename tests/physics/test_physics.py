"""Physics emulator (cimstack.physics) against the golden model and the published device models.

Statistical tests draw at least 1e5 samples and compare with tolerances derived from the
sample size: ``K`` standard errors of the estimate (``K = 5``: a correct model fails one
comparison with probability ~6e-7; all seeds are fixed, so runs are reproducible), plus any
systematic difference the models are known to have, computed and named where it is used.
Reference formulas are written out here again, independently of the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cimstack.chip import prng
from cimstack.chip.config import (
    IRWIN_HALL_SIGMA,
    NOISE_FRAC_BITS,
    AdcConfig,
    ArrayConfig,
    CellConfig,
    ChipConfig,
    DeviceConfig,
    InputConfig,
    MappingConfig,
    PostConfig,
    preset,
)
from cimstack.chip.datapath import codes_to_weights, input_digits, weights_to_codes
from cimstack.chip.enums import Polarity, Stuck
from cimstack.errors import ConfigError, InputRangeError
from cimstack.golden.tile import GoldenTile, Pulse
from cimstack.physics import (
    Adc,
    Dac,
    DeviceModel,
    TileEmulator,
    codes_to_conductance,
    float_weights_to_conductances,
    ideal_column_currents,
    level_step_us,
    round_half_up,
    weights_to_conductances,
)
from cimstack.physics.devices import (
    GenericDeviceModel,
    PcmDeviceModel,
    device_model,
    register_device_model,
    registered_models,
)
from cimstack.physics.devices import registry as device_registry

K = 5.0            # standard errors allowed per statistical comparison
N = 100_000        # samples per statistical test



def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _se_mean(a: np.ndarray) -> np.ndarray:
    return a.std(axis=0, ddof=1) / math.sqrt(a.shape[0])


def _se_var(a: np.ndarray) -> np.ndarray:
    """Standard error of the sample variance from the sample's own fourth central moment."""
    c = a - a.mean(axis=0)
    m2, m4 = (c ** 2).mean(axis=0), (c ** 4).mean(axis=0)
    return np.sqrt(np.maximum(m4 - m2 ** 2, 0.0) / a.shape[0])


def _random_weights(cfg: ChipConfig, rng: np.random.Generator) -> np.ndarray:
    dp = cfg.datapath
    return rng.integers(dp.weight_min, dp.weight_max + 1, size=(cfg.array.rows, cfg.array.cols))


def _random_inputs(cfg: ChipConfig, rng: np.random.Generator, batch: int) -> np.ndarray:
    bits = cfg.input.bits
    lo = -(1 << (bits - 1)) + (1 if cfg.input.mode == "unary" else 0)
    return rng.integers(lo, (1 << (bits - 1)), size=(batch, cfg.array.rows))


# -- (a) emulator vs golden model ----------------------------------------------------------

_EXACT_CONFIGS = {
    "default": preset("default"),
    "opencimtc": preset("opencimtc-576x128"),
    "pcm": preset("pcm-joshi2020"),
    "ice40": preset("ice40-tiny"),
    # offset scheme, multi-bit amplitude digits, post-processing with shift, ReLU, small ADC
    "offset-amp": ChipConfig(
        array=ArrayConfig(tiles=1, rows=24, cols=40, mac_lanes=8, adc_share=4),
        cell=CellConfig(cell_bits=3, frac_bits=2), mapping=MappingConfig(weight_bits=5, scheme="offset"),
        input=InputConfig(bits=7, mode="amplitude", dac_bits=2),
        adc=AdcConfig(bits=5, gain=3, gain_shift=2, offset=-1), post=PostConfig(out_bits=10, shift=2, relu=True)),
    # unary inputs (7 pulses), 6-bit ADC that saturates often
    "unary": ChipConfig(
        array=ArrayConfig(tiles=1, rows=64, cols=16, mac_lanes=16, adc_share=8),
        cell=CellConfig(cell_bits=4, frac_bits=4), mapping=MappingConfig(weight_bits=8),
        input=InputConfig(bits=4, mode="unary"), adc=AdcConfig(bits=6, gain=5, gain_shift=3),
        post=PostConfig(out_bits=20)),
}


@pytest.mark.parametrize("name", sorted(_EXACT_CONFIGS))
def test_noise_free_datapath_equals_golden(name):
    cfg = _EXACT_CONFIGS[name].replace(device={"output_noise_lsb": 0.0})
    rng = np.random.default_rng(11)
    w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 24)
    golden = GoldenTile(cfg)
    golden.program_weights(w)
    p = cfg.post
    bias = rng.integers(-(1 << (p.bias_bits - 1)), 1 << (p.bias_bits - 1), size=cfg.array.cols) >> 4
    scale = rng.integers(0, 1 << p.scale_bits, size=cfg.array.cols)
    golden.set_post(bias, scale)
    emu = TileEmulator(cfg, seed=3)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    emu.set_post(bias, scale)
    want = golden.vmm(x)
    for noise in (False, True):            # output_noise_lsb = 0: noise on or off is the same
        got = emu.vmm(x, mode="datapath", noise=noise).numpy()
        assert np.array_equal(got, np.round(got))
        assert np.array_equal(got.astype(np.int64), want)
    # single input vector: shape (cols,)
    assert np.array_equal(emu.vmm(x[0], mode="datapath").numpy().astype(np.int64), golden.vmm(x[0]))


@pytest.mark.parametrize("name", ["default", "offset-amp", "unary", "ice40"])
def test_noise_free_physical_with_ideal_devices_equals_golden(name):
    """Ideal devices (no noise, faults, drift, I-V nonlinearity): conductances in µS and
    voltages in V must give the integer datapath's outputs exactly, ADC ties included."""
    cfg = _EXACT_CONFIGS[name].replace(device={"output_noise_lsb": 0.0, "g_min_us": 0.37, "g_max_us": 13.1})
    rng = np.random.default_rng(12)
    w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 24)
    golden = GoldenTile(cfg)
    golden.program_weights(w)
    emu = TileEmulator(cfg)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    got = emu.vmm(x, mode="physical", t=3600.0, noise=True).numpy()
    assert np.array_equal(got.astype(np.int64), golden.vmm(x))


def test_stuck_faults_match_golden_exactly():
    cfg = preset("default").replace(device={"output_noise_lsb": 0.0, "stuck_at_0_rate": 0.05,
                                            "stuck_at_gmax_rate": 0.05})
    rng = np.random.default_rng(13)
    w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 16)
    emu = TileEmulator(cfg, seed=5)
    emu.program_weights(w, prog_noise=False, faults=True, d2d=False)
    stuck = emu.stuck.numpy()
    assert (stuck == Stuck.AT_0).any() and (stuck == Stuck.AT_MAX).any()
    golden = GoldenTile(cfg)
    golden.program_weights(w)
    golden.set_state(golden.state, stuck=stuck)
    assert np.array_equal(emu.codes().numpy().astype(np.int64), golden.codes())
    assert np.array_equal(emu.vmm(x, mode="datapath").numpy().astype(np.int64), golden.vmm(x))
    clean = GoldenTile(cfg)
    clean.program_weights(w)
    assert not np.array_equal(clean.vmm(x), golden.vmm(x))      # the faults change the outputs
    # the reverse direction: a golden tile's state loaded into the emulator
    emu2 = TileEmulator(cfg)
    emu2.load_golden(golden)
    assert np.array_equal(emu2.vmm(x, mode="datapath").numpy().astype(np.int64), golden.vmm(x))


_STAT_CFG = ChipConfig(
    array=ArrayConfig(tiles=1, rows=32, cols=4, mac_lanes=8, adc_share=4),
    cell=CellConfig(cell_bits=2, frac_bits=2), mapping=MappingConfig(weight_bits=5),
    input=InputConfig(bits=4, mode="amplitude", dac_bits=2),
    adc=AdcConfig(bits=8, gain=8, gain_shift=4, offset=2),       # 1/2 code per unit: rounding ties
    device=DeviceConfig(output_noise_lsb=3.0))


def test_output_noise_statistics_match_golden():
    """Per-column mean and variance of noisy VMMs: emulator datapath mode vs GoldenTile.

    The golden noise is an Irwin-Hall integer z (sigma 147.80) scaled by
    q = round(sigma / 147.80 * 2**16) and rounded half up to an integer; its variance is
    sigma_q**2 + 1/12 (rounding), sigma_q = q * 147.80 / 2**16. The emulator's datapath
    mode rounds its Gaussian noise the same way (``integer_noise=True``), so the +1/12 is on
    both sides and cancels. With sigma = 3 the noise is wide against the integer lattice and
    the ADC's 2-unit step, so rounding and the round-half-up ties bias both models alike; the
    remaining Irwin-Hall vs Gaussian shape difference, summed exactly over both noise
    distributions for this config, is 0.013 output units in the mean (0.16 standard errors)
    and 0.07% in the variance. The tolerance is K standard errors plus the known relative
    variance difference |sigma_q**2 / sigma**2 - 1| of the noise scaling.
    """
    cfg = _STAT_CFG
    rng = np.random.default_rng(21)
    w = _random_weights(cfg, rng)
    x = np.tile(_random_inputs(cfg, rng, 1), (N, 1))          # one input, N noisy repeats
    golden = GoldenTile(cfg)
    golden.program_weights(w)
    yg = golden.vmm(x).astype(np.float64)
    emu = TileEmulator(cfg, seed=22)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    # every conversion inside the ADC range, with 6 sigma to spare: saturation would expose
    # the Gaussian's tails, which the Irwin-Hall sum (bounded at 3.45 sigma) does not have
    sums = emu.analog_sums(x[:1], mode="datapath", noise=False).numpy()
    assert np.abs(sums).max() * 0.5 + 2 + 6 * 3.0 * 0.5 < 127
    ye = emu.vmm(x, mode="datapath").numpy()

    sigma = cfg.device.output_noise_lsb
    sigma_q = cfg.datapath.read_noise_q * IRWIN_HALL_SIGMA / (1 << NOISE_FRAC_BITS)
    rel_sys = abs(sigma_q ** 2 / sigma ** 2 - 1)
    mean_tol = K * np.sqrt(_se_mean(yg) ** 2 + _se_mean(ye) ** 2)
    var_tol = K * np.sqrt(_se_var(yg) ** 2 + _se_var(ye) ** 2) + rel_sys * yg.var(axis=0)
    assert np.all(yg.var(axis=0) > 100)                      # noise actually reaches the outputs
    assert np.all(np.abs(ye.mean(axis=0) - yg.mean(axis=0)) <= mean_tol), (ye.mean(0), yg.mean(0), mean_tol)
    assert np.all(np.abs(ye.var(axis=0) - yg.var(axis=0)) <= var_tol), (ye.var(0), yg.var(0), var_tol)
    # power check: continuous (unrounded) noise misses the golden's half-up bias on odd sums
    # (+1/4 code per conversion), and the comparison above must be able to see it
    yc = emu.vmm(x, mode="datapath", integer_noise=False).numpy()
    assert np.any(np.abs(yc.mean(axis=0) - yg.mean(axis=0)) > mean_tol)


def test_integer_noise_variance_has_rounding_term():
    """Both models' per-conversion noise has variance sigma**2 + 1/12 (rounding to integers);
    sigma = 1 makes the 1/12 several tolerances wide, so the check can fail either way."""
    sigma = 1.0
    cfg = _STAT_CFG.replace(device={"output_noise_lsb": sigma})
    q = cfg.datapath.read_noise_q
    sigma_q = q * IRWIN_HALL_SIGMA / (1 << NOISE_FRAC_BITS)
    states = np.array([prng.seed_state(7, i) for i in range(N)], dtype=np.uint32)
    zg = prng.noise(prng.gauss_from_state(prng.xorshift32(states)), q, NOISE_FRAC_BITS).astype(np.float64)
    emu = TileEmulator(cfg, seed=8)                               # all-zero weights: sums are 0
    ze = emu.analog_sums(np.zeros((N // cfg.datapath.units + 1, cfg.array.rows), dtype=np.int64),
                         mode="datapath").numpy().reshape(-1)[:N]
    for z, s in ((zg, sigma_q), (ze, sigma)):
        tol = K * _se_var(z[:, None])[0]
        assert abs(z.var() - (s ** 2 + 1 / 12)) <= tol, (z.var(), s)
        assert abs(z.var() - s ** 2) > tol                        # the +1/12 is resolved
        assert abs(z.mean()) <= K * _se_mean(z[:, None])[0]


@pytest.mark.parametrize("mode,dac_bits", [("bit_serial", 1), ("amplitude", 3), ("amplitude", 2), ("unary", 1)])
def test_dac_digits_equal_mapping_input_digits(mode, dac_bits):
    cfg = preset("default").replace(input={"mode": mode, "dac_bits": dac_bits, "bits": 7})
    lo = -(1 << 6) + (1 if mode == "unary" else 0)
    x = np.arange(lo, 1 << 6)
    x = np.resize(x, (len(x) // cfg.array.rows + 1) * cfg.array.rows).reshape(-1, cfg.array.rows)
    got = Dac(cfg).digits(torch.as_tensor(x, dtype=torch.float64)).numpy()
    assert np.array_equal(got.astype(np.int64), input_digits(x, cfg))


# -- (b) PCM statistics (Joshi et al. 2020) ------------------------------------------------

def _pcm_cfg(g_max: float = 25.0) -> ChipConfig:
    return preset("pcm-joshi2020").replace(device={"g_max_us": g_max})


@pytest.mark.parametrize("g_max", [25.0, 10.0])
def test_pcm_programming_sigma_matches_polynomial(g_max):
    model = DeviceModel(_pcm_cfg(g_max))
    gen = _gen(31)
    for gt in (0.1, 0.25, 0.5, 0.75, 0.9):
        target = torch.full((N,), gt * g_max, dtype=torch.float64)
        g = model.program(target, gen, noise=True, d2d=False).numpy()
        want = max(-1.1731 * gt ** 2 + 1.9650 * gt + 0.2635, 0.0) * g_max / 25.0
        assert abs(g.mean() - gt * g_max) <= K * want / math.sqrt(N)
        std_se = _se_var(g[:, None])[0] / (2 * g.std())
        assert abs(g.std() - want) <= K * std_se, (gt, g.std(), want)


def test_generic_programming_sigma_and_d2d():
    cfg = preset("default").replace(device={"prog_noise_sigma": 0.03, "d2d_sigma": 0.2})
    model, gen = DeviceModel(cfg), _gen(32)
    target = torch.full((N,), 5.0, dtype=torch.float64)
    g = model.program(target, gen, noise=True, d2d=False).numpy()
    want = 0.03 * cfg.device.g_max_us
    assert abs(g.std() - want) <= K * _se_var(g[:, None])[0] / (2 * g.std())
    for kind, std in (("lognormal", math.sqrt(math.exp(0.2 ** 2) - 1)), ("gaussian", 0.2)):
        f = model.d2d_factors((N,), gen, kind=kind).numpy()
        assert abs(f.mean() - 1.0) <= K * _se_mean(f[:, None])[0]
        assert abs(f.std() - std) <= K * _se_var(f[:, None])[0] / (2 * f.std())


def _folded_normal(mu: float, sigma: float) -> tuple[float, float]:
    phi = 0.5 * (1 + math.erf((-mu / sigma) / math.sqrt(2)))
    mean = sigma * math.sqrt(2 / math.pi) * math.exp(-mu ** 2 / (2 * sigma ** 2)) + mu * (1 - 2 * phi)
    return mean, math.sqrt(mu ** 2 + sigma ** 2 - mean ** 2)


def test_pcm_drift_exponent_statistics():
    model, gen = DeviceModel(_pcm_cfg()), _gen(33)
    for gt in (0.01, 0.1, 0.3, 0.6, 1.0):
        nu = model.sample_nu(torch.full((N,), gt * 25.0, dtype=torch.float64), gen).numpy()
        mu = min(max(-0.0155 * math.log(gt) + 0.0244, 0.049), 0.1)
        sig = min(max(-0.0125 * math.log(gt) - 0.0059, 0.008), 0.045)
        mean, std = _folded_normal(mu, sig)                       # nu = |N(mu, sigma)|
        assert (nu >= 0).all()
        assert abs(nu.mean() - mean) <= K * _se_mean(nu[:, None])[0], (gt, nu.mean(), mean)
        assert abs(nu.std() - std) <= K * _se_var(nu[:, None])[0] / (2 * nu.std()), (gt, nu.std(), std)


def test_drift_law_and_generic_exponent():
    cfg = preset("default").replace(device={"drift_nu": 0.06, "drift_nu_std": 0.01, "drift_t0_s": 20.0})
    model = DeviceModel(cfg)
    nu = model.sample_nu(torch.full((N,), 3.0, dtype=torch.float64), _gen(34)).numpy()
    mean, std = _folded_normal(0.06, 0.01)
    assert abs(nu.mean() - mean) <= K * _se_mean(nu[:, None])[0]
    g0 = torch.tensor([1.0, 5.0, 10.0], dtype=torch.float64)
    nus = torch.tensor([0.0, 0.05, 0.1], dtype=torch.float64)
    for t in (20.0, 200.0, 86400.0):
        np.testing.assert_allclose(model.drift(g0, nus, t).numpy(), g0.numpy() * (t / 20.0) ** (-nus.numpy()), rtol=1e-12)
    assert torch.equal(model.drift(g0, nus, 5.0), g0)           # before t0: no drift


def test_pcm_read_noise_sigma_matches_formula():
    model, gen = DeviceModel(_pcm_cfg()), _gen(35)
    for gt in (0.1, 0.3, 0.6, 1.0):
        for t in (20.0, 3600.0, 1e6):
            g_prog = torch.full((N,), gt * 25.0, dtype=torch.float64)
            g_t = model.drift(g_prog, torch.full_like(g_prog, 0.05), t)
            r = (model.read(g_prog, g_t, t, gen) - g_t).numpy()
            q_s = min(0.0088 / gt ** 0.65, 0.2)
            want = float(g_t[0]) * q_s * math.sqrt(math.log((t + 250e-9) / (2 * 250e-9)))
            assert abs(r.mean()) <= K * want / math.sqrt(N)
            assert abs(r.std() - want) <= K * _se_var(r[:, None])[0] / (2 * r.std()), (gt, t, r.std(), want)


def test_generic_read_noise_is_relative_to_conductance():
    cfg = preset("default").replace(device={"read_noise_sigma": 0.04})
    model, gen = DeviceModel(cfg), _gen(38)
    for g in (0.5, 4.0, 10.0):
        gt = torch.full((N,), g, dtype=torch.float64)
        r = (model.read(gt, gt, 1.0, gen) - gt).numpy()
        assert abs(r.std() - 0.04 * g) <= K * _se_var(r[:, None])[0] / (2 * r.std())


def test_tile_read_noise_in_output_space():
    """Per-read device noise added in output space has the variance of independent cell noise:
    var(s_u) = sum_r (v_r^2 (sig+_ru^2 + sig-_ru^2)) / (v_read g_step)^2."""
    cfg = ChipConfig(array=ArrayConfig(tiles=1, rows=16, cols=4, mac_lanes=4, adc_share=2),
                     cell=CellConfig(cell_bits=4, frac_bits=2), mapping=MappingConfig(weight_bits=5),
                     input=InputConfig(bits=4, mode="amplitude", dac_bits=4),
                     device=DeviceConfig(model="pcm", g_min_us=0.0, g_max_us=25.0, output_noise_lsb=0.0))
    rng = np.random.default_rng(36)
    w = _random_weights(cfg, rng)
    x = _random_inputs(cfg, rng, 1)
    emu = TileEmulator(cfg, seed=37)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    t = 3600.0
    s = emu.analog_sums(np.tile(x, (N, 1)), t=t)[0].numpy()      # one pulse: (N, units)
    g_phys = emu.physical_conductances()                         # at t0: the programmed values
    g_t = emu.physical_conductances(t)
    gt = np.clip(g_phys.numpy() / 25.0, 1e-7, None)
    q_s = np.minimum(0.0088 / gt ** 0.65, 0.2)
    sig = g_t.numpy() * q_s * math.sqrt(math.log((t + 250e-9) / 5e-7))
    v = x[0].astype(np.float64) * cfg.input.v_read
    var_phys = (v ** 2) @ (sig ** 2)
    want = (var_phys[0::2] + var_phys[1::2]) / (cfg.input.v_read * level_step_us(cfg)) ** 2
    assert np.all(want > 0)
    assert np.all(np.abs(s.var(axis=0) - want) <= K * _se_var(s)), (s.var(0), want)
    ideal = emu.analog_sums(x, t=t, noise=False)[0, 0].numpy()
    assert np.all(np.abs(s.mean(axis=0) - ideal) <= K * _se_mean(s))


# -- device-model registry -----------------------------------------------------------------

def test_device_model_registry_picks_the_configured_class():
    assert registered_models() == ("generic", "pcm")
    for name, cls in (("generic", GenericDeviceModel), ("pcm", PcmDeviceModel)):
        cfg = preset("default").replace(device={"model": name})       # the config accepts every built-in
        assert type(DeviceModel(cfg)) is cls and type(device_model(cfg)) is cls and cls.name == name
        assert isinstance(DeviceModel(cfg), DeviceModel)
    with pytest.raises(ConfigError, match=r"'rram-nope'.*registered: generic, pcm"):
        device_model(preset("default"), model="rram-nope")


def test_registering_a_device_model_makes_it_selectable(monkeypatch):
    monkeypatch.setattr(device_registry, "DEVICE_MODELS", dict(device_registry.DEVICE_MODELS))

    @register_device_model("test-flat")
    class Flat(DeviceModel):
        def programming_sigma(self, g_target):
            return torch.full_like(g_target, 0.5)

        def drift_nu_stats(self, g_target):
            return torch.full_like(g_target, 0.1), torch.zeros_like(g_target)

        def read_sigma(self, g_prog, g_t, t):
            return torch.full_like(g_t, 0.25)

    assert Flat.name == "test-flat" and "test-flat" in registered_models()
    cfg = preset("default").replace(device={"d2d_sigma": 0.0})
    model = device_model(cfg, model="test-flat")
    assert type(model) is Flat
    target = torch.full((8,), 5.0, dtype=torch.float64)
    want = target + 0.5 * torch.randn(8, generator=_gen(39), dtype=torch.float64)
    assert torch.equal(model.program(target, _gen(39)), want)
    assert torch.equal(model.sample_nu(target, _gen(40)), torch.full_like(target, 0.1))
    assert torch.equal(model.read_noise_sigma(target, target, 1.0), torch.full_like(target, 0.25))
    with pytest.raises(InputRangeError):
        model.read_noise_sigma(target, target, -1.0)                # the base checks t for every model
    monkeypatch.setitem(device_registry.DEVICE_MODELS, "generic", Flat)
    assert type(DeviceModel(cfg)) is Flat                              # DeviceModel(cfg) reads the registry
    with pytest.raises(ConfigError, match="already registered"):
        register_device_model("test-flat")(Flat)

    class Partial(DeviceModel):
        def programming_sigma(self, g_target):
            return g_target

    with pytest.raises(TypeError, match="drift_nu_stats, read_sigma"):
        register_device_model("test-partial")(Partial)


# -- (c) faults and pulses -----------------------------------------------------------------

def test_stuck_at_rates_are_binomial_and_independent():
    r0, r1 = 0.02, 0.03
    cfg = preset("pcm-joshi2020").replace(device={"stuck_at_0_rate": r0, "stuck_at_gmax_rate": r1})
    emu = TileEmulator(cfg, seed=41)
    rng = np.random.default_rng(41)
    emu.program_weights(_random_weights(cfg, rng), prog_noise=False, d2d=False, faults=True)
    stuck = emu.stuck.numpy()
    n = stuck.size
    assert n >= N
    for flag, p in ((Stuck.AT_0, r0), (Stuck.AT_MAX, r1)):
        frac = (stuck == flag).mean()
        assert abs(frac - p) <= K * math.sqrt(p * (1 - p) / n), (flag, frac, p)
    # G+ and G- fail independently: both cells of a pair stuck at 0 with probability r0**2
    both = ((stuck[..., 0] == Stuck.AT_0) & (stuck[..., 1] == Stuck.AT_0)).mean()
    pairs = stuck[..., 0].size
    assert abs(both - r0 ** 2) <= K * math.sqrt(r0 ** 2 * (1 - r0 ** 2) / pairs)
    # stuck cells read the rails, in both modes
    codes = emu.codes().numpy()
    assert (codes[stuck == Stuck.AT_0] == 0).all() and (codes[stuck == Stuck.AT_MAX] == cfg.datapath.code_max).all()
    g = emu.physical_conductances().numpy().reshape(stuck.shape)
    assert (g[stuck == Stuck.AT_0] == cfg.device.g_min_us).all()
    assert (g[stuck == Stuck.AT_MAX] == cfg.device.g_max_us).all()


def _soft_bounds_mean(g: float, polarity: int, amplitude: int, step: float, gs1: float) -> float:
    dist = gs1 - g if polarity == Polarity.SET else g + 1
    return amplitude * step * dist / gs1


@pytest.mark.parametrize("state,polarity,amplitude", [(40.0, Polarity.SET, 1), (200.0, Polarity.SET, 3), (17.5, Polarity.RESET, 2), (230.0, Polarity.RESET, 5)])
def test_pulse_response_mean_and_spread(state, polarity, amplitude):
    cfg = preset("default").replace(device={"pulse_step_lsb": 6.0, "pulse_c2c_sigma": 0.2})
    model = DeviceModel(cfg)
    gs1 = float(1 << cfg.datapath.state_bits)
    s0 = torch.full((N,), state, dtype=torch.float64)
    new = model.pulse(s0, polarity, amplitude, _gen(42)).numpy()
    step = (new - state) * (1 if polarity == Polarity.SET else -1)
    mean = _soft_bounds_mean(state, polarity, amplitude, 6.0, gs1)
    assert abs(step.mean() - mean) <= K * _se_mean(step[:, None])[0]
    assert abs(step.std() - 0.2 * mean) <= K * _se_var(step[:, None])[0] / (2 * step.std())


def test_pulse_twin_matches_golden_pulse_statistics():
    """Mean and spread of many golden pulses at one state vs the float twin.

    The state and step are chosen so the golden model's rounded step is exact
    (2 * 32 * 128 / 256 = 32 LSB); its noise is round_half_up(d z q_c2c / 2**16), of sigma
    d * sigma_q plus 1/12 rounding variance, sigma_q = q_c2c * 147.80 / 2**16, where the
    twin uses d * pulse_c2c_sigma: that known difference is added to the spread tolerance.
    """
    cfg = preset("default").replace(device={"pulse_step_lsb": 32.0, "pulse_c2c_sigma": 0.1})
    state, amp = 128, 2
    golden = GoldenTile(cfg)
    steps = np.empty(N)
    for k in range(N):                                           # the golden model is per pulse
        golden.state[0, 0, 0] = state
        steps[k] = golden.pulse(Pulse(0, 0, 0, Polarity.SET, amp)) - state
    emu = TileEmulator(cfg, seed=43)
    new = emu.devices.pulse(torch.full((N,), float(state), dtype=torch.float64), Polarity.SET, amp, emu.gens["pulse"]).numpy()
    twin = new - state
    d = _soft_bounds_mean(state, Polarity.SET, amp, 32.0, 256.0)
    assert d == 32.0
    mean_tol = K * math.hypot(_se_mean(steps[:, None])[0], _se_mean(twin[:, None])[0])
    assert abs(steps.mean() - twin.mean()) <= mean_tol, (steps.mean(), twin.mean())
    assert abs(twin.mean() - d) <= K * _se_mean(twin[:, None])[0]
    sigma_q = cfg.datapath.c2c_noise_q * IRWIN_HALL_SIGMA / (1 << NOISE_FRAC_BITS)
    sys = abs(math.sqrt((d * sigma_q) ** 2 + 1 / 12) - d * 0.1)
    std_tol = K * math.hypot(_se_var(steps[:, None])[0] / (2 * steps.std()), _se_var(twin[:, None])[0] / (2 * twin.std()))
    assert abs(steps.std() - twin.std()) <= std_tol + sys, (steps.std(), twin.std(), std_tol, sys)


def test_tile_apply_pulses():
    cfg = preset("default").replace(device={"pulse_c2c_sigma": 0.0, "stuck_at_0_rate": 0.1})
    emu = TileEmulator(cfg, seed=44)
    w = np.zeros((cfg.array.rows, cfg.array.cols), dtype=np.int64)
    emu.program_weights(w, prog_noise=False, d2d=False, faults=True)
    rows = np.arange(cfg.array.rows)
    before = emu.state[rows, 3, 0].clone()
    new = emu.apply_pulses(rows, 3, 0, Polarity.SET, 2)
    stuck = emu.stuck[rows, 3, 0] != 0
    gs1 = float(1 << cfg.datapath.state_bits)
    expect = before + 2 * cfg.device.pulse_step_lsb * (gs1 - before) / gs1
    assert torch.equal(new[stuck], before[stuck])
    torch.testing.assert_close(new[~stuck], expect[~stuck])
    assert torch.equal(emu.state[rows, 3, 0], new)
    with pytest.raises(InputRangeError):
        emu.apply_pulses([0, 0], 1, 0, Polarity.SET, 1)                   # same cell twice
    with pytest.raises(InputRangeError):
        emu.apply_pulses(0, 1, 0, Polarity.SET, cfg.device.pulse_max_amplitude + 1)
    with pytest.raises(InputRangeError):
        emu.apply_pulses(0, cfg.datapath.units, 0, Polarity.SET, 1)
    with pytest.raises(InputRangeError):
        emu.apply_pulses(0, 1, 0, 7, 1)


# -- conductances, mapping, physical-mode effects ------------------------------------------

def test_conductance_levels_and_mapping_reuse():
    cfg = preset("default").replace(device={"g_min_us": 0.5, "g_max_us": 20.0})
    dp = cfg.datapath
    g = codes_to_conductance(np.arange(dp.code_max + 1), cfg).numpy()
    assert g[0] == 0.5 and abs(g[-1] - 20.0) < 1e-12
    np.testing.assert_allclose(np.diff(g), level_step_us(cfg))
    w = _random_weights(cfg, np.random.default_rng(51))
    gp, gm = weights_to_conductances(w, cfg)
    codes = [np.rint((t.numpy() - 0.5) / level_step_us(cfg)).astype(np.int64) for t in (gp, gm)]
    assert np.array_equal(codes_to_weights(*codes, cfg), w)
    assert all(np.array_equal(a, b) for a, b in zip(codes, weights_to_codes(w, cfg)))


@pytest.mark.parametrize("scheme", ["differential", "offset"])
def test_float_weight_mapping(scheme):
    cfg = preset("default").replace(mapping={"scheme": scheme, "weight_bits": 4})
    dp, d = cfg.datapath, cfg.device
    w = torch.tensor([[-2.0, -1.0, -0.25, 0.0, 0.5, 1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    gp, gm = float_weights_to_conductances(w, 1.0, cfg)
    step = level_step_us(cfg)
    diff_codes = ((gp - gm) / step).detach().numpy()[0]
    span = dp.code_max if scheme == "differential" else dp.ref_code - 1
    np.testing.assert_allclose(diff_codes, np.clip(w.detach().numpy()[0], -1, 1) * span)
    assert float(gp.detach().min()) >= d.g_min_us - 1e-12 and float(gp.detach().max()) <= d.g_max_us + 1e-12
    (gp - gm).sum().backward()
    # slope span * g_step inside the clip range (w = 0 included: no dead point), 0 outside
    want = (np.abs(w.detach().numpy()[0]) <= 1) * span * step
    np.testing.assert_allclose(w.grad.numpy()[0], want)


def test_drift_compensation_restores_uniform_drift():
    cfg = _EXACT_CONFIGS["default"].replace(device={"output_noise_lsb": 0.0, "drift_nu": 0.05, "drift_nu_std": 0.0})
    rng = np.random.default_rng(52)
    w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 32)
    emu = TileEmulator(cfg, seed=53)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    y0 = emu.vmm(x, t=20.0)
    t = 20.0 * 1e4
    alpha = float(emu.drift_compensation_factor(t))
    assert abs(alpha - 1e4 ** 0.05) < 1e-9 * alpha                # uniform nu: exactly (t/t0)^nu
    assert not torch.equal(emu.vmm(x, t=t), y0)
    assert torch.equal(emu.vmm(x, t=t, drift_compensation=True), y0)


def test_drift_compensation_reduces_pcm_error():
    cfg = preset("pcm-joshi2020").replace(device={"output_noise_lsb": 0.0})
    rng = np.random.default_rng(54)
    w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 32)
    emu = TileEmulator(cfg, seed=55)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    ref = emu.analog_sums(x, noise=False)
    t = 86400.0 * 30
    raw = emu.analog_sums(x, t=t, noise=False)
    comp = emu.analog_sums(x, t=t, noise=False, drift_compensation=True)
    err_raw, err_comp = (raw - ref).abs().mean(), (comp - ref).abs().mean()
    assert err_comp < 0.3 * err_raw


def test_iv_nonlinearity_on_inputs():
    a1, a2, a3 = 0.05, 0.9, 0.02
    cfg = _EXACT_CONFIGS["offset-amp"].replace(device={"output_noise_lsb": 0.0, "iv_a1": a1, "iv_a2": a2, "iv_a3": a3})
    rng = np.random.default_rng(56)
    w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 8)
    emu = TileEmulator(cfg)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    s = emu.analog_sums(x, noise=False).numpy()
    digits = Dac(cfg).digits(torch.as_tensor(x, dtype=torch.float64)).numpy()
    f = a1 + a2 * digits + a3 * np.sign(digits) * digits ** 2
    want = f @ emu.effective_weights().numpy()                    # offset: minus the reference
    np.testing.assert_allclose(s, want, atol=1e-6)


def test_column_currents_hook_and_layout():
    for scheme in ("differential", "offset"):
        cfg = preset("ice40-tiny").replace(mapping={"scheme": scheme}, device={"output_noise_lsb": 0.0})
        dp = cfg.datapath
        rng = np.random.default_rng(57)
        w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 5)
        seen = {}

        def halved(v, g):
            seen["v"], seen["g"] = v.shape, g.shape
            return 0.5 * ideal_column_currents(v, g)

        emu = TileEmulator(cfg, column_currents=halved)
        emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
        n_phys = dp.units * 2 if scheme == "differential" else dp.units + 1
        assert tuple(emu.physical_conductances().shape) == (cfg.array.rows, n_phys)
        s = emu.analog_sums(x, noise=False)
        assert seen["g"] == (cfg.array.rows, n_phys) and seen["v"] == (dp.pulses, 5, cfg.array.rows)
        ideal = TileEmulator(cfg)
        ideal.program_weights(w, prog_noise=False, faults=False, d2d=False)
        torch.testing.assert_close(s, 0.5 * ideal.analog_sums(x, noise=False))


def test_programming_noise_reaches_outputs_and_is_seeded():
    cfg = preset("pcm-joshi2020")
    rng = np.random.default_rng(58)
    w, x = _random_weights(cfg, rng), _random_inputs(cfg, rng, 4)
    outs = []
    for seed in (1, 1, 2):
        emu = TileEmulator(cfg, seed=seed)
        emu.program_weights(w)
        outs.append(emu.vmm(x, t=3600.0))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    emu = TileEmulator(cfg.replace(device={"output_noise_lsb": 0.0}), read_noise="per_call", seed=3)
    emu.program_weights(w, prog_noise=False, faults=False, d2d=False)
    s = emu.analog_sums(np.tile(x[:1], (3, 1)))                  # one noise draw per call
    assert torch.equal(s[:, 0], s[:, 1]) and not torch.equal(s, emu.analog_sums(np.tile(x[:1], (3, 1))))


# -- (d) errors and gradients --------------------------------------------------------------

def test_bad_inputs_raise():
    cfg = preset("ice40-tiny")
    emu = TileEmulator(cfg)
    rows = cfg.array.rows
    for bad in (np.zeros(rows + 1), np.zeros((2, 3, rows)), np.zeros(()), np.zeros((4, rows - 1))):
        with pytest.raises(InputRangeError):
            emu.vmm(bad)
    with pytest.raises(InputRangeError):
        emu.vmm(np.full(rows, 0.5))                               # not integers
    with pytest.raises(InputRangeError):
        emu.vmm(np.full(rows, 1 << (cfg.input.bits - 1)))         # out of range
    with pytest.raises(InputRangeError):
        emu.vmm(torch.full((rows,), float("nan")))
    with pytest.raises(InputRangeError):
        emu.program_weights(np.zeros((rows, cfg.array.cols + 1), dtype=np.int64))
    with pytest.raises(InputRangeError):
        emu.program_weights(np.full((rows, cfg.array.cols), cfg.datapath.weight_max + 1))
    with pytest.raises(InputRangeError):
        emu.program_codes(np.full(tuple(emu.state.shape), cfg.datapath.code_max + 1))
    with pytest.raises(InputRangeError):
        emu.set_post(bias=np.zeros(cfg.array.cols + 1))
    with pytest.raises(InputRangeError):
        emu.vmm(np.zeros(rows), t=-1.0)
    with pytest.raises(InputRangeError):
        emu.vmm(np.zeros(rows), conductances=(torch.zeros(rows, 3), torch.zeros(rows, 3)))
    with pytest.raises(InputRangeError):
        float_weights_to_conductances(torch.zeros(3), 0.0, cfg)
    with pytest.raises(InputRangeError):
        emu.adc.set_registers(gain=0)
    with pytest.raises(ConfigError):
        emu.vmm(np.zeros(rows), mode="spice")
    with pytest.raises(ConfigError):
        emu.vmm(np.zeros(rows), mode="datapath", t=10.0)
    with pytest.raises(ConfigError):
        TileEmulator(cfg, read_noise="sometimes")
    with pytest.raises(ConfigError):
        TileEmulator(cfg, column_currents=42)


@pytest.mark.parametrize("mode", ["physical", "datapath"])
def test_gradients_flow_through_ste_quantisers(mode):
    cfg = preset("default").replace(device={"read_noise_sigma": 0.02})
    rng = np.random.default_rng(61)
    emu = TileEmulator(cfg, seed=62)
    emu.program_weights(_random_weights(cfg, rng))
    x_real = torch.tensor(rng.normal(0, 40, size=(8, cfg.array.rows)), requires_grad=True)
    x = Dac(cfg).quantize(x_real, 1.0)                           # STE round + clamp
    y = emu.vmm(x, mode=mode)
    y.float().pow(2).mean().backward()
    assert x_real.grad is not None and torch.isfinite(x_real.grad).all() and x_real.grad.abs().sum() > 0
    # integer-valued float leaf straight into the tile
    xi = torch.tensor(_random_inputs(cfg, rng, 4), dtype=torch.float64, requires_grad=True)
    emu.vmm(xi, mode=mode).sum().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0


def test_gradients_reach_float_weights():
    cfg = preset("ice40-tiny").replace(mapping={"weight_bits": 4}, cell={"cell_bits": 3})
    assert cfg.datapath.slices == 1
    rng = np.random.default_rng(63)
    emu = TileEmulator(cfg, seed=64)
    w = torch.tensor(rng.normal(0, 0.5, size=(cfg.array.rows, cfg.array.cols)), requires_grad=True)
    gp, gm = float_weights_to_conductances(w, 1.0, cfg)
    x = torch.as_tensor(_random_inputs(cfg, rng, 16), dtype=torch.float64)
    y = emu.vmm(x, conductances=(gp, gm), t=100.0)
    y.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_ste_round_and_adc_saturation_gradients():
    v = torch.tensor([-1.5, -0.5, 0.49, 0.5, 2.5], dtype=torch.float64, requires_grad=True)
    r = round_half_up(v)
    assert r.tolist() == [-1.0, 0.0, 0.0, 1.0, 3.0]            # half up, as the RTL's round_shift
    r.sum().backward()
    assert v.grad.tolist() == [1.0] * 5
    adc = Adc(preset("ice40-tiny"))
    a = torch.tensor([0.0, 10.0, 1e4, -1e4], dtype=torch.float64, requires_grad=True)
    codes = adc(a)
    assert codes[2] == adc.code_max and codes[3] == adc.code_min
    codes.sum().backward()
    assert a.grad.tolist() == [adc.scale, adc.scale, 0.0, 0.0]   # zero where saturated
