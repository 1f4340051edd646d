"""Programming failures: faulty cells reported per cell, their lines moved onto spare rows and
columns, and a repaired chip that computes exactly what a fault-free one does."""
import numpy as np
import pytest
import torch

import cimstack
from cimstack.backends import EmulatorBackend, GoldenBackend, fabricate
from cimstack.chip.enums import Polarity, Stuck
from cimstack.errors import CompileError, ConfigError, ProgrammingError
from cimstack.runtime.repair import check_maps, pick_line
from cimstack.runtime.saved import load_deployment
from cimstack.zoo import models

# noise-free reads, so that a repaired chip must match a fault-free one bit for bit
QUIET = dict(output_noise_lsb=0.0, read_noise_sigma=0.0)
SPARES = dict(spare_rows=4, spare_cols=4)


@pytest.fixture(scope="module")
def mlp():
    model, split, _ = models.train_digits("mlp", seed=0)
    return model, split


STUCK, SEED = 0.0015, 11       # chip instance 11 of this config: 9 faulty cells in use, 1 more on a spare, all repairable


def faulty(stuck: float, **array) -> cimstack.ChipConfig:
    return cimstack.preset("default").replace(
        array=array, device=dict(QUIET, stuck_at_0_rate=stuck / 2, stuck_at_gmax_rate=stuck / 2))


def compiled(mlp, cfg):
    model, split = mlp
    return cimstack.compile(model, cfg, example=split.x_train[:128], seed=SEED)


@pytest.fixture(scope="module")
def repaired(mlp):
    """The MLP on a chip with stuck cells and 4 spare rows and columns per tile, programmed
    on the golden model with ``strict`` (so every fault in use was repaired)."""
    cfg = faulty(STUCK, **SPARES)
    dep = compiled(mlp, cfg)
    return cfg, dep, dep.program(GoldenBackend(cfg), strict=True)


def test_pick_line_prefers_must_repair_then_costliest_then_cheaper_lines():
    hits = np.zeros((8, 6), dtype=bool)
    hits[2, [0, 3, 5]] = True                        # row 2: three faults
    hits[[1, 4], 1] = True                           # column 1: two
    assert pick_line(hits, 2, 2) == ("row", 2)
    assert pick_line(hits, 0, 2) == ("col", 1)       # no spare rows: a column
    assert pick_line(hits, 2, 0) == ("row", 2)
    # column 1 has more faults than there are spare rows: only a column can mend it
    hits2 = np.zeros((8, 6), dtype=bool)
    hits2[[0, 2, 5], 1] = True
    hits2[3, [2, 3, 4]] = True                       # as many, and a row is cheaper, but
    assert pick_line(hits2, 2, 3) == ("col", 1)
    one = np.zeros((8, 6), dtype=bool)
    one[3, 3] = True
    assert pick_line(one, 1, 1) == ("row", 3)        # a tie: the row has 6 positions, the column 8
    assert pick_line(one, 0, 0) is None
    weighed = np.zeros((8, 6))
    weighed[2, 0] = weighed[4, 1] = 1.0              # single faults in the low slice
    weighed[5, 4] = 64.0                             # one in the high slice costs more
    assert pick_line(weighed, 2, 2) == ("row", 5)
    weighed[6, [2, 3]] = 1.0                         # but two faults on one line come first
    assert pick_line(weighed, 2, 2) == ("row", 6)
    assert pick_line(np.zeros((8, 6), dtype=bool), 1, 1) is None


def test_spares_are_checked_and_held_back_from_placement(mlp):
    model, split = mlp
    with pytest.raises(ConfigError, match="spare_rows = 64 is out of range"):
        cimstack.preset("default").replace(array=dict(spare_rows=64))
    with pytest.raises(ConfigError, match="spare_cols"):
        cimstack.preset("default").replace(array=dict(spare_cols=-1))
    base = cimstack.preset("default")
    cfg = base.replace(array=SPARES)
    assert cfg.datapath.config_hash == base.datapath.config_hash     # the same gateware
    assert (cfg.array.usable_rows, cfg.array.usable_cols) == (60, 60)
    dep = cimstack.compile(model, cfg, example=split.x_train[:64])
    for layer in dep.layers:
        for b in layer.blocks:
            assert b.row + b.rows <= 60 and b.col + b.cols <= 60
    tight = base.replace(array=dict(tiles=1, spare_rows=40, spare_cols=40))
    with pytest.raises(cimstack.errors.PlacementError, match=r"24x24 \(less 40 spare rows, 40 spare columns\)"):
        cimstack.compile(model, tight, example=split.x_train[:64])


def test_repaired_chip_computes_exactly_what_a_fault_free_one_does(mlp, repaired):
    """Stuck cells in use are reported per cell and moved onto spares (spare cells that fail
    in turn go to the next spare); with every fault out of use the outputs equal a fault-free
    chip's bit for bit, which also proves the input and output routing of the moved lines."""
    cfg, dep, report = repaired
    assert report.failed_cells > 5 and report.repairs and not report.unrepaired
    assert {r.kind for r in report.repairs} == {"row", "col"}
    assert any(f.on_spare for f in report.faults)                 # a spare failed and was replaced
    # every fault is a real out-of-tolerance cell of the fabricated chip, named per cell
    for f in report.faults:
        assert fabricate(cfg, dep.seed, f.tile)[f.row, f.unit, f.cell] != 0, str(f)
        assert f.repaired and not dep.used_lines(f.tile)[f.row, f.unit // cfg.datapath.slices]
    assert sum(s.repaired for s in report.layers) == report.failed_cells
    assert "faulty cells taken out of use, 0 left in use" in report.table()
    # a moved row carries the weights of the placement row it replaced
    r = next(r for r in report.repairs if r.kind == "row")
    rows, cols = dep.line_maps(r.tile)
    assert rows[r.line] == r.spare >= cfg.array.usable_rows
    w = dep.tile_weights(r.tile)
    assert w[r.spare].any() and not w[r.old].any()

    clean_cfg = faulty(0.0, **SPARES)
    clean = compiled(mlp, clean_cfg)
    assert not clean.program(GoldenBackend(clean_cfg)).faults
    x = mlp[1].x_test[:120]
    torch.testing.assert_close(dep.run(x), clean.run(x), rtol=0, atol=0)


def test_the_emulator_finds_the_same_faults_and_makes_the_same_repairs(mlp, repaired):
    cfg, _, gold = repaired
    emu = compiled(mlp, cfg).program(EmulatorBackend(cfg))
    assert [str(f) for f in gold.faults] == [str(f) for f in emu.faults]
    assert [str(r) for r in gold.repairs] == [str(r) for r in emu.repairs] and not emu.unrepaired


def test_without_enough_spares_faults_stay_reported_and_strict_refuses(mlp):
    none = faulty(STUCK)
    dep = compiled(mlp, none)
    with pytest.raises(ProgrammingError, match="the config has no spare lines") as refused:
        dep.program(GoldenBackend(none), strict=True)
    report = refused.value.report
    assert len(report.unrepaired) == report.failed_cells > 5 and not report.repairs
    few = faulty(STUCK, spare_rows=1, spare_cols=1)
    dep = compiled(mlp, few)
    with pytest.raises(ProgrammingError, match=r"in use after using \d+ spare lines: fc1: \d+.*first: tile \d row") as refused:
        dep.program(GoldenBackend(few), strict=True)
    report = refused.value.report
    assert 0 < len(report.unrepaired) < report.failed_cells and len(report.repairs) <= 2 * len(dep.placement.tiles_used)



def test_repairs_survive_save_and_load_and_damage_is_refused(repaired, tmp_path):
    _, dep, _ = repaired
    path = tmp_path / "mlp.dep"
    dep.save(path)
    back = load_deployment(path)
    for t in dep.placement.tiles_used:
        for got, want in zip(back.line_maps(t), dep.line_maps(t)):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(back.tile_weights(t), dep.tile_weights(t))
        np.testing.assert_array_equal(back.cell_targets(t), dep.cell_targets(t))
    state = torch.load(path, weights_only=True)
    t = next(iter(state["line_maps"]))
    rows = state["line_maps"][t]["rows"]["__ndarray__"]
    rows[0], rows[1] = rows[1].clone(), rows[0].clone()               # two placement rows swapped
    torch.save(state, path)
    with pytest.raises(CompileError, match="swaps two placement lines"):
        load_deployment(path)
    assert check_maps(np.zeros(64, dtype=int), np.arange(64), 64, 64, 60, 60) == "the row map is not a permutation of 64 lines"


def test_cells_that_drift_out_of_tolerance_are_found_refreshed_and_repaired(mlp):
    """After programming, cells disturbed out of tolerance are found by a verify read of every
    cell in use and programmed again; one that broke (stuck) is moved onto a spare. The chip
    then computes exactly what it did before."""
    cfg = faulty(0.0, **SPARES)
    dep = compiled(mlp, cfg)
    be = GoldenBackend(cfg)
    dep.program(be, strict=True)
    x = mlp[1].x_test[:100]
    before = dep.run(x)
    assert dep.check_cells() == []
    t = dep.placement.tiles_used[0]
    jobs = dep.cell_jobs(t, dep.layers[0])
    full = (1 << cfg.datapath.state_bits) - 1
    picks = np.random.default_rng(0).choice(len(jobs), 8, replace=False)
    disturbed = set()
    for i in picks[:6]:                      # pushed away from target: 3 pulses of the largest amplitude
        r, u, c, target = (int(v[i]) for v in (jobs.row, jobs.unit, jobs.cell, jobs.target))
        for _ in range(3):
            be.pulse(t, r, u, c, Polarity.RESET if target > full // 2 else Polarity.SET, cfg.device.pulse_max_amplitude)
        disturbed.add((r, u, c))
    found = {(f.row, f.unit, f.cell) for f in dep.check_cells()}
    assert found <= disturbed and len(found) >= 4
    report = dep.refresh()
    assert sum(s.cells for s in report.layers) == len(found) and not report.faults
    assert dep.check_cells() == []
    torch.testing.assert_close(dep.run(x), before, rtol=0, atol=0)

    i = next(i for i in picks[6:] if jobs.target[i] < full - 8)        # a cell that breaks later
    g = be.soc.tiles[t]
    stuck = g.stuck.copy()
    stuck[jobs.row[i], jobs.unit[i], jobs.cell[i]] = Stuck.AT_MAX
    g.set_state(g.state, stuck)
    (broken,) = dep.check_cells()
    assert (broken.row, broken.unit, broken.cell, broken.status) == (jobs.row[i], jobs.unit[i], jobs.cell[i], "drifted")
    report = dep.refresh(strict=True)
    assert [f.status for f in report.faults] == ["stuck"] and report.faults[0].repaired and len(report.repairs) == 1
    assert dep.check_cells() == []
    torch.testing.assert_close(dep.run(x), before, rtol=0, atol=0)


def test_repairs_with_ir_drop_correction_reprogram_only_what_moved():
    """IR-drop correction retunes the whole tile after a move: only cells whose target moved
    beyond the tolerance are written again, the line left is erased, and every cell has one
    entry in the faults, its latest outcome."""
    layer = torch.nn.Linear(24, 12)
    torch.nn.init.uniform_(layer.weight, -1, 1)
    cfg = faulty(0.01, **SPARES).replace(device=dict(wire_resistance_ohm=1.0))
    dep = cimstack.compile(layer, cfg, example=torch.rand(64, 24), seed=SEED)
    assert dep.ir_compensation
    report = dep.program(GoldenBackend(cfg))
    assert report.repairs and sum(f.repaired for f in report.faults) >= len(report.repairs)
    line_cells = 2 * cfg.datapath.slices * max(cfg.array.usable_rows, cfg.array.usable_cols)
    for r in report.repairs:
        assert r.cells <= line_cells + cfg.array.spare_rows * 2 * cfg.datapath.slices, str(r)
    cells = [(f.tile, f.row, f.unit, f.cell) for f in report.faults]
    assert len(cells) == len(set(cells))
    for f in report.faults:
        assert f.on_spare == (f.row >= cfg.array.usable_rows or f.unit // cfg.datapath.slices >= cfg.array.usable_cols)
    # what is left in use really is off target
    for f in report.unrepaired:
        assert abs(f.error) > dep._tol(None)
