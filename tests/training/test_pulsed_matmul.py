"""The fused analog block of hardware-aware training (PulsedAdcMatmul) against the chain it
replaces, step by step with the converters' straight-through estimators: same forward
values, same gradients, with and without saturated conversions and I-V nonlinearity."""
import pytest
import torch

from cimstack.chip.config import preset
from cimstack.chip.datapath import pulse_weights, slice_weights
from cimstack.physics.converters import Adc, Dac
from cimstack.physics.devices import device_model
from cimstack.training.analog import PulsedAdcMatmul

CONFIGS = {
    "default": lambda: preset("default"),
    "saturating": lambda: preset("default").replace(name="sat", adc=dict(bits=5, gain=64)),
    "nonlinear": lambda: preset("default").replace(name="iv", adc=dict(bits=6, gain=32), device=dict(iv_a3=0.1, iv_a2=0.9)),
    "amplitude": lambda: preset("opencimtc-576x128"),
    "unary-offset": lambda: preset("default").replace(name="uo", mapping=dict(scheme="offset"),
                                                      input=dict(mode="unary", bits=4),
                                                      array=dict(cols=48, mac_lanes=12, adc_share=4)),
}


def chain(xq, u, cfg):
    """The step-by-step reference: STE digits, per-pulse sums, STE ADC, shift-add."""
    dac, adc, dev = Dac(cfg), Adc(cfg), device_model(cfg)
    digits = dev.iv(dac.digits(xq))
    s = digits @ u
    codes = adc(s) - adc.offset
    pw = torch.as_tensor(pulse_weights(cfg), dtype=u.dtype)
    sw = torch.as_tensor(slice_weights(cfg), dtype=u.dtype)
    return torch.einsum("pbus,p,s->bu", codes.reshape(*codes.shape[:2], -1, cfg.datapath.slices), pw, sw)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("inputs", ["signed", "non-negative", "small non-negative"])
def test_fused_block_equals_the_chain(name, inputs):
    cfg = CONFIGS[name]()
    md, dp = cfg.datapath.mode(), cfg.datapath
    gen = torch.Generator().manual_seed(1)
    rows, cols = 40, 6
    x0 = torch.randint(md.in_min, md.in_max + 1, (33, rows), generator=gen).double()
    if inputs == "non-negative":           # as after a ReLU
        x0 = x0.abs().clamp(max=md.in_max)
    elif inputs == "small non-negative":   # mostly small: the top pulses drive nothing
        x0 = x0.abs() // 4
    u0 = torch.randint(-dp.code_max, dp.code_max + 1, (rows, cols * dp.slices), generator=gen).double()
    u0 += 0.3 * torch.randn(u0.shape, generator=gen, dtype=torch.float64)
    ref_x, ref_u = x0.clone().requires_grad_(), u0.clone().requires_grad_()
    x, u = x0.clone().requires_grad_(), u0.clone().requires_grad_()
    want = chain(ref_x, ref_u, cfg)
    d = cfg.device
    iv = None if (d.iv_a1, d.iv_a2, d.iv_a3) == (0.0, 1.0, 0.0) else device_model(cfg).iv
    got = PulsedAdcMatmul.apply(x, u, cfg, 0.0, iv)
    assert torch.equal(got, want)
    gy = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want.backward(gy)
    got.backward(gy)
    assert torch.allclose(x.grad, ref_x.grad, rtol=1e-9, atol=1e-9)
    assert torch.allclose(u.grad, ref_u.grad, rtol=1e-9, atol=1e-9)
    if name == "saturating":              # the case the corrections are for did happen
        adc = Adc(cfg)
        raw = torch.floor(Dac(cfg).digits(x0) @ u0 * adc.scale + 0.5) + adc.offset
        assert ((raw < adc.code_min) | (raw > adc.code_max)).any()


def test_training_cells_spread_like_write_verify_on_pcm():
    """HWA training's write-verify cells carry the relaxation the emulator's write-verify adds:
    on pcm-joshi2020 a pair (level L, level 0) spreads by the published sigma_prog of both."""
    from cimstack.physics.devices import level_step_us
    from cimstack.training.analog import Nonidealities, _unit_values

    cfg = preset("pcm-joshi2020")
    dev, step = device_model(cfg), level_step_us(cfg)
    ni = Nonidealities(stuck=False, read_noise=False, output_noise=False, drift_compensation=False)
    torch.manual_seed(0)
    for level in (1, 8, 15):
        pos = torch.full((20000, 1, cfg.datapath.slices), float(level))
        u = _unit_values(pos, torch.zeros_like(pos), cfg, ni, dev)
        sigma = dev.programming_sigma(cfg.device.g_min_us + torch.tensor([level + 0.5, 0.5]) * step)
        want = float(torch.sqrt((sigma ** 2).sum()))
        assert abs(float((u * step).std()) / want - 1) < 0.08, level


def test_empty_batch():
    cfg = preset("default")
    u = torch.randn(10, 4 * cfg.datapath.slices, requires_grad=True)
    x = torch.zeros((0, 10), requires_grad=True)
    y = PulsedAdcMatmul.apply(x, u, cfg, 0.5, None)
    assert y.shape == (0, 4)
    y.sum().backward()
    assert u.grad is not None and not u.grad.any()


@pytest.mark.parametrize("name,ni", [
    ("default", dict()),
    ("stuck", dict()),
    ("pcm-drift", dict(drift_t=(20.0, 3.15e7))),
    ("pcm-drift", dict(drift_t=86400.0, drift_compensation=False, programming="open_loop")),
    ("offset", dict(noise_scale=2.0)),
])
def test_cell_units_equal_the_chain(name, ni):
    """CellUnits (one node, closed-form gradient) against _cells + _unit_values step by step:
    the same draws for the same seed, the same gradient."""
    from cimstack.training.analog import CellUnits, Nonidealities, _cells, _unit_values

    cfg = {"default": lambda: preset("default"),
           "stuck": lambda: preset("default").replace(name="stuck", device=dict(stuck_at_0_rate=0.05,
                                                                                stuck_at_gmax_rate=0.05)),
           "pcm-drift": lambda: preset("pcm-joshi2020"),
           "offset": lambda: CONFIGS["unary-offset"]()}[name]()
    nonideal = Nonidealities(**ni)
    dev, dp = device_model(cfg), cfg.datapath
    gen = torch.Generator().manual_seed(4)
    w0 = torch.randint(dp.weight_min, dp.weight_max + 1, (30, 7), generator=gen).double()
    gu = torch.randn((30, 7, dp.slices), generator=gen, dtype=torch.float64)
    w_ref, w = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    torch.manual_seed(5)
    want = _unit_values(*_cells(w_ref, cfg), cfg, nonideal, dev)
    torch.manual_seed(5)
    got = CellUnits.apply(w, cfg, nonideal, dev)
    assert torch.equal(got, want)
    want.backward(gu)
    got.backward(gu)
    assert torch.allclose(w.grad, w_ref.grad, rtol=1e-12, atol=1e-12)
