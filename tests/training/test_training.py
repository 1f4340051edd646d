"""Training for the chip: hardware-aware layers and trainer, OpenCIMTC noise fine-tuning,
mixed-precision training with the chi accumulator, chip-in-the-loop fine-tuning.

Small cases with accuracy floors; the full tables are benchmarks/bench_training.py."""
import copy

import numpy as np
import pytest
import torch
from helpers import soc_test_config
from torch import nn

import cimstack
from cimstack.backends import EmulatorBackend, GoldenBackend
from cimstack.errors import CompileError, ConfigError
from cimstack.training import (
    AnalogConv2d,
    AnalogLinear,
    ChipInTheLoop,
    MixedPrecisionMLP,
    Nonidealities,
    analog_layers,
    analog_matmul,
    convert,
    noise_finetune,
    stage_plan,
    train_hwa,
)
from cimstack.zoo import datasets, models

NOISE_FREE = Nonidealities(programming="none", read_noise=False, output_noise=False, stuck=False)


@pytest.fixture(scope="module")
def flat():
    return datasets.digits("flat")


@pytest.fixture(scope="module")
def small_mlp(flat):
    """64 -> 8 -> 10, the size of the soc-test chip (the harsh one: 1 LSB noise per conversion)."""
    torch.manual_seed(0)
    model = models.DigitsMLP(hidden=8)
    stats = models.train(model, flat, epochs=30, lr=1e-2)
    return model, stats


def _emulator_accuracy(model, split, cfg, seeds=(0, 1)) -> float:
    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    accs = []
    for s in seeds:
        dep.seed = s
        dep.program(EmulatorBackend(cfg))
        accs.append(dep.accuracy(split.x_test, split.y_test))
    return float(np.mean(accs))


# -- the analog layer model ------------------------------------------------------------------------

def test_noise_free_analog_layers_equal_the_golden_chip(flat):
    """With an exact ADC (gain 1) and no noise, the training forward is the chip, bit for bit:
    input and weight quantisation, bit slicing, row blocks, pulses, ADC saturation."""
    torch.manual_seed(1)
    model = models.DigitsMLP(hidden=80)        # 80 outputs: two column blocks; 64 rows: one row block
    models.train(model, flat, epochs=3, lr=1e-2)
    cfg = cimstack.preset("default").replace(name="exact-adc", array={"rows": 48},
                                             adc={"gain": 16, "gain_shift": 4}, device={"output_noise_lsb": 0.0})
    convert(model, cfg, NOISE_FREE)
    model.train()
    model(flat.x_train[:256])                  # initialises the input ranges
    model.eval()
    with torch.no_grad():
        y_train = model(flat.x_test[:120]).double()
    dep = cimstack.compile(model, cfg, example=flat.x_train[:256])
    assert [layer.x_range for layer in dep.layers] == [m.learned_input_range for _, m in analog_layers(model)]
    assert len(dep.layers[0].blocks) == 4      # 64 rows over 48-row arrays, 80 columns over 64
    dep.program(GoldenBackend(cfg))
    y_chip = dep.run(flat.x_test[:120])
    assert torch.allclose(y_train, y_chip, atol=1e-4 * float(y_chip.abs().max()))


def test_gradients_reach_weights_and_the_input_range_and_stop_at_saturation():
    cfg = cimstack.preset("default")
    torch.manual_seed(0)
    m = (torch.randn(64, 8) * 0.1).requires_grad_(True)
    r = torch.tensor(1.0, requires_grad=True)
    x = torch.rand(16, 64) * 2 - 1
    analog_matmul(x, m, r, cfg, Nonidealities()).sum().backward()
    assert torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0
    assert r.grad is not None and torch.isfinite(r.grad) and r.grad != 0
    # every column saturates the ADC: no gradient reaches the weights
    m2 = torch.ones(64, 8, requires_grad=True)
    analog_matmul(torch.ones(4, 64), m2, 1.0, cfg, NOISE_FREE).sum().backward()
    assert torch.count_nonzero(m2.grad) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(programming="ideal"), "programming"),
    (dict(noise_scale=-1.0), "noise_scale"),
    (dict(weight_noise_range=1.5), "weight_noise_range"),
    (dict(quantise=False), "quantised"),
    (dict(drift_t=(3600.0, 20.0)), "drift_t"),
    (dict(drift_t=-1.0), "drift_t"),
])
def test_bad_nonidealities_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Nonidealities(**kwargs)


def test_opencimtc_weight_noise_has_the_stated_spread():
    """w~ = q(w) + clamp(N(0,1), +-3) * 0.06 * (max w - min w), read out through identity inputs."""
    cfg = cimstack.preset("default")
    torch.manual_seed(0)
    m = torch.randn(64, 64)
    ni = Nonidealities.opencimtc(0.06)
    x = torch.eye(64)                                        # one row per weight row, exactly in_max
    s_w = m.abs().amax(0) / cfg.datapath.weight_max
    clean = analog_matmul(x, m, 1.0, cfg, Nonidealities(adc=False, programming="none", stuck=False,
                                                         read_noise=False, output_noise=False))
    draws = torch.stack([analog_matmul(x, m, 1.0, cfg, ni) for _ in range(20)])
    noise_int = (draws - clean) / s_w                         # back in integer weight units
    span = 2 * cfg.datapath.weight_max
    expected = 0.06 * span * 0.9866                          # std of a +-3-clamped standard normal
    assert abs(float(noise_int.std()) / expected - 1) < 0.03
    assert float(noise_int.abs().max()) <= 3 * 0.06 * span + 1e-3


def test_convert_keeps_parameters_and_refuses_grouped_convolutions():
    torch.manual_seed(0)
    net = models.DigitsCNN()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    convert(net, cimstack.preset("default"))
    assert isinstance(net.features[0], AnalogConv2d) and isinstance(net.fc, AnalogLinear)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="groups=2"):
        convert(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), cimstack.preset("default"))


# -- hardware-aware training ---------------------------------------------------------------------------

def test_stage_plan_switches_layers_on_input_side_first():
    assert stage_plan(3, 12) == [1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]
    assert stage_plan(2, 3, "all") == [2, 2, 2]
    with pytest.raises(ConfigError, match="schedule"):
        stage_plan(2, 3, "random")


def test_hwa_training_beats_naive_deployment_on_the_harsh_test_chip(flat, small_mlp):
    """The soc-test chip (8-row second layer, 1 LSB noise per conversion) takes the FP MLP far
    below its float accuracy; training through the chip model wins a good part back."""
    model, stats = small_mlp
    cfg = soc_test_config()
    naive = _emulator_accuracy(model, flat, cfg)
    hwa = copy.deepcopy(model)
    result = train_hwa(hwa, flat, cfg, epochs=20, lr=1e-2)
    assert result["stage_plan"][:5] == [1] * 5 and result["stage_plan"][-1] == 2
    trained = _emulator_accuracy(hwa, flat, cfg)
    assert stats["test_accuracy"] > 0.9 and naive < 0.7
    assert trained >= naive + 0.07, (naive, trained)


def test_noise_finetune_keeps_accuracy_and_switches_the_noise_off(flat):
    torch.manual_seed(0)
    model = models.DigitsMLP()
    models.train(model, flat, epochs=10, lr=1e-2)
    cfg = cimstack.preset("default")
    result = noise_finetune(model, flat, cfg, epochs=3)
    assert result["test_accuracy"] > 0.9
    assert all(m.nonidealities.weight_noise_range == 0 for _, m in analog_layers(model))
    with pytest.raises(ConfigError, match="frac"):
        noise_finetune(model, flat, cfg, frac=1.5)


# -- mixed-precision training ------------------------------------------------------------------------

def test_mixed_precision_tracks_float_and_needs_the_accumulator(flat):
    cfg = cimstack.preset("default")
    float_acc = MixedPrecisionMLP.float_baseline(flat, epochs=8, lr=0.1)[-1]
    mp = MixedPrecisionMLP(EmulatorBackend(cfg), lr=0.1)
    stats = mp.fit(flat, epochs=8)
    naive = MixedPrecisionMLP(EmulatorBackend(cfg), lr=0.1, accumulate=False).fit(flat, epochs=8)
    assert stats.test_accuracy[-1] >= float_acc - 0.03, (stats.test_accuracy, float_acc)
    assert naive.test_accuracy[-1] <= stats.test_accuracy[-1] - 0.1, (naive.test_accuracy, stats.test_accuracy)
    assert 0.2 < stats.pulses_per_weight_per_epoch < 5
    assert all(float(c.abs().max()) < mp.eps for c in mp.chi)     # the remainder stays below one pulse


def test_mixed_precision_refuses_what_it_cannot_hold():
    with pytest.raises(ConfigError, match="differential"):
        MixedPrecisionMLP(GoldenBackend(cimstack.preset("default").replace(mapping={"scheme": "offset", "weight_bits": 7})))
    with pytest.raises(ConfigError, match="does not fit"):
        MixedPrecisionMLP(GoldenBackend(cimstack.preset("default")), sizes=(100, 10))
    with pytest.raises(ConfigError, match="tiles"):
        MixedPrecisionMLP(GoldenBackend(cimstack.preset("default")), sizes=(8, 8, 8, 8, 8, 8))


# -- chip-in-the-loop --------------------------------------------------------------------------------

def test_chip_in_the_loop_learns_around_stuck_cells(flat):
    """1 % of cells stuck at each end cost the MLP a quarter of its accuracy; training with the
    chip's forward (weights re-programmed every step) learns around that chip's faults."""
    torch.manual_seed(0)
    model = models.DigitsMLP(hidden=16)
    fp = models.train(model, flat, epochs=20, lr=1e-2)["test_accuracy"]
    cfg = cimstack.preset("default").replace(name="faulty", device={"stuck_at_0_rate": 0.01, "stuck_at_gmax_rate": 0.01})
    dep = cimstack.compile(model, cfg, example=flat.x_train[:256])
    cil = ChipInTheLoop(model, dep, EmulatorBackend(cfg))
    before = cil.accuracy(flat.x_test, flat.y_test)
    result = cil.fit(flat, epochs=2, lr=1e-2, train_weights=True)
    assert fp > 0.93 and before < fp - 0.1
    assert result["test_accuracy"][-1] >= before + 0.1, (before, result)
    assert result["reprograms"] == result["steps"] + 1


def test_chip_in_the_loop_forward_is_the_deployment_and_mismatches_are_refused(flat, small_mlp):
    model, _ = small_mlp
    model = copy.deepcopy(model)
    cfg = soc_test_config()
    dep = cimstack.compile(model, cfg, example=flat.x_train[:256])
    golden = GoldenBackend(cfg)
    cil = ChipInTheLoop(model, dep, golden)
    y_ref = dep.run(flat.x_test[:50])
    dep.program(golden)                       # same seed, same chip state and noise stream
    with torch.no_grad():
        y_hooked = cil(flat.x_test[:50]).double()
    assert torch.allclose(y_hooked, y_ref, atol=1e-4 * float(y_ref.abs().max()))
    cil.close()
    other = models.DigitsMLP(hidden=16)
    with pytest.raises(CompileError, match="not compiled from this model"):
        ChipInTheLoop(other, dep, golden)
    with pytest.raises(ConfigError, match="nothing to train"):
        bare = nn.Sequential(nn.Linear(64, 10, bias=False))
        ChipInTheLoop(bare, cimstack.compile(bare, cfg, example=flat.x_train[:64]), golden).fit(flat)
