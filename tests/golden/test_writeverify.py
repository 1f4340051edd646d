"""Golden write-verify: the array form (:func:`cimstack.golden.writeverify.ispp_cells`, what
GoldenSoC and the golden backend run) against the scalar ISPP loop over the single-cell read
and pulse callbacks, bit for bit: results, cell states and both generators' positions."""
import copy

import numpy as np
import pytest

import cimstack.golden.writeverify as wv
from cimstack.backends.base import CellJobs, WriteVerifyParams
from cimstack.backends.golden import GoldenBackend
from cimstack.chip import prng
from cimstack.chip.config import PRESETS, ChipConfig, preset
from cimstack.chip.enums import Stuck
from cimstack.errors import InputRangeError
from cimstack.golden.soc import GoldenSoC
from cimstack.golden.tile import Pulse
from cimstack.golden.writeverify import WriteVerifyJob, ispp


def reference_write_verify(soc: GoldenSoC, tile: int, jobs: list[WriteVerifyJob], *run) -> list:
    """The cell-by-cell write-verify: ispp() over GoldenSoC.read_cell and GoldenTile.pulse."""
    wv.check_write_verify(soc.cfg, tile, jobs, *run)
    lanes, g = soc.cfg.array.mac_lanes, soc.tiles[tile]

    def read(j):
        return soc.read_cell(tile, j.row, j.group * lanes + j.lane, j.cell)

    def pulse(j, polarity, amplitude):
        g.pulse(Pulse(j.row, j.group * lanes + j.lane, j.cell, polarity, amplitude))

    return ispp(jobs, read, pulse, *run)


def assert_same_soc(a: GoldenSoC, b: GoldenSoC) -> None:
    assert int(a.verify_rng[0]) == int(b.verify_rng[0])
    for ta, tb in zip(a.tiles, b.tiles):
        np.testing.assert_array_equal(ta.state, tb.state)
        np.testing.assert_array_equal(ta.stuck, tb.stuck)
        assert int(ta.update_rng[0]) == int(tb.update_rng[0])


def random_soc(cfg: ChipConfig, rng: np.random.Generator) -> GoldenSoC:
    """Erased, or random states; a few stuck cells of every flag (3 too: reads the state, never moves)."""
    soc = GoldenSoC(cfg)
    soc.reseed(int(rng.integers(1 << 32)))
    gs = (1 << cfg.datapath.state_bits) - 1
    for t in soc.tiles:
        if rng.random() < 0.5:
            t.state[...] = rng.integers(0, gs + 1, t.state.shape)
        t.stuck[...] = rng.choice(4, t.state.shape, p=[0.94, 0.02, 0.02, 0.02])
    return soc


def random_jobs(cfg: ChipConfig, rng: np.random.Generator, n: int) -> list[WriteVerifyJob]:
    """Cells drawn with repeats (a later job starts where an earlier one left the cell); targets
    at code-bin centres or anywhere, tolerances from 0 to a few, sometimes wide."""
    dp, a, frac = cfg.datapath, cfg.array, cfg.cell.frac_bits
    gs = (1 << dp.state_bits) - 1
    pool = max(2, n // 3)
    cells = np.stack([rng.integers(0, a.rows, pool), rng.integers(0, dp.units, pool),
                      rng.integers(0, dp.cells_per_unit, pool)], axis=1)[rng.integers(0, pool, n)]
    centre = rng.random() < 0.5
    half = (1 << frac) >> 1
    jobs = []
    for r, u, c in cells.tolist():
        target = (int(rng.integers(0, dp.code_max + 1)) << frac) + half if centre else int(rng.integers(0, gs + 1))
        tol = int(rng.choice([0, 1, 2, max(half - 1, 0), int(rng.integers(0, 9)), 255], p=[.1, .1, .1, .4, .25, .05]))
        jobs.append(WriteVerifyJob(r, u // a.mac_lanes, u % a.mac_lanes, c, target, tol))
    return jobs


# Every preset, and the fields that change the pulse response or the verify reads.
CONFIGS = {name: preset(name) for name in PRESETS} | {
    "verify-noise": preset("default").replace(device=dict(read_noise_sigma=0.02)),
    "loud-verify": preset("ice40-tiny").replace(device=dict(read_noise_sigma=0.2, pulse_c2c_sigma=0.3)),
    "no-c2c": preset("default").replace(device=dict(pulse_c2c_sigma=0.0)),
    "wild-c2c": preset("ice40-tiny").replace(device=dict(pulse_c2c_sigma=1.0)),   # noise beyond the step: moves backwards
    "tiny-steps": preset("ice40-tiny").replace(device=dict(pulse_step_lsb=1 / 16)),  # many pulses a cell
    "huge-steps": preset("ice40-tiny").replace(device=dict(pulse_step_lsb=4096.0)),  # clamps at both ends
    "no-frac": preset("ice40-tiny").replace(cell=dict(frac_bits=0)),
    "offset": preset("default").replace(mapping=dict(scheme="offset"), array=dict(mac_lanes=12, adc_share=4)),
}

# (max_pulses, amp_start, amp_step, amp_max or None for the device's largest)
RUNS = [(100, 1, 1, None), (0, 1, 1, None), (1, 1, 1, None), (5, 2, 0, 3), (40, 1, 255, None), (300, 1, 0, 1),
        (1023, 1, 2, None)]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_array_write_verify_equals_the_cell_by_cell_loop(name):
    cfg = CONFIGS[name]
    amax = cfg.device.pulse_max_amplitude
    rng = np.random.default_rng(sum(map(ord, name)))
    for k, (max_pulses, a0, step, top) in enumerate(RUNS):
        run = (max_pulses, min(a0, amax), step, min(top or amax, amax))
        soc = random_soc(cfg, rng)
        ref = copy.deepcopy(soc)
        tiles = sorted({0, int(rng.integers(cfg.array.tiles))})
        for tile in tiles:             # two calls share the verify generator
            jobs = random_jobs(cfg, rng, 60 if max_pulses > 100 else 150)
            got = soc.write_verify(tile, jobs, *run)
            want = reference_write_verify(ref, tile, jobs, *run)
            assert got == want, (name, k, tile)
        assert_same_soc(soc, ref)
        # and the generators go on from the same place
        assert soc.read_cell(0, 0, 0, 0) == ref.read_cell(0, 0, 0, 0)


@pytest.mark.parametrize("seed", range(6))
def test_many_random_runs_on_the_rtl_test_chip(seed):
    """Random run settings on a small chip with verify noise: statuses of every kind."""
    cfg = preset("default").replace(name="wv", array=dict(tiles=2, rows=16, cols=8, mac_lanes=8, adc_share=2),
                                    cell=dict(cell_bits=3, frac_bits=3), mapping=dict(weight_bits=6),
                                    device=dict(read_noise_sigma=0.03, pulse_c2c_sigma=0.2, pulse_step_lsb=2.0))
    rng = np.random.default_rng(100 + seed)
    amax = cfg.device.pulse_max_amplitude
    statuses = set()
    for _ in range(8):
        soc = random_soc(cfg, rng)
        ref = copy.deepcopy(soc)
        a0 = int(rng.integers(1, amax + 1))
        run = (int(rng.choice([0, 1, 3, 10, 60])), a0, int(rng.integers(0, 4)), int(rng.integers(a0, amax + 1)))
        tile = int(rng.integers(2))
        jobs = random_jobs(cfg, rng, int(rng.integers(0, 120)))
        got = soc.write_verify(tile, jobs, *run)
        assert got == reference_write_verify(ref, tile, jobs, *run)
        assert_same_soc(soc, ref)
        statuses |= {r.status for r in got}
    assert len(statuses) >= 2


def test_batches_and_draws_made_ahead(monkeypatch):
    """Job batches of 7 and noise blocks grown a few values at a time give the same outcome."""
    monkeypatch.setattr(wv, "_BATCH", 7)
    cfg = CONFIGS["loud-verify"]
    rng = np.random.default_rng(4)
    soc = random_soc(cfg, rng)
    ref = copy.deepcopy(soc)
    jobs = random_jobs(cfg, rng, 100)
    assert soc.write_verify(0, jobs, 50, 1, 1, 7) == reference_write_verify(ref, 0, jobs, 50, 1, 1, 7)
    assert_same_soc(soc, ref)


def test_golden_backend_write_verify_equals_the_cell_by_cell_loop():
    cfg = preset("default").replace(device=dict(read_noise_sigma=0.01, stuck_at_0_rate=0.02, stuck_at_gmax_rate=0.02))
    be = GoldenBackend(cfg)
    be.erase(range(cfg.array.tiles), seed=5)
    ref = copy.deepcopy(be.soc)
    rng = np.random.default_rng(8)
    dp = cfg.datapath
    n = 1500
    r, u, c = rng.integers(0, cfg.array.rows, n), rng.integers(0, dp.units, n), rng.integers(0, 2, n)
    target, tol = rng.integers(0, 1 << dp.state_bits, n), rng.integers(0, 8, n)
    params = WriteVerifyParams(max_pulses=60)
    status, pulses, error = be.write_verify(2, CellJobs(r, u, c, target, tol), params)
    lanes = cfg.array.mac_lanes
    want = reference_write_verify(ref, 2, [WriteVerifyJob(*map(int, (r[i], u[i] // lanes, u[i] % lanes, c[i], target[i], tol[i])))
                                           for i in range(n)], 60, 1, 1, cfg.device.pulse_max_amplitude)
    assert status.dtype == pulses.dtype == error.dtype == np.int64
    assert status.tolist() == [w.status for w in want]
    assert pulses.tolist() == [w.pulses for w in want]
    assert error.tolist() == [w.error for w in want]
    assert_same_soc(be.soc, ref)
    empty = be.write_verify(2, CellJobs([], [], [], [], []), params)
    assert all(len(a) == 0 for a in empty)
    assert_same_soc(be.soc, ref)


def test_errors_are_saturated_to_16_bits():
    cfg = preset("default").replace(cell=dict(cell_bits=8, frac_bits=8))       # 16-bit states
    soc = GoldenSoC(cfg)
    soc.tiles[0].state[0, 0, 0] = 65535
    soc.tiles[0].stuck[0, 1, 0] = Stuck.AT_MAX
    jobs = [WriteVerifyJob(0, 0, 0, 0, 0, 0), WriteVerifyJob(0, 0, 1, 0, 0, 3)]
    ref = copy.deepcopy(soc)
    got = soc.write_verify(0, jobs, 0, 1, 1, 1)
    assert got == reference_write_verify(ref, 0, jobs, 0, 1, 1, 1)
    assert [r.error for r in got] == [32767, 32767]


def test_bad_jobs_raise_the_same_error_both_ways():
    cfg = preset("ice40-tiny")
    soc = GoldenSoC(cfg)
    dp, lanes = cfg.datapath, cfg.array.mac_lanes
    good = WriteVerifyJob(1, 1, 1, 1, 10, 2)
    bads = [WriteVerifyJob(16, 0, 0, 0, 0, 0), WriteVerifyJob(0, dp.groups, 0, 0, 0, 0), WriteVerifyJob(0, 0, 0, 2, 0, 0),
            WriteVerifyJob(0, 0, 0, 0, 1 << dp.state_bits, 0), WriteVerifyJob(0, 0, 0, 0, 0, 256),
            WriteVerifyJob(0, 0, 0, 0, -1, 0), WriteVerifyJob(-1, 0, 0, 0, 0, 0)]
    for bad in bads:
        jobs = [good, bad, good]
        with pytest.raises(InputRangeError) as listed:
            soc.write_verify(0, jobs, 10, 1, 1, 7)
        arrays = [[j.row for j in jobs], [j.group * lanes + j.lane for j in jobs], [j.cell for j in jobs],
                  [j.target for j in jobs], [j.tol for j in jobs]]
        with pytest.raises(InputRangeError) as cells:
            soc.write_verify_cells(0, *arrays, 10, 1, 1, 7)
        assert str(listed.value) == str(cells.value) and "outside the tile" in str(cells.value)
    for run, match in [((10, 1, 1, 8), "amplitudes"), ((1024, 1, 1, 7), "pulse budget"), ((10, 0, 1, 7), "amplitudes")]:
        with pytest.raises(InputRangeError, match=match):
            soc.write_verify_cells(0, [0], [0], [0], [0], [0], *run)
    with pytest.raises(InputRangeError, match="tile 1 outside"):
        soc.write_verify_cells(1, [0], [0], [0], [0], [0], 10, 1, 1, 7)
    with pytest.raises(InputRangeError, match="unequal lengths"):
        soc.write_verify_cells(0, [0, 1], [0], [0], [0], [0], 10, 1, 1, 7)
    assert (soc.tiles[0].state == 0).all()            # nothing ran


@pytest.mark.parametrize("n", [0, 1, 2, 511, 512, 513, 100_003])
def test_advance_equals_stepping(n):
    x0 = np.array([prng.seed_state(3, i) for i in range(4)], dtype=np.uint32)
    want = prng.xorshift32_states(x0, n)[-1] if n else x0
    np.testing.assert_array_equal(wv.xorshift32_advance(x0, n), want)


def test_draws_made_ahead_equal_the_stream():
    x0 = prng.seed_state(11, prng.VERIFY_STREAM)
    d = wv._Draws(x0, 3, 0)
    for k in (1, 5, 256, 257, 3000):
        d.extend(k)
    want = prng.gauss_from_state(prng.xorshift32_states(np.array([x0], dtype=np.uint32), len(d.values))[:, 0]) * 3
    assert d.values == want.tolist() and len(d.values) >= 1 + 5 + 256 + 257 + 3000
    reads = wv._Draws(x0, 5000, 16)
    reads.extend(700)
    assert reads.values[:700] == prng.round_shift(want[:700] // 3 * 5000, 16).tolist()
    zeros = wv._Draws(x0, 0, 16)
    zeros.extend(10)
    assert zeros.values == [0] * 10
