"""The examples in examples/ run as a user runs them, and produce what they promise."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from cimstack import preset


def run(cmd, **env) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env))
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_cli_walkthrough(tmp_path):
    """The tutorial's command-line flow: a placement map, an accuracy plot, tuning that
    recovers what the small chip's saturating ADCs lose (the simulated SoC is covered by
    tests/test_cli.py, so SIM=0 here)."""
    out = run(["bash", "examples/cli_walkthrough.sh", str(tmp_path)], SIM="0")
    reports = tmp_path / "reports"
    assert (reports / "place" / "placement.png").read_bytes()[:4] == b"\x89PNG"
    assert '<img src="placement.png"' in (reports / "place" / "report.html").read_text()
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["samples"] == 120 and len(ev["sweep"]["noise_accuracy"]) == 5 and len(ev["sweep"]["drift_accuracy"]) == 5
    # more per-cell read noise does not help: the noisiest point is no better than the noise-free one
    assert ev["sweep"]["noise_accuracy"][-1] <= ev["sweep"]["noise_accuracy"][0] + 0.02
    assert {p.name for p in (reports / "eval").glob("*.png")} == {"accuracy.png", "programming.png"}
    page = json.loads((reports / "eval" / "report.json").read_text())
    assert page["sections"]["Accuracy"]["test samples"] == 120
    assert page["sections"]["Write-verify"].count("\n  fc") == 2           # a row per layer
    tune = json.loads((reports / "tune" / "report.json").read_text())
    assert "tuning.png" in tune["figures"]
    before, after = (json.loads((tmp_path / f"golden-{w}.json").read_text())["chip_accuracy"] for w in ("before", "after"))
    assert after > before + 0.1, (before, after)
    assert "golden:" in out and "after" in out


def test_python_api_example(tmp_path):
    run([sys.executable, "examples/python_api.py", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["float"] > 0.93 and result["golden"] > 0.93 and result["emulator"] > 0.93
    assert result["golden_failed_cells"] == 0
    assert {"placement.png", "programming.png", "report.html"} <= {p.name for p in tmp_path.iterdir()}
    assert preset("default").name in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_onnx_example_runs_a_users_own_model_through_the_cli(tmp_path):
    out = run([sys.executable, "examples/onnx_model.py", "--out", str(tmp_path)])
    assert (tmp_path / "tiny_cnn.onnx").is_file()
    assert "conv2d" in out and "chip (emulator)" in out             # compiled, placed, evaluated
    assert (tmp_path / "place" / "placement.png").is_file() and (tmp_path / "eval" / "report.html").is_file()
