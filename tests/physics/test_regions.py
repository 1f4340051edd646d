"""The fast path (RegionStack: only the cells a pass uses, every pass in one batched VMM) against
the whole-array reference (TileEmulator.vmm): bit for bit without noise, and in distribution
with it."""
import numpy as np
import pytest
import torch
from helpers import random_inputs, random_tile

from cimstack.backends import EmulatorBackend, Region
from cimstack.chip.config import preset
from cimstack.errors import InputRangeError
from cimstack.physics import TileEmulator
from cimstack.physics.regions import RegionStack

CONFIGS = {
    "default": lambda: preset("default"),
    "offset-unary": lambda: preset("default").replace(name="offset-unary", mapping=dict(scheme="offset"),
                                                      input=dict(mode="unary", bits=4),
                                                      array=dict(cols=48, mac_lanes=12, adc_share=4)),
    "amplitude": lambda: preset("opencimtc-576x128").replace(array=dict(rows=96, cols=32, tiles=2)),
    "pcm": lambda: preset("pcm-joshi2020").replace(array=dict(rows=48, cols=16, tiles=2)),
}


def emulators(cfg, rng, dtype=torch.float64):
    """Two tiles with random states, stuck cells and registers (from random golden tiles)."""
    emus = []
    for t in range(2):
        e = TileEmulator(cfg, seed=3, tile=t, dtype=dtype)
        e.load_golden(random_tile(cfg, rng, tile=t))
        emus.append(e)
    return emus


def random_region(cfg, rng):
    a = cfg.array
    rows = rng.permutation(a.rows)[:rng.integers(1, a.rows + 1)]
    cols = rng.permutation(a.cols)[:rng.integers(1, a.cols + 1)]
    return torch.as_tensor(rows), torch.as_tensor(cols)


def reference(emu, rows, cols, x, **kw):
    """The whole array: inputs on ``rows``, zero elsewhere; outputs of ``cols``."""
    xin = torch.zeros((len(x), emu.cfg.array.rows), dtype=torch.int64)
    xin[:, rows] = torch.as_tensor(x)
    return emu.vmm(xin, **kw)[:, cols]


def padded(xs, r_max):
    out = torch.zeros((len(xs), len(xs[0]), r_max), dtype=torch.int32)
    for i, x in enumerate(xs):
        out[i, :, :x.shape[1]] = torch.as_tensor(x)
    return out


def small_non_negative(x):
    """Inputs as after a ReLU, mostly small: the top pulses drive nothing."""
    return np.abs(x) // 16


def non_negative(x, cfg):
    """Inputs as after a ReLU over the whole range (in amplitude mode the top digit is used)."""
    return np.minimum(np.abs(x), cfg.datapath.mode().in_max)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mode", ["physical", "datapath"])
@pytest.mark.parametrize("inputs", ["signed", "non-negative", "small non-negative"])
def test_equals_whole_array_without_noise(name, mode, inputs):
    """Against float64 tiles; the stack's tiles float64 or float32 (the backend's default),
    the stack itself float64 or float32."""
    cfg = CONFIGS[name]()
    rng = np.random.default_rng(7)
    goldens = [random_tile(cfg, rng, tile=t) for t in range(2)]
    tiles = {}
    for dtype in (torch.float64, torch.float32):
        tiles[dtype] = [TileEmulator(cfg, seed=3, tile=t, dtype=dtype) for t in range(2)]
        for e, g in zip(tiles[dtype], goldens):
            e.load_golden(g)
    picks = [(0, *random_region(cfg, rng)), (1, *random_region(cfg, rng)), (0, *random_region(cfg, rng))]
    xs = [random_inputs(cfg, rng, 50)[:, :len(r)] for _, r, _ in picks]
    if inputs == "non-negative":
        xs = [non_negative(x, cfg) for x in xs]
    elif inputs == "small non-negative":
        xs = [small_non_negative(x) for x in xs]
    want = [reference(tiles[torch.float64][t], r, c, x, mode=mode, noise=False) for (t, r, c), x in zip(picks, xs)]
    for tile_dtype, dtype in ((torch.float64, torch.float64), (torch.float64, torch.float32),
                              (torch.float32, torch.float32), (torch.float32, torch.float64)):
        if mode == "datapath" and dtype == torch.float32:
            continue
        regions = [(tiles[tile_dtype][t], r, c) for t, r, c in picks]
        stack = RegionStack(regions, mode=mode, dtype=dtype)
        got = stack.vmm(padded(xs, int(stack.w.shape[1])), noise=False)
        for i, (w, (_, _, c)) in enumerate(zip(want, regions)):
            assert torch.equal(got[i, :, :len(c)], w), (name, mode, tile_dtype, dtype, i)


def test_drift_and_compensation_without_noise():
    cfg = CONFIGS["pcm"]()
    rng = np.random.default_rng(8)
    e = TileEmulator(cfg, seed=1)
    e.program_weights(rng.integers(cfg.datapath.weight_min, cfg.datapath.weight_max + 1, (cfg.array.rows, cfg.array.cols)))
    rows, cols = random_region(cfg, rng)
    x = random_inputs(cfg, rng, 40)[:, :len(rows)]
    for t, comp in ((20.0, False), (86400.0, False), (86400.0, True)):
        want = reference(e, rows, cols, x, t=t, drift_compensation=comp, noise=False)
        got = RegionStack([(e, rows, cols)], t=t, drift_compensation=comp, dtype=torch.float64).vmm(
            padded([x], len(rows)), noise=False)[0, :, :len(cols)]
        # programming noise makes the sums continuous: equal but for float round-off at rounding ties
        assert (got != want).float().mean() < 0.01 and (got - want).abs().max() <= 2 ** cfg.post.shift


@pytest.mark.parametrize("name", ["default", "offset-unary", "pcm", "default-relu"])
def test_noise_statistics_match_whole_array(name):
    """Per-column means and variances over 10**5 noisy VMMs of one input agree within 5
    standard errors (mean) and 4 % (variance: 5 standard errors of a variance at this n)."""
    cfg = CONFIGS[name.removesuffix("-relu")]()
    cfg = cfg.replace(array=dict(rows=24, cols=4, mac_lanes=4 * cfg.datapath.slices, adc_share=2), post=dict(shift=0),
                      device=dict(read_noise_sigma=0.02) if cfg.device.model == "generic" else {})
    rng = np.random.default_rng(9)
    e = TileEmulator(cfg, seed=2)
    e.program_weights(rng.integers(cfg.datapath.weight_min, cfg.datapath.weight_max + 1, (cfg.array.rows, cfg.array.cols)))
    rows, cols = torch.arange(cfg.array.rows), torch.arange(cfg.array.cols)
    n = 100_000
    x = np.repeat(random_inputs(cfg, rng, 3)[2:3], n, axis=0)
    if name.endswith("-relu"):             # pulses that drive nothing still convert their noise
        x = small_non_negative(x)
    t = 3600.0 if cfg.device.model == "pcm" else None
    want = reference(e, rows, cols, x, t=t)
    got = RegionStack([(e, rows, cols)], t=t).vmm(padded([x], cfg.array.rows))[0].to(torch.float64)
    assert want.var(0).min() > 1                                  # the noise is there
    se = torch.sqrt((want.var(0) + got.var(0)) / n)
    assert ((got.mean(0) - want.mean(0)).abs() < 5 * se).all(), (got.mean(0), want.mean(0))
    assert ((got.var(0) / want.var(0) - 1).abs() < 0.04).all(), (got.var(0), want.var(0))


def test_stack_follows_the_cells():
    cfg = CONFIGS["default"]()
    rng = np.random.default_rng(10)
    e = emulators(cfg, rng)[0]
    rows, cols = random_region(cfg, rng)
    stack = RegionStack([(e, rows, cols)])
    assert stack.current()
    e.apply_pulses(int(rows[0]), int(cols[0]) * cfg.datapath.slices, 0, 0, 3, noise=False)
    assert not stack.current()
    stack = RegionStack([(e, rows, cols)])
    e.set_state(e.state.numpy(), e.stuck.numpy())
    assert not stack.current()


def test_backend_regions_equal_whole_array_vmm():
    """EmulatorBackend.vmm_regions (fast) and Backend.vmm_regions (one whole-array VMM per
    region), datapath mode without output noise: bit-identical."""
    cfg = preset("default").replace(device=dict(output_noise_lsb=0.0))
    rng = np.random.default_rng(11)
    be = EmulatorBackend(cfg, mode="datapath")
    for t in range(2):
        be.tiles[t].load_golden(random_tile(cfg, rng, tile=t))
    x = random_inputs(cfg, rng, 30)
    regions = [Region(t, r.numpy(), rng.integers(0, cfg.array.rows, len(r)), c.numpy())
               for t in (0, 1, 0) for r, c in [random_region(cfg, rng)]]
    fast = be.vmm_regions(regions, x)
    slow = super(EmulatorBackend, be).vmm_regions(regions, x)
    assert torch.equal(fast, slow)
    empty = be.vmm_regions(regions, x[:0])                  # an empty batch: no rows, the same columns
    assert empty.shape == (len(regions), 0, fast.shape[2])
    assert torch.equal(empty, super(EmulatorBackend, be).vmm_regions(regions, x[:0]))
    small = np.minimum(np.abs(x), 127).astype(np.uint16)    # unsigned integers are inputs too
    assert torch.equal(be.vmm_regions(regions, small), super(EmulatorBackend, be).vmm_regions(regions, small))


def test_physical_equals_datapath_for_ideal_devices_at_the_default_dtype():
    """Ideal devices programmed to exact codes: the physical emulator (float32 tiles and
    sums, the backend's default) gives the datapath's integers, conversion for conversion."""
    cfg = preset("default").replace(device=dict(output_noise_lsb=0.0, read_noise_sigma=0.0))
    rng = np.random.default_rng(13)
    physical, datapath = EmulatorBackend(cfg), EmulatorBackend(cfg, mode="datapath")
    assert physical.dtype == torch.float32
    for t in range(2):
        g = random_tile(cfg, rng, stuck_rate=0.0, tile=t)
        g.program_weights(rng.integers(cfg.datapath.weight_min, cfg.datapath.weight_max + 1,
                                       (cfg.array.rows, cfg.array.cols)))    # states at exact codes
        for be in (physical, datapath):
            be.tiles[t].load_golden(g)
    x = random_inputs(cfg, rng, 40)
    regions = [Region(t, r.numpy(), rng.integers(0, cfg.array.rows, len(r)), c.numpy())
               for t in (0, 1, 0) for r, c in [random_region(cfg, rng)]]
    assert torch.equal(physical.vmm_regions(regions, x), datapath.vmm_regions(regions, x))


def test_bad_regions_are_refused():
    cfg = preset("default")
    be = EmulatorBackend(cfg)
    x = np.zeros((2, 8), dtype=np.int64)
    with pytest.raises(InputRangeError, match="driven twice"):
        Region(0, [1, 1], [0, 1], [0])
    with pytest.raises(InputRangeError, match="rows but"):
        Region(0, [1, 2], [0], [0])
    for bad, match in ((Region(0, [cfg.array.rows], [0], [0]), "word lines outside"),
                       (Region(0, [0], [0], [cfg.array.cols]), "columns outside"),
                       (Region(0, [0], [8], [0]), "input features outside"),
                       (Region(cfg.array.tiles, [0], [0], [0]), "tile")):
        with pytest.raises(InputRangeError, match=match):
            be.vmm_regions([bad], x)
    with pytest.raises(InputRangeError, match="outside"):
        be.vmm_regions([Region(0, [0], [0], [0])], np.full((2, 8), 1000))
    with pytest.raises(InputRangeError, match="integers"):
        be.vmm_regions([Region(0, [0], [0], [0])], np.zeros((2, 8)))


def test_stack_reads_the_registers_of_the_moment():
    """Post-processing and ADC registers changed after the stack was built take effect."""
    cfg = CONFIGS["default"]()
    rng = np.random.default_rng(12)
    e = emulators(cfg, rng)[0]
    rows, cols = random_region(cfg, rng)
    stack = RegionStack([(e, rows, cols)], dtype=torch.float64)
    x = random_inputs(cfg, rng, 20)[:, :len(rows)]
    stack.vmm(padded([x], len(rows)), noise=False)
    e.set_post(bias=rng.integers(-50, 50, cfg.array.cols), scale=rng.integers(1, 8, cfg.array.cols))
    e.adc.set_registers(gain=cfg.adc.gain + 3, offset=2)
    e.relu = not e.relu
    got = stack.vmm(padded([x], len(rows)), noise=False)[0, :, :len(cols)]
    assert torch.equal(got, reference(e, rows, cols, x, noise=False))
