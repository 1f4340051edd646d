"""The emulator's write-verify, the ISPP loop run on all cells at once, against the on-chip
controller's algorithm run cell by cell; and how programming splits its work into calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cimstack
from cimstack.backends import CellJobs, EmulatorBackend, GoldenBackend, WriteVerifyParams
from cimstack.chip.enums import Stuck, WriteVerifyStatus
from cimstack.errors import InputRangeError
from cimstack.golden.writeverify import WriteVerifyJob, ispp

# no cycle-to-cycle pulse noise and no verify-read noise: the loop is deterministic
QUIET = cimstack.preset("default").replace(
    device=dict(pulse_c2c_sigma=0.0, read_noise_sigma=0.0, stuck_at_0_rate=0.02, stuck_at_gmax_rate=0.02))


def _reference(model, state0: float, stuck: int, job: WriteVerifyJob, params: WriteVerifyParams):
    """:func:`ispp` on one cell whose read is its state (forced by its stuck flag) and whose
    pulse is the device model's noise-free pulse: (status, pulses, last read, final state)."""
    full = float((1 << QUIET.datapath.state_bits) - 1)
    s = torch.tensor([state0], dtype=torch.float64)
    sk = torch.tensor([stuck])
    reads = []

    def read(_job):
        r = 0.0 if stuck == Stuck.AT_0 else full if stuck == Stuck.AT_MAX else float(s[0])
        reads.append(r)
        return r

    def pulse(_job, polarity, amplitude):
        nonlocal s
        s = model.pulse(s, int(polarity), amplitude, torch.Generator(), stuck=sk, noise=False)

    (res,) = ispp([job], read, pulse, params.max_pulses, params.amp_start, params.amp_step, params.amp_max)
    return res.status, res.pulses, reads[-1], float(s[0])


@pytest.mark.parametrize("params", [WriteVerifyParams(), WriteVerifyParams(max_pulses=9, amp_start=2, amp_step=2, amp_max=5)],
                         ids=["default", "short-budget"])
def test_emulator_write_verify_is_the_ispp_loop_cell_by_cell(params):
    """Every cell's status, pulse count, final error and final state equal those of the
    controller's algorithm run on that cell alone: the schedule of polarities and amplitudes,
    the pulse budget, and STUCK against FAILED; cells in tolerance from the start take no pulse."""
    params = params.resolved(QUIET)
    be = EmulatorBackend(QUIET, dtype=torch.float64)
    be.erase([0], seed=5)
    emu = be.tiles[0]
    rng = np.random.default_rng(1)
    full = (1 << QUIET.datapath.state_bits) - 1
    start = torch.as_tensor(rng.uniform(0, full, size=tuple(emu.state.shape)))
    emu.set_state(start, emu.stuck)                   # cells start anywhere: SET and RESET runs
    n = 800
    flat = rng.choice(emu.state.numel(), n, replace=False)
    r, u, c = np.unravel_index(flat, tuple(emu.state.shape))
    target, tol = rng.integers(0, full + 1, n), rng.integers(0, 9, n)
    stuck = emu.stuck[r, u, c].numpy()
    assert (stuck != Stuck.NONE).sum() > 10
    status, pulses, error = be.write_verify(0, CellJobs(r, u, c, target, tol), params)
    final = emu.state[r, u, c].numpy()
    want = [_reference(emu.devices, float(start[r[i], u[i], c[i]]), int(stuck[i]),
                       WriteVerifyJob(0, 0, 0, 0, int(target[i]), int(tol[i])), params) for i in range(n)]
    np.testing.assert_array_equal(status, [w[0] for w in want])
    np.testing.assert_array_equal(pulses, [w[1] for w in want])
    np.testing.assert_array_equal(error, np.round(np.array([w[2] for w in want]) - target).astype(np.int64))
    np.testing.assert_array_equal(final, [w[3] for w in want])
    kinds = set(status.tolist())
    assert WriteVerifyStatus.CONVERGED in kinds and WriteVerifyStatus.STUCK in kinds
    assert (pulses == 0).any() and pulses.max() == params.max_pulses
    if params.max_pulses < 20:
        assert WriteVerifyStatus.FAILED in kinds
    untouched = np.ones(emu.state.numel(), dtype=bool)
    untouched[flat] = False
    torch.testing.assert_close(emu.state.reshape(-1)[torch.as_tensor(untouched)], start.reshape(-1)[torch.as_tensor(untouched)],
                               rtol=0, atol=0)


def test_emulator_write_verify_refuses_amplitudes_the_chip_cannot_pulse():
    be = EmulatorBackend(QUIET)
    jobs = CellJobs([0], [0], [0], [8], [7])
    for bad in (WriteVerifyParams(amp_start=0), WriteVerifyParams(amp_max=QUIET.device.pulse_max_amplitude + 1)):
        with pytest.raises(InputRangeError, match="amplitude"):
            be.write_verify(0, jobs, bad)
    outside = CellJobs([0], [QUIET.datapath.units], [0], [8], [7])
    with pytest.raises(InputRangeError, match="outside the tile") as emulator_error:
        be.write_verify(0, outside, WriteVerifyParams())
    with pytest.raises(InputRangeError) as golden_error:        # the golden model's check, word for word
        GoldenBackend(QUIET).write_verify(0, outside, WriteVerifyParams())
    assert str(emulator_error.value) == str(golden_error.value)
    status, pulses, error = be.write_verify(0, CellJobs([], [], [], [], []))
    assert status.shape == pulses.shape == error.shape == (0,)


class _Counting:
    """Counts a backend's write-verify calls and the cells in each."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []
        inner = backend.write_verify

        def write_verify(tile, jobs, *params):
            self.calls.append((tile, len(jobs)))
            return inner(tile, jobs, *params)
        backend.write_verify = write_verify


def test_programming_takes_a_tile_per_call_on_the_emulator_and_a_layer_per_call_on_the_chip():
    """The emulator's loop runs once per tile; a bit-exact backend keeps the chip's order, one
    call per layer and tile. The reports count the same cells per layer either way."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(), torch.nn.Linear(30, 20),
                                torch.nn.ReLU(), torch.nn.Linear(20, 10))
    cfg = cimstack.preset("default")
    dep = cimstack.compile(model, cfg, example=torch.randn(64, 40), strategy="skyline")
    tiles = {b.tile for layer in dep.layers for b in layer.blocks}
    pairs = sum(len({b.tile for b in layer.blocks}) for layer in dep.layers)
    assert len(tiles) < pairs                      # layers share a tile
    emu, gold = _Counting(EmulatorBackend(cfg)), _Counting(GoldenBackend(cfg))
    rep_emu, rep_gold = dep.program(emu.backend), dep.program(gold.backend)
    assert sorted(t for t, _ in emu.calls) == sorted(tiles) and len(gold.calls) == pairs
    assert sum(n for _, n in emu.calls) == sum(n for _, n in gold.calls) == rep_emu.cells
    assert [(s.layer, s.cells) for s in rep_emu.layers] == [(s.layer, s.cells) for s in rep_gold.layers]
    for name in rep_gold.targets:
        np.testing.assert_array_equal(rep_emu.targets[name], rep_gold.targets[name])
    assert sum(s.seconds for s in rep_emu.layers) <= rep_emu.seconds
