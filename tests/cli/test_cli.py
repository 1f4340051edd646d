"""The ``cimstack`` command end to end, as a user runs it: subprocesses, exit codes, the
messages of bad input, the files and reports each step writes, and the simulated SoC
giving the golden model's outputs bit for bit through the command line."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, SOC_TEST_CONFIG, soc_test_config

import cimstack
from cimstack.cli import cli, main
from cimstack.compiler.placer import STRATEGIES
from cimstack.zoo import datasets

COMMANDS = ["config", "train", "compile", "place", "program", "run", "eval", "tune", "gen", "sim", "boards",
            "bitstream", "flash", "bench"]


def cimstack_cli(*args, check: int | None = 0, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cimstack ARGS`` in a fresh interpreter from the repository root (where the suite's
    simulation-server builds are), without a terminal: no progress bars."""
    proc = subprocess.run([sys.executable, "-m", "cimstack.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if check is not None:
        assert proc.returncode == check, f"cimstack {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def as_json(proc) -> dict:
    return json.loads(proc.stdout)


def soc_test_toml(path: Path) -> Path:
    """The suite's SoC test config, written with ``cimstack config new`` from its settings."""
    sets = [f"{section}.{k}={json.dumps(v)}" for section, fields in SOC_TEST_CONFIG.items() if isinstance(fields, dict)
            for k, v in fields.items()]
    args = ["config", "new", "default", "-o", path, "--name", SOC_TEST_CONFIG["name"], "--json"]
    for s in sets:
        args += ["--set", s]
    out = as_json(cimstack_cli(*args))
    assert cimstack.load(path) == soc_test_config() and out["name"] == "soc-test"
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A small digits MLP (8 hidden units: it fits the two 32x16 tiles of the SoC test chip)
    trained by the command line, the SoC test config as TOML, and a batch of test inputs."""
    d = tmp_path_factory.mktemp("cli")
    out = as_json(cimstack_cli("train", "--width", "8", "--epochs", "10", "-o", d / "mlp8.pt", "--json"))
    assert out["float"]["test_accuracy"] > 0.8 and Path(out["checkpoint"]).is_file()
    x = datasets.digits("flat").x_test[:12].numpy()
    np.save(d / "x.npy", x)
    config = soc_test_toml(d / "soc-test.toml")
    # the golden model's outputs, what every run on the simulated SoC must equal
    cimstack_cli("run", d / "mlp8.pt", "-c", config, "-b", "golden", "--input", d / "x.npy", "-o", d / "golden.npy")
    return {"dir": d, "model": d / "mlp8.pt", "config": config, "x": x, "golden": np.load(d / "golden.npy")}


def test_help_lists_the_flow_with_examples_and_exit_codes():
    out = cimstack_cli("--help").stdout
    listed = re.findall(r"^  (\w+)\s", out.split("Commands:")[1], re.M)
    assert listed[:len(COMMANDS)] == COMMANDS
    assert "Exit codes:" in out and "3  the hardware side failed" in out
    for name in COMMANDS:
        command = cli.commands[name]
        assert command.help, f"{name} has no help"
        if name not in ("config", "sim", "boards", "bench"):
            assert "Examples:" in (command.epilog or ""), f"cimstack {name} --help shows no examples"
    assert "Examples:" in cimstack_cli("eval", "--help").stdout
    benches = cimstack_cli("bench", "--list").stdout
    assert {line.split()[0] for line in benches.splitlines()} == {p.stem[6:] for p in (REPO / "benchmarks").glob("bench_*.py")}
    assert as_json(cimstack_cli("boards", "--json"))["boards"][0]["name"] == "icebreaker"


def test_strategy_help_offers_exactly_the_placers_strategies():
    """Every command that places offers the placer's strategies, and only those."""
    options = {name: p for name, c in cli.commands.items() for p in c.params if p.name == "strategy"}
    assert {"compile", "place", "program", "run", "eval"} <= set(options)
    for name, option in options.items():
        offered = re.findall(r"\w+", option.help.split(":", 1)[1].replace(" or ", ", "))
        assert offered == list(STRATEGIES), f"cimstack {name} --strategy offers {offered}"


def test_config_commands(tmp_path):
    presets = as_json(cimstack_cli("config", "list", "--json"))["presets"]
    assert [p["name"] for p in presets] == list(cimstack.PRESETS)
    shown = as_json(cimstack_cli("config", "show", "ice40-tiny", "--json"))
    assert shown["config"] == cimstack.preset("ice40-tiny").to_dict()
    assert shown["derived"]["config_hash"] == f"{cimstack.preset('ice40-tiny').datapath.config_hash:08x}"
    path = tmp_path / "two.toml"
    cimstack_cli("config", "new", "default", "-o", path, "--set", "array.tiles=2", "--set", "device.model=pcm")
    cfg = cimstack.load(path)
    assert (cfg.name, cfg.array.tiles, cfg.device.model) == ("two", 2, "pcm")
    assert "valid (two" in cimstack_cli("config", "validate", path).stdout
    # the reference printed is the generated docs/config.md
    assert cimstack_cli("config", "reference").stdout == (REPO / "docs" / "config.md").read_text() + "\n"


@pytest.mark.verilator
def test_run_on_the_simulated_soc_equals_the_golden_model(work, tmp_path):
    chip = tmp_path / "chip.npy"
    out = as_json(cimstack_cli("run", work["model"], "-c", work["config"], "-b", "sim", "--input", work["dir"] / "x.npy",
                               "-o", chip, "--json"))
    assert out["samples"] == len(work["x"])
    assert np.array_equal(np.load(chip), work["golden"])


@pytest.mark.verilator
def test_program_then_run_on_a_served_chip(work, tmp_path):
    """`cimstack sim serve` in one process; `program --save` and then `run DEPLOYMENT --no-program`
    against it from two others, as with a board: the chip keeps its cells between commands."""
    serve = subprocess.Popen([sys.executable, "-m", "cimstack.cli", "sim", "serve", "-c", str(work["config"])],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = None, time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            line = serve.stdout.readline()
            assert line, "the server exited before printing its address"
            if "->" in line:
                url = line.rsplit("->", 1)[1].strip()
        cimstack_cli("program", work["model"], "-c", work["config"], "-b", url, "--report", tmp_path / "p",
                     "--save", tmp_path / "mlp8.dep")
        # the saved deployment brings its config, placement and settings: no model, no --config
        cimstack_cli("run", tmp_path / "mlp8.dep", "-b", url, "--no-program", "--input",
                     work["dir"] / "x.npy", "-o", tmp_path / "chip.npy")
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(30)
    assert np.array_equal(np.load(tmp_path / "chip.npy"), work["golden"])


def test_bad_input_gets_a_clear_message_and_exit_code(work, tmp_path, monkeypatch, capsys):
    """One table: what the user got wrong, the exit code, and the words the message must have."""
    m, c = work["model"], work["config"]
    (tmp_path / "broken.toml").write_text("[array\ntiles = 2\n")
    (tmp_path / "range.toml").write_text("[array]\ntiles = 0\n")
    (tmp_path / "unknown.toml").write_text("[array]\ntile = 2\n")
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01garbage")
    (tmp_path / "garbage.dep").write_bytes(b"PK\x03\x04 cut short")
    np.save(tmp_path / "wide.npy", np.zeros((3, 65)))
    np.save(tmp_path / "nan.npy", np.full((3, 64), np.nan))
    (tmp_path / "exists.toml").write_text("")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "data.npz").write_bytes(b"PK not really")
    cases = [
        (["compile", tmp_path / "missing.pt"], 2, r"model file .*missing\.pt does not exist"),
        (["compile", m, "-c", "nosuch"], 2, r"nosuch is neither a preset \(default, .*\) nor a readable file"),
        (["compile", m, "-c", tmp_path / "broken.toml"], 2, r"broken\.toml: not valid TOML"),
        (["config", "validate", tmp_path / "range.toml"], 2, r"array\.tiles = 0 is out of range: allowed 1\.\.48"),
        (["config", "validate", tmp_path / "unknown.toml"], 2, r"unknown key\(s\) tile in \[array\]"),
        (["compile", tmp_path / "garbage.pt", "-c", c], 2, r"garbage\.pt: not a cimstack checkpoint or ONNX file"),
        (["compile", tmp_path / "garbage.onnx", "--dataset", "digits-flat"], 2, r"garbage\.onnx: not a readable ONNX model"),
        (["compile", m, "-c", "ice40-tiny"], 2, r"does not fit: .* needs \d+ arrays of 16x16, the chip has 1"),
        (["compile", m, "--dataset", "digits-image", "-c", c], 2, r"running .* on the example inputs of shape \(256, 1, 8, 8\) failed"),
        (["compile", m, "--dataset", "nosuch"], 2, r"unknown data set 'nosuch'"),
        (["run", m, "-c", c, "-b", "golden", "--input", tmp_path / "wide.npy"], 2, r"shape \(3, 65\).*samples of shape \(64,\)"),
        (["run", m, "-c", c, "-b", "golden", "--input", tmp_path / "nan.npy"], 2, r"NaN"),
        (["run", m, "-c", c, "-b", "golden", "--input", tmp_path / "empty.npy"], 2, r"empty\.npy: not a readable \.npy array"),
        (["eval", m, "-c", c, "--dataset", tmp_path / "data.npz"], 2, r"data\.npz: not an \.npz file"),
        (["run", m, "-c", c, "-b", "golden", "--input", tmp_path / "x.npy"], 2, r"'--input'.*does not exist"),
        (["run", m, "-c", c, "-b", "golden", "--no-program", "--input", work["dir"] / "x.npy"], 2, r"starts erased"),
        (["program", m, "-c", c, "-b", "nowhere"], 2, r"unknown backend 'nowhere'"),
        (["program", m, "-c", c, "-b", "golden", "--save", tmp_path / "d.pt"], 2, r"name ends in \.dep"),
        (["eval", tmp_path / "garbage.dep"], 2, r"garbage\.dep: not a readable deployment file"),
        (["program", m, "-c", c, "-b", "socket://127.0.0.1:9"], 3, r"socket://127\.0\.0\.1:9"),
        (["eval", m, "-c", c, "-b", "golden", "--samples", "40", "--min-accuracy", "1.0"], 1, r"below --min-accuracy 100\.00 %"),
        (["train", "--model", "transformer", "-o", tmp_path / "t.pt"], 2, r"Invalid value for '--model'"),
        (["place", m, "--bogus"], 2, r"No such option '--bogus'"),
        (["config", "new", "default", "-o", tmp_path / "exists.toml"], 2, r"exists; pass --force"),
        (["config", "new", "default", "-o", tmp_path / "n.toml", "--set", "array.nope=1"], 2, r"no field 'array\.nope'"),
        (["bench", "nosuch"], 2, r"nosuch; benchmarks: .*soc"),
        (["flash", "nosuch-board"], 2, r"Invalid value for 'BOARD'"),
    ]
    # in this process (an interpreter per case cost a minute): main() is what the console
    # script runs, and an exception it does not turn into a message fails the test here
    monkeypatch.chdir(REPO)
    for args, code, pattern in cases:
        got = main([str(a) for a in args])
        out, err = capsys.readouterr()
        where = f"cimstack {' '.join(map(str, args))}"
        assert got == code, f"{where}: exit {got}, expected {code}\n{err[-2000:]}"
        assert re.search(pattern, out + err, re.S), f"{where}: message does not match {pattern!r}:\n{err[-2000:]}"
