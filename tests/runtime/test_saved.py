"""Saved deployments (cimstack.runtime.saved): models of every IR family round-trip bit for bit, tuned settings
come back, damaged files are refused with their cause, and a writer killed half-way leaves
the previous file whole."""
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import cimstack
from cimstack.backends import GoldenBackend
from cimstack.errors import CompileError, ConfigError, PlacementError
from cimstack.runtime.saved import FORMAT, load_deployment
from cimstack.zoo import datasets, models


def _compiled(name: str, cfg=None):
    torch.manual_seed(0)
    model = models.build(name)
    split = datasets.digits(models.MODELS[name][1])
    return cimstack.compile(model, cfg or cimstack.preset("default"), example=split.x_train[:64]), split


@pytest.mark.parametrize("name", ["mlp", "cnn", "gru"])       # linear; conv, BN, pooling; recurrent
def test_models_round_trip_bit_for_bit(name, tmp_path):
    dep, split = _compiled(name)
    dep.save(tmp_path / "d.dep")
    back = load_deployment(tmp_path / "d.dep")
    assert back.cfg == dep.cfg and back.placement.report() == dep.placement.report()
    assert back.settings() == dep.settings()
    x = split.x_test[:8]
    outs = []
    for d in (dep, back):
        d.program(GoldenBackend(d.cfg))
        outs.append(d.run(x))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(back.reference(x), dep.reference(x))


def test_tuned_settings_are_kept(tmp_path):
    dep, _ = _compiled("mlp")
    s = dep.settings()
    name = next(iter(s.layers))
    changed = {name: type(s.layers[name])(3, -2, "unary", 0.7, 1)}
    dep.apply(type(s)(s.config_name, s.config_hash, changed))
    dep.save(tmp_path / "d.dep")
    got = load_deployment(tmp_path / "d.dep").settings().layers[name]
    assert (got.adc_gain, got.adc_offset, got.mode, got.x_range) == (3, -2, "unary", 0.7)


def _edit(path, out, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, out)
    return out


def test_damaged_files_are_refused_naming_the_cause(tmp_path):
    dep, _ = _compiled("mlp")
    good = tmp_path / "d.dep"
    dep.save(good)
    data = good.read_bytes()
    (tmp_path / "cut.dep").write_bytes(data[:len(data) // 2])
    (tmp_path / "junk.dep").write_bytes(b"junk" * 100)
    torch.save({"format": "cimstack-model/1"}, tmp_path / "other.dep")

    def bump_hash(s):
        s["config_hash"] ^= 1

    def big_code(s):
        s["layers"][0]["blocks"][0]["weights"]["__ndarray__"][0, 0] = 10_000

    def off_chip(s):
        s["layers"][0]["blocks"][0]["tile"] = 99

    def overlap(s):
        b0, b1 = s["layers"][0]["blocks"][0], s["layers"][1]["blocks"][0]
        b1["tile"], b1["row"], b1["col"] = b0["tile"], b0["row"], b0["col"]

    def no_layers(s):
        del s["layers"]

    cases = [
        (tmp_path / "missing.dep", ConfigError, "does not exist"),
        (tmp_path / "cut.dep", CompileError, "truncated or damaged"),
        (tmp_path / "junk.dep", CompileError, "truncated or damaged"),
        (tmp_path / "other.dep", CompileError, f"not a cimstack deployment .*expected '{FORMAT}'"),
        (_edit(good, tmp_path / "hash.dep", bump_hash), ConfigError, "saved as .*the file or the datapath changed"),
        (_edit(good, tmp_path / "code.dep", big_code), CompileError, r"weight codes .* outside -127\.\.127"),
        (_edit(good, tmp_path / "tile.dep", off_chip), PlacementError, "at tile 99, .* lies outside the chip"),
        (_edit(good, tmp_path / "overlap.dep", overlap), PlacementError, "overlaps another block"),
        (_edit(good, tmp_path / "nolayers.dep", no_layers), CompileError, "missing 'layers'"),
    ]
    for path, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            load_deployment(path)


WRITER = textwrap.dedent("""
    import os, sys, time
    import torch
    import cimstack
    from cimstack.zoo import datasets, models
    from cimstack import files

    torch.manual_seed(1)
    dep = cimstack.compile(models.build("mlp", 48), cimstack.preset("default"),
                           example=datasets.digits().x_train[:64])
    real_fdopen = os.fdopen

    class HalfThenHang:
        # writes half of what it is given, says so, then hangs: the parent kills it there
        def __init__(self, f):
            self.f = f
        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            print("half written", flush=True)
            time.sleep(120)
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    files.os.fdopen = lambda fd, mode: HalfThenHang(real_fdopen(fd, mode))
    dep.save(sys.argv[1])
""")


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    dep, split = _compiled("mlp")
    path = tmp_path / "d.dep"
    dep.save(path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = [p for p in tmp_path.iterdir() if p.name != "d.dep"]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(before)     # killed mid-write
    assert path.read_bytes() == before
    back = load_deployment(path)                       # the previous deployment, whole
    assert back.placement.report() == dep.placement.report()
    with pytest.raises(CompileError, match="truncated or damaged"):
        load_deployment(partial[0])
    np.testing.assert_array_equal(back.layers[0].w_scale, dep.layers[0].w_scale)
