"""What several test modules share: the repository's path, the SoC test chip, random tiles and
inputs. Import it as ``import helpers`` / ``from helpers import ...`` (pytest puts tests/ on the
path); fixtures stay in conftest.py."""
from pathlib import Path

import numpy as np

from cimstack.chip.config import ChipConfig, preset
from cimstack.chip.enums import Stuck
from cimstack.golden.tile import GoldenTile

REPO = Path(__file__).resolve().parent.parent

# The SoC configuration the cocotb SoC benches and the simulation-server tests build:
# two 32x16 tiles, 6-bit bit-serial inputs, 6-bit differential weights in two 3-bit slices,
# verify reads with 2 % read noise.
SOC_TEST_CONFIG = dict(
    name="soc-test",
    array=dict(tiles=2, rows=32, cols=16, mac_lanes=8, adc_share=2),
    cell=dict(cell_bits=3, frac_bits=3), mapping=dict(weight_bits=6, scheme="differential"),
    input=dict(bits=6, mode="bit_serial", dac_bits=1),
    adc=dict(bits=8, gain=8, gain_shift=3), post=dict(out_bits=16, shift=1),
    device=dict(output_noise_lsb=1.0, read_noise_sigma=0.01, pulse_c2c_sigma=0.2, pulse_step_lsb=2.0),
    soc=dict(act_words=512, wv_jobs=128, max_payload=256),
)


def soc_test_config() -> ChipConfig:
    return preset("default").replace(**SOC_TEST_CONFIG)


def random_tile(cfg: ChipConfig, rng: np.random.Generator, stuck_rate: float = 0.02, tile: int = 0) -> GoldenTile:
    """A golden tile with random weights, fractional states, stuck cells, post parameters and
    run-time registers."""
    dp, a, p = cfg.datapath, cfg.array, cfg.post
    tile = GoldenTile(cfg, tile)
    tile.program_weights(rng.integers(dp.weight_min, dp.weight_max + 1, (a.rows, a.cols)))
    frac = rng.integers(0, 1 << cfg.cell.frac_bits, tile.state.shape)
    stuck = rng.choice([0, Stuck.AT_0, Stuck.AT_MAX], tile.state.shape,
                       p=[1 - stuck_rate, stuck_rate / 2, stuck_rate / 2])
    tile.set_state(tile.state + frac, stuck)
    # near-nominal registers so outputs spread over the range (the register test goes wild)
    tile.set_post(bias=rng.integers(-(1 << (p.bias_bits - 4)), 1 << (p.bias_bits - 4), a.cols),
                  scale=rng.integers(0, min(1 << p.scale_bits, 2 << p.shift), a.cols))
    tile.adc_gain = int(rng.integers(max(1, cfg.adc.gain // 2), 2 * cfg.adc.gain + 1))
    tile.adc_offset = int(rng.integers(dp.adc_min // 4, dp.adc_max // 4 + 1))
    tile.relu = bool(rng.integers(0, 2))
    return tile


def random_inputs(cfg: ChipConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    bits = cfg.input.bits
    lo = -(1 << (bits - 1)) + (1 if cfg.input.mode == "unary" else 0)
    hi = (1 << (bits - 1)) - 1
    x = rng.integers(lo, hi + 1, (n, cfg.array.rows))
    x[0], x[1] = lo, hi                       # the extremes: most negative top digit, saturation
    return x
