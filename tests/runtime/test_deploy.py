"""Mapper, placer, backends and Deployment: the host stack from a model to its accuracy on the chip."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import cimstack
from cimstack.backends import EmulatorBackend, GoldenBackend, fabricate
from cimstack.compiler import from_onnx
from cimstack.compiler.ir import Node
from cimstack.compiler.mapper import even_splits, map_layer
from cimstack.compiler.placer import place
from cimstack.errors import CompileError, ConfigError, InputRangeError, PlacementError, ProgrammingError
from cimstack.zoo import datasets, models

CFG = cimstack.preset("default")


@pytest.fixture(scope="module")
def trained():
    """Each digits model trained once per session: name -> (model, split, stats)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = models.train_digits(name, seed=0)
        return cache[name]
    return get


def _linear(name, rows, cols, rng):
    return Node(name, "linear", ("input",), {"weight": rng.normal(size=(cols, rows)), "bias": None})


# -- mapper ----------------------------------------------------------------------------------

def test_even_splits():
    assert even_splits(150, 64) == [(0, 50), (50, 50), (100, 50)]
    assert even_splits(64, 64) == [(0, 64)]
    assert even_splits(65, 64) == [(0, 33), (33, 32)]


@pytest.mark.parametrize("weight_scale", ["per_layer", "per_column"])
def test_mapper_quantises_within_half_a_step_and_tiles_the_matrix(weight_scale):
    rng = np.random.default_rng(1)
    node = _linear("fc", 150, 70, rng)
    layer = map_layer(node, CFG, x_range=2.0, weight_scale=weight_scale, copies=2)
    dp = CFG.datapath
    assert len(layer.blocks) == 2 * 3 * 2                         # copies x row blocks x column blocks
    assert {(b.rows, b.cols) for b in layer.blocks} == {(50, 35)}
    covered = np.zeros((150, 70), dtype=int)
    for b in layer.blocks:
        assert b.weights.min() >= dp.weight_min and b.weights.max() <= dp.weight_max
        covered[b.in0:b.in0 + b.rows, b.out0:b.out0 + b.cols] += 1
    assert (covered == 2).all()
    m = node.matrix()
    q = layer.quantised_matrix() * layer.w_scale[None, :]
    assert np.all(np.abs(q - m) <= layer.w_scale[None, :] / 2 + 1e-12)
    assert layer.x_scale == pytest.approx(2.0 / dp.mode().in_max)
    if weight_scale == "per_column":       # every column reaches the top code
        assert (np.abs(layer.quantised_matrix()).max(axis=0) == dp.weight_max).all()
    else:
        assert len(set(layer.w_scale)) == 1
    with pytest.raises(ConfigError, match="weight_scale"):
        map_layer(node, CFG, 1.0, weight_scale="per_row")
    with pytest.raises(ConfigError, match="copies"):
        map_layer(node, CFG, 1.0, copies=0)


# -- placer ----------------------------------------------------------------------------------

def _assert_valid(placement, cfg):
    a = cfg.array
    for t in range(a.tiles):
        occ = np.zeros((a.rows, a.cols), dtype=int)
        for layer in placement.layers:
            for b in layer.blocks:
                if b.tile == t:
                    assert 0 <= b.row and b.row + b.rows <= a.rows and 0 <= b.col and b.col + b.cols <= a.cols
                    occ[b.row:b.row + b.rows, b.col:b.col + b.cols] += 1
        assert occ.max(initial=0) <= 1, f"blocks overlap on tile {t}"


@pytest.mark.parametrize("seed", range(6))
def test_placements_never_overlap_and_skyline_never_uses_more_arrays(seed):
    rng = np.random.default_rng(seed)
    cfg = CFG.replace(array=dict(tiles=12))
    shapes = [(int(rng.integers(3, 130)), int(rng.integers(3, 90))) for _ in range(int(rng.integers(2, 6)))]
    used = {}
    for strategy in ("layer_per_array", "skyline"):
        layers = [map_layer(_linear(f"l{i}", r, c, rng), cfg, 1.0) for i, (r, c) in enumerate(shapes)]
        try:
            p = place(layers, cfg, strategy)
        except PlacementError as exc:
            assert strategy == "layer_per_array" and "short" in str(exc)
            used[strategy] = cfg.array.tiles + 1
            continue
        _assert_valid(p, cfg)
        assert p.cells_used() == sum(r * c for r, c in shapes)
        assert p.utilisation() == pytest.approx(p.cells_used() / (len(p.tiles_used) * 64 * 64))
        used[strategy] = len(p.tiles_used)
        for layer in layers:               # every pass is blocks of one layer on one tile, disjoint
            assert sum(len(q.blocks) for q in p.passes[layer.name]) == len(layer.blocks)
    assert used["skyline"] <= used["layer_per_array"]


def test_auto_placement_picks_the_packed_mlp(trained):
    model, split, _ = trained("mlp")
    dep = cimstack.compile(model, CFG, example=split.x_train[:128])
    assert dep.placement.strategy == "skyline"
    assert dep.placement.tiles_used == [0]                    # 64x32 and 32x10 share one array
    lpa = cimstack.compile(model, CFG, example=split.x_train[:128], strategy="layer_per_array")
    assert lpa.placement.tiles_used == [0, 1]
    assert dep.placement.cost["score"] < lpa.placement.cost["score"]
    text = dep.placement.report()
    assert "fc1" in text and "fc2" in text and "utilisation" in text
    assert set(dep.placement.tile_map(0)) >= {"A", "B", "."}


def test_model_that_does_not_fit_names_layer_and_shortfall():
    model = nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 600))
    with pytest.raises(PlacementError) as exc:
        cimstack.compile(model, CFG, example=torch.rand(8, 64))
    msg = str(exc.value)
    assert "layer '_2'" in msg and "needs 11 arrays of 64x64" in msg and "the chip has 4 (7 short)" in msg


def test_resnet_only_fits_when_packed(trained):
    model, split, _ = trained("resnet")
    with pytest.raises(PlacementError, match="one layer per array"):
        cimstack.compile(model, CFG, example=split.x_train[:32], strategy="layer_per_array")
    dep = cimstack.compile(model, CFG, example=split.x_train[:32])
    assert dep.placement.strategy == "skyline"
    _assert_valid(dep.placement, CFG)


# -- programming -----------------------------------------------------------------------------

def test_golden_programming_reads_back_the_mapped_codes(trained):
    model, split, _ = trained("mlp")
    dep = cimstack.compile(model, CFG, example=split.x_train[:128])
    be = GoldenBackend(CFG)
    report = dep.program(be)
    assert report.failed_cells == 0
    assert report.cells == (64 * 32 + 32 * 10) * CFG.datapath.slices * 2
    assert all(s.converged == s.cells and 0 < s.pulses_per_cell < 10 for s in report.layers)
    tile = be.soc.tiles[0]
    got = tile.effective_weights().reshape(64, 64, CFG.datapath.slices) @ (1 << (4 * np.arange(CFG.datapath.slices)))
    for layer in dep.layers:
        for b in layer.blocks:
            np.testing.assert_array_equal(got[b.row:b.row + b.rows, b.col:b.col + b.cols], b.weights)
    assert "write-verify on golden" in report.table()


def test_faulty_cells_are_reported_and_strict_refuses_them(trained):
    model, split, _ = trained("mlp")
    cfg = CFG.replace(device=dict(stuck_at_0_rate=0.01, stuck_at_gmax_rate=0.01))
    dep = cimstack.compile(model, cfg, example=split.x_train[:128])
    stuck = fabricate(cfg, dep.seed, 0)
    for be in (GoldenBackend(cfg), EmulatorBackend(cfg)):
        report = dep.program(be)
        jobs = [dep.cell_jobs(0, layer) for layer in dep.layers]
        faulty = sum(int((stuck[j.row, j.unit, j.cell] != 0).sum()) for j in jobs)
        # a stuck cell whose stuck code happens to be its target converges; every other one is reported
        assert 0 < report.failed_cells <= faulty
        assert report.failed_cells >= faulty // 2
        with pytest.raises(ProgrammingError, match="out of tolerance"):
            dep.program(be, strict=True)


# -- backends agree --------------------------------------------------------------------------

def test_emulator_agrees_with_golden_statistically(trained):
    model, split, _ = trained("mlp")
    dep = cimstack.compile(model, CFG, example=split.x_train[:256])
    x = split.x_test[:200]
    dep.program(GoldenBackend(CFG))
    y_gold = dep.run(x)
    ref = dep.quantised(x)
    # datapath twin: the same error statistics around the ideal quantised model (bias within
    # 0.2 sigma, spread within 25 %); physical: conductances keep the write-verify residual
    # (up to +-tol of the bin centre, ~0.44 level) that the chip's code read removes, an error
    # that grows with the inputs, so its spread may reach twice the chip's
    for mode, bias_tol, std_tol in (("datapath", 0.2, 0.25), ("physical", 1.0, 1.0)):
        dep.program(EmulatorBackend(CFG, mode=mode))
        y_emu = dep.run(x)
        d_gold, d_emu = (y_gold - ref), (y_emu - ref)
        assert abs(float(d_emu.mean() - d_gold.mean())) < bias_tol * float(d_gold.std()), mode
        assert float(d_emu.std()) == pytest.approx(float(d_gold.std()), rel=std_tol), mode
        assert float(np.corrcoef(y_emu.ravel(), y_gold.ravel())[0, 1]) > 0.98


def test_golden_runs_are_reproducible_and_seeded(trained):
    model, split, _ = trained("mlp")
    dep = cimstack.compile(model, CFG, example=split.x_train[:128])
    x = split.x_test[:30]
    be = GoldenBackend(CFG)
    dep.program(be)
    a = dep.run(x)
    dep.program(be)
    assert torch.equal(a, dep.run(x))                 # programming restarts every generator
    other = cimstack.compile(model, CFG, example=split.x_train[:128], seed=7)
    other.program(be)
    assert not torch.equal(a, other.run(x))


# -- the models -------------------------------------------------------------------------------

# accuracy floors after deployment on the default chip with its untuned ADC gain of 1/2 (FP floors
# are in test_models.py); the ResNet loses most: six layers of coarse conversions compound
FLOORS = {"mlp": 0.93, "cnn": 0.88, "gru": 0.85, "lstm": 0.85, "resnet": 0.72}


@pytest.mark.parametrize("name", list(FLOORS))
def test_models_on_emulator_and_golden(trained, name):
    model, split, stats = trained(name)
    dep = cimstack.compile(model, CFG, example=split.x_train[:256])
    fp = float((dep.reference(split.x_test).argmax(1) == split.y_test).double().mean())
    assert fp == pytest.approx(stats["test_accuracy"], abs=1e-6)          # the IR is the model
    dep.program(EmulatorBackend(CFG))
    m = 120 if name in ("cnn", "resnet") else len(split.y_test)      # conv models: a VMM per pixel
    emu = dep.accuracy(split.x_test[:m], split.y_test[:m])
    assert emu >= FLOORS[name], f"{name}: emulator accuracy {emu:.3f} on {m} samples (FP {fp:.3f})"
    n = 60                                             # the golden model is exact but slow: a subset
    dep.program(GoldenBackend(CFG))
    gold = dep.accuracy(split.x_test[:n], split.y_test[:n])
    assert gold >= FLOORS[name] - 0.05, f"{name}: golden accuracy {gold:.3f} on {n} samples"


def test_onnx_model_deploys_like_the_torch_model(trained, tmp_path):
    model, split, _ = trained("mlp")
    path = tmp_path / "mlp.onnx"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (split.x_train[:2],), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    from_file = cimstack.compile(str(path), CFG, example=split.x_train[:128])
    from_torch = cimstack.compile(model, CFG, example=split.x_train[:128])
    assert len(from_file.layers) == 2
    for a, b in zip(from_file.layers, from_torch.layers):
        assert [blk.weights.tolist() for blk in a.blocks] == [blk.weights.tolist() for blk in b.blocks]
    be = GoldenBackend(CFG)
    from_file.program(be)
    y1 = from_file.run(split.x_test[:20])
    from_torch.program(be)
    torch.testing.assert_close(y1, from_torch.run(split.x_test[:20]))
    assert from_onnx(str(path)).analog_nodes()[0].shape == (64, 32)


# -- bad use ---------------------------------------------------------------------------------

def test_bad_use_raises_clear_errors(trained):
    model, split, _ = trained("mlp")
    with pytest.raises(CompileError, match="example inputs"):
        cimstack.compile(model, CFG)
    with pytest.raises(ConfigError, match="ChipConfig"):
        cimstack.compile(model, "default", example=split.x_train[:8])
    with pytest.raises(CompileError, match="example inputs of shape"):
        cimstack.compile(model, CFG, example=torch.rand(4, 10))
    with pytest.raises(ConfigError, match="strategy"):
        cimstack.compile(model, CFG, example=split.x_train[:8], strategy="random")
    with pytest.raises(ConfigError, match="unknown layer"):
        cimstack.compile(model, CFG, example=split.x_train[:8], copies={"fc9": 2})
    with pytest.raises(CompileError, match="no layer"):
        cimstack.compile(nn.Sequential(nn.ReLU()), CFG, example=split.x_train[:8])
    dep = cimstack.compile(model, CFG, example=split.x_train[:8])
    with pytest.raises(ConfigError, match="not been programmed"):
        dep.run(split.x_test[:2])
    with pytest.raises(ConfigError, match="compiled"):
        dep.program(GoldenBackend(cimstack.preset("pcm-joshi2020")))
    dep.program(GoldenBackend(CFG))
    with pytest.raises(InputRangeError, match="NaN"):
        dep.run(torch.full((2, 64), float("nan")))
    with pytest.raises(InputRangeError, match="compiled for a batch of samples of shape"):
        dep.run(torch.rand(2, 8, 8))


def test_copies_average_out_read_noise(trained):
    model, split, _ = trained("mlp")
    noisy = CFG.replace(device=dict(output_noise_lsb=6.0))
    x = split.x_test[:200]
    spread = {}
    for n in (1, 3):
        dep = cimstack.compile(model, noisy, example=split.x_train[:256], copies=n)
        assert len(dep.layers[0].blocks) == n
        dep.program(EmulatorBackend(noisy, mode="datapath"))
        spread[n] = float((dep.run(x) - dep.quantised(x)).std())
    assert spread[3] < 0.75 * spread[1]                  # 1/sqrt(3) = 0.58 in theory
    assert datasets.digits("flat").x_train.shape[1] == 64
