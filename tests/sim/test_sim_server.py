"""The simulation server end to end: a 2-layer MLP programmed through the TCP link (one
layer loaded directly, one by the on-chip write-verify controller) and run on the simulated
SoC — layer by layer from the host, then as one sequencer program over a batch — bit for bit
against the golden model; link faults; the CLI's start and clean stop."""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import soc_test_config

import cimstack
from cimstack.backends import DeviceBackend, EmulatorBackend, GoldenBackend
from cimstack.chip.datapath import weights_to_codes
from cimstack.chip.enums import WriteVerifyStatus
from cimstack.chip.isa import assemble
from cimstack.errors import ConfigMismatchError, InputRangeError, LinkError
from cimstack.golden.soc import GoldenSoC
from cimstack.golden.writeverify import WriteVerifyJob
from cimstack.link.client import Device
from cimstack.link.transport import Link
from cimstack.sim.server import SimServer
from cimstack.zoo import datasets, models

# every test here talks to the Verilated SoC of the simulation server
pytestmark = pytest.mark.verilator


@pytest.fixture(scope="module")
def server():
    with SimServer(soc_test_config()) as srv:
        yield srv


def mlp_jobs(cfg, w2_padded) -> list[WriteVerifyJob]:
    """Write-verify jobs placing every cell of layer 2's codes mid-way into its code's range."""
    pos, neg = weights_to_codes(w2_padded, cfg)
    frac, lanes = cfg.cell.frac_bits, cfg.array.mac_lanes
    jobs = []
    for cell, codes in enumerate((pos, neg)):
        for r, u in zip(*np.nonzero(codes)):
            jobs.append(WriteVerifyJob(int(r), int(u) // lanes, int(u) % lanes, cell,
                                       target=int(codes[r, u]) << frac | 1 << (frac - 1), tol=(1 << (frac - 1)) - 1))
    return jobs


def test_mlp_through_the_socket_matches_golden(server):
    cfg = server.cfg
    a, dp = cfg.array, cfg.datapath
    rng = np.random.default_rng(7)
    w1 = rng.integers(dp.weight_min, dp.weight_max + 1, (a.rows, a.cols))          # 32 -> 16
    w2 = np.zeros((a.rows, a.cols), dtype=np.int64)
    w2[:16, :10] = rng.integers(dp.weight_min, dp.weight_max + 1, (16, 10))        # 16 -> 10
    model = GoldenSoC(cfg)
    model.tiles[0].program_weights(w1)
    model.tiles[0].set_post(bias=rng.integers(-40, 40, a.cols), scale=np.ones(a.cols, dtype=np.int64))
    model.tiles[0].relu = True
    model.tiles[1].set_post(bias=np.zeros(a.cols, dtype=np.int64), scale=np.full(a.cols, 2))
    jobs = mlp_jobs(cfg, w2)

    with Link(server.url, timeout=5.0) as link:
        dev = Device(link, cfg)
        dev.reseed(1234)
        model.reseed(1234)
        dev.load_tile(0, model.tiles[0])
        dev.load_tile(1, model.tiles[1])             # all cells at state 0: RESET before programming
        results = dev.write_verify(1, jobs, max_pulses=64, amp_start=1, amp_step=1)
        expected = model.write_verify(1, jobs, 64, 1, 1, cfg.device.pulse_max_amplitude)
        assert results == expected
        assert all(r.status == WriteVerifyStatus.CONVERGED for r in results), "healthy cells must converge"
        # verify reads are noisy (1 % of full scale), so a converged cell can still sit one
        # code off: nearly all units must be exact, none off by more than one code
        diff = model.tiles[1].effective_weights() - _slice_sum(cfg, w2)
        assert np.abs(diff).max() <= 1 and (diff == 0).mean() >= 0.98

        xs = rng.integers(-(1 << (cfg.input.bits - 1)), 1 << (cfg.input.bits - 1), (24, a.rows))
        out_chip, out_gold = [], []
        for x in xs:
            dev.write_act(0, x)
            model.act[:a.rows] = x
            dev.vmm(0, src=0, dst=64)
            dev.vmm(1, src=64, dst=128)
            model.vmm(0, 0, 64)
            model.vmm(1, 64, 128)
            out_chip.append(dev.read_act(128, 10))
            out_gold.append(model.act[128:138].copy())
        # the same network as one on-chip program over a batch: no host step per layer
        batch = xs[:8]
        program = [("FILL", dict(dst=264, n=48, value=0)),
                   ("COPY", dict(src=0, dst=200, n=a.rows, src_iter=1)),
                   ("VMM", dict(tile=0, count=1, src=200, dst=264)),
                   ("VMM", dict(tile=1, count=1, src=264, dst=320)),
                   ("COPY", dict(src=320, dst=400, n=10, dst_iter=1)),
                   ("LOOP", dict(target=1)), ("HALT", {})]
        dev.write_act(0, batch.ravel())
        model.act[:batch.size] = batch.ravel()
        dev.run_program(program, iters=len(batch), in_stride=a.rows, out_stride=10)
        model.run_program(assemble(program, cfg), iters=len(batch), in_stride=a.rows, out_stride=10)
        out_prog = dev.read_act(400, 10 * len(batch))
        assert dev.read("SEQ_EXECUTED") == 1 + 5 * len(batch) + 1
    np.testing.assert_array_equal(out_prog, model.act[400:400 + 10 * len(batch)])
    out_chip, out_gold = np.array(out_chip), np.array(out_gold)
    np.testing.assert_array_equal(out_chip, out_gold)
    assert len(np.unique(out_gold)) > 40                 # the outputs really vary


def _slice_sum(cfg, w):
    """The per-unit signed code differences programming ``w`` exactly would give."""
    pos, neg = weights_to_codes(w, cfg)
    return pos - neg


def test_link_faults_and_identity(server, tmp_path):
    cfg = server.cfg
    with Link(server.url, timeout=2.0) as link:
        other = cfg.replace(name="other", seed=99)
        with pytest.raises(ConfigMismatchError, match="hash"):
            Device(link, other)
        dev = Device(link, cfg)
        # a register stores its fields' bits only: the rest reads 0 (docs/protocol.md)
        dev.write("VMM_TILE", 0xFFFF_FFFF)
        dev.write("WV_AMP", 0xFFFF_FFFF)
        tile_bits = dev.map["VMM_TILE"].fields[0].width           # as many as the config's tiles need
        assert (dev.read("VMM_TILE"), dev.read("WV_AMP")) == ((1 << tile_bits) - 1, 0xFF_FFFF)
        dev.write("VMM_TILE", 0)
        with pytest.raises(InputRangeError, match="do not fit"):
            dev.vmm(0, src=cfg.soc.act_words - 3, dst=0)
        with pytest.raises(InputRangeError, match="amplitude"):
            dev.pulse_cell(0, 0, 0, 0, polarity=0, amplitude=0)
        assert link.echo(bytes(range(256))) == bytes(range(256))
    with pytest.raises(LinkError, match="cannot open"):
        Link("socket://127.0.0.1:1", timeout=0.5)


def test_device_that_stops_answering_raises():
    srv = SimServer(soc_test_config())
    link = Link(srv.url, timeout=0.5, retries=1)
    assert link.echo(b"x") == b"x"
    srv.stop()
    with pytest.raises(LinkError):            # LinkTimeout or a closed connection, never a hang
        link.read_regs(0)
    link.close()


def _children_named(name: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if name in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_cli_serve_prints_address_and_stops_cleanly(server, tmp_path):
    cfg = server.cfg
    cfg_file = tmp_path / "chip.toml"
    cfg.save(cfg_file)
    proc = subprocess.Popen([sys.executable, "-m", "cimstack.cli", "sim", "serve", "--config", str(cfg_file), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the server exited before printing its address"
            if "listening on" in line:
                url = line.rsplit("->", 1)[1].strip()
        assert url and url.startswith("socket://127.0.0.1:")
        with Link(url, timeout=5.0) as link:
            assert Device(link, cfg).read("SCRATCH") == 0
        harness = [p for p in _children_named("cim_server") if _parent(p) == proc.pid]
        assert len(harness) == 1, f"expected one C++ harness under the CLI, found {harness}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "stopped after" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    assert not Path(f"/proc/{harness[0]}").exists() or _zombie(harness[0]), "the C++ harness outlived the CLI"


def _zombie(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


# -- a compiled model on the simulated chip ---------------------------------------------------

@pytest.fixture(scope="module")
def small_mlp():
    """A digits MLP small enough for the 2 x (32x16) test chip: 64 -> 8 -> 10."""
    split = datasets.digits("flat")
    torch.manual_seed(0)
    model = models.DigitsMLP(hidden=8)
    stats = models.train(model, split, epochs=30, lr=1e-2)
    return model, split, stats


def test_deployment_on_the_chip_equals_golden_on_the_whole_test_split(server, small_mlp):
    model, split, stats = small_mlp
    cfg = soc_test_config()
    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    assert dep.placement.tiles_used == [0, 1]
    golden = GoldenBackend(cfg)
    gold_report = dep.program(golden)
    y_gold = dep.run(split.x_test)
    with DeviceBackend(server.url, cfg) as chip:
        chip_report = dep.program(chip)
        y_chip = dep.run(split.x_test)
    # on-chip write-verify reports exactly what the golden controller does, cell for cell
    assert [s.__dict__ | {"seconds": 0} for s in chip_report.layers] == \
           [s.__dict__ | {"seconds": 0} for s in gold_report.layers]
    assert torch.equal(y_chip, y_gold)                               # bit for bit, 360 digits
    # the test chip adds 1 LSB of noise to every conversion, which swamps the 8-row second
    # layer (the default chip keeps the MLP within 1 point of floating point: make demo)
    acc_chip = float((y_chip.argmax(1) == split.y_test).double().mean())
    dep.program(EmulatorBackend(cfg, mode="datapath"))
    acc_emu = dep.accuracy(split.x_test, split.y_test)
    assert acc_chip >= 0.35 and stats["test_accuracy"] > 0.9, (acc_chip, stats)
    assert abs(acc_emu - acc_chip) < 0.1


def test_host_driven_write_verify_equals_the_on_chip_controller(server):
    cfg = soc_test_config()
    torch.manual_seed(3)
    model = torch.nn.Linear(4, 3)
    dep = cimstack.compile(model, cfg, example=torch.randn(16, 4))
    x = torch.randn(10, 4)
    with DeviceBackend(server.url, cfg, write_verify="host") as chip:
        host_report = dep.program(chip)
        y_host = dep.run(x)
    gold_report = dep.program(GoldenBackend(cfg))
    assert [(s.cells, s.pulses, s.converged, s.rms_error) for s in host_report.layers] == \
           [(s.cells, s.pulses, s.converged, s.rms_error) for s in gold_report.layers]
    assert torch.equal(y_host, dep.run(x))


# narrow variants of the reference models that fit the 2 x (32x16) test chip
_SMALL = {"cnn": dict(channels=(4, 8)), "gru": dict(hidden=8), "lstm": dict(hidden=8), "resnet": dict(width=4)}
_SAMPLES = {"cnn": 12, "gru": 24, "lstm": 24, "resnet": 4}


@pytest.mark.parametrize("name", list(_SMALL))
def test_every_model_runs_on_the_chip_bit_for_bit_with_golden(server, name):
    """Conv (im2col), recurrent (one VMM per step) and residual models through the socket."""
    cls, shape = models.MODELS[name]
    split = datasets.digits(shape)
    torch.manual_seed(0)
    model = cls(**_SMALL[name])
    models.train(model, split, epochs=3, lr=2e-2)
    cfg = soc_test_config()
    dep = cimstack.compile(model, cfg, example=split.x_train[:128])
    x = split.x_test[:_SAMPLES[name]]
    dep.program(GoldenBackend(cfg))
    y_gold = dep.run(x)
    with DeviceBackend(server.url, cfg) as chip:
        dep.program(chip)
        y_chip = dep.run(x)
    assert torch.equal(y_chip, y_gold)


# -- training through the simulated chip ---------------------------------------------------------

def test_mixed_precision_training_on_the_chip_equals_golden(server):
    """Forward VMMs, chi-driven SET pulses and refreshes through the link: the simulated SoC
    ends a few training steps in exactly the state the golden model does."""
    from cimstack.training import MixedPrecisionMLP
    cfg = soc_test_config()
    split = datasets.digits("flat")
    # the top half of each digit (32 pixels) fits the test chip's 32 rows
    sub = datasets.Split(split.x_train[:48, :32], split.y_train[:48], split.x_test[:40, :32], split.y_test[:40], "top")
    runs = {}
    for name, be in (("golden", GoldenBackend(cfg)), ("chip", DeviceBackend(server.url, cfg))):
        with be:
            mp = MixedPrecisionMLP(be, sizes=(32, 8, 10), lr=0.5, batch_size=16, w_max=1.0)
            stats = mp.fit(sub, epochs=1)
            runs[name] = ([s.clone() for s in mp.states], [c.clone() for c in mp.chi], stats)
    (s_g, c_g, st_g), (s_c, c_c, st_c) = runs["golden"], runs["chip"]
    assert st_g.update_pulses > 0 and st_c.update_pulses == st_g.update_pulses
    assert st_c.test_accuracy == st_g.test_accuracy
    assert all(torch.equal(a, b) for a, b in zip(s_g, s_c))
    assert all(torch.equal(a, b) for a, b in zip(c_g, c_c))


def test_chip_in_the_loop_on_the_chip_equals_golden(server, small_mlp):
    """Chip-in-the-loop steps with the forward on the simulated SoC: the same updates as with
    the golden model, because the chip's outputs are the golden ones bit for bit."""
    from cimstack.training import ChipInTheLoop
    model, split, _ = small_mlp
    cfg = soc_test_config()
    sub = datasets.Split(split.x_train[:64], split.y_train[:64], split.x_test[:30], split.y_test[:30], "flat")
    results, params = {}, {}
    for name, be in (("golden", GoldenBackend(cfg)), ("chip", DeviceBackend(server.url, cfg))):
        m = copy.deepcopy(model)
        with be:
            dep = cimstack.compile(m, cfg, example=split.x_train[:256])
            cil = ChipInTheLoop(m, dep, be)
            results[name] = cil.fit(sub, epochs=1, lr=1e-2, batch_size=32)
            params[name] = [p.detach().clone() for p in m.parameters()]
    assert results["chip"]["test_accuracy"] == results["golden"]["test_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(params["chip"], params["golden"]))
    assert not torch.equal(params["chip"][1], small_mlp[0].fc1.bias.detach())     # the biases moved


# -- tuning refined on the simulated chip -----------------------------------------------------------

def test_tuning_refined_on_the_chip_writes_its_registers_and_equals_golden(server, small_mlp):
    """Stage 1 on the emulator, stage 2 on the simulated SoC: the refinement never makes a
    layer's figure of merit worse on the chip; the runtime writes every layer's tuned ADC
    registers into its tile (read back over the link), and the tuned model on the chip equals
    the golden model bit for bit."""
    from cimstack.tuning import Tuner
    model, split, _ = small_mlp
    cfg = soc_test_config()
    x = split.x_test[:40]
    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    tuner = Tuner(dep, split.x_train[:64], max_rows=32, copies=(1,),
                  backend_factory=lambda: EmulatorBackend(cfg, mode="datapath"))
    stage1 = tuner.tune("coordinate", sweeps=1)
    assert all(r.after.nmse < r.before.nmse for r in stage1.layers)
    tuned = cimstack.compile(model, cfg, example=split.x_train[:256], settings=stage1.settings)
    with DeviceBackend(server.url, cfg) as chip:
        tuned.program(chip)
        stage2 = tuner.refine(tuned, chip, radius=1, sweeps=1)
        assert all(r.after.fom <= r.before.fom for r in stage2.layers)
        assert tuned.settings().layers == stage2.settings.layers
        chip.reseed_noise(7)
        y_chip = tuned.run(x)
        last = tuned.layers[-1]
        tile = last.blocks[0].tile
        assert chip.dev.read(f"TILE{tile}_ADC_GAIN") == last.adc_gain
        assert chip.dev.read(f"TILE{tile}_ADC_OFFSET") == last.adc_offset & ((1 << cfg.adc.bits) - 1)
    gains = {layer.adc_gain for layer in tuned.layers}
    assert gains != {cfg.adc.gain}                    # tuning moved the registers off the preset
    golden = GoldenBackend(cfg)
    tuned.program(golden)
    golden.reseed_noise(7)
    assert torch.equal(tuned.run(x), y_chip)


# -- the serial path: a real tty device, as a board's USB-serial port --------------------------

def test_deployment_through_a_tty_equals_golden_and_checks_the_config_hash(server, small_mlp):
    """pyserial opens a pseudo-terminal (termios, baud rate, timeouts: the path a board's
    /dev/ttyUSB takes) bridged to the simulated SoC; the MLP runs bit for bit with golden."""
    from cimstack.sim.pty import PtyBridge

    model, split, _ = small_mlp
    cfg = soc_test_config()
    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    dep.program(GoldenBackend(cfg))
    y_gold = dep.run(split.x_test[:120])
    with PtyBridge(server.url) as tty:
        fd = os.open(tty.path, os.O_RDWR | os.O_NOCTTY)
        assert tty.path.startswith("/dev/") and os.isatty(fd)
        os.close(fd)
        with pytest.raises(ConfigMismatchError, match=r"hash 0x[0-9a-f]{8}, the host uses 'other'"):
            DeviceBackend(tty.path, cfg.replace(name="other"), baudrate=cfg.clock.uart_baud)
        with DeviceBackend(tty.path, cfg, baudrate=cfg.clock.uart_baud) as chip:
            assert os.isatty(chip.dev.link.port.fd)
            dep.program(chip)
            y_chip = dep.run(split.x_test[:120])
        assert tty.bytes_to_device > 10_000 and tty.bytes_from_device > 1_000
    assert torch.equal(y_chip, y_gold)
    with pytest.raises(LinkError, match="cannot reach"):
        PtyBridge("socket://127.0.0.1:1")
