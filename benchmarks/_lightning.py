"""aihwkit-lightning, the library the speed benchmarks time beside cimstack: its own virtual
environment, build/venv-aihwkit-lightning (created on first use), and its scripts run there.

The scripts it runs (aihwkit_lightning_epoch.py, aihwkit_lightning_inference.py) import no
cimstack: cimstack is not installed in that environment.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "venv-aihwkit-lightning"
PACKAGES = ("torch==2.13.0", "aihwkit-lightning", "scikit-learn")


def python() -> Path:
    """The interpreter of the aihwkit-lightning environment, created (``python -m venv`` and
    ``pip install`` of :data:`PACKAGES`) when missing; raises ``RuntimeError`` if that fails."""
    py = VENV / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PACKAGES], check=True, timeout=1800)
        except (subprocess.SubprocessError, OSError) as exc:
            raise RuntimeError(f"could not install aihwkit-lightning: {exc}") from exc
    return py


def run(script: str, args: list[str], out: Path, timeout: float = 1800) -> dict:
    """Run ``benchmarks/<script>`` in the aihwkit-lightning environment with ``args`` and
    ``--json out``, and return the JSON it wrote; ``{"error": ...}`` when the environment
    cannot be made or the script fails."""
    try:
        py = python()
    except RuntimeError as exc:
        return {"error": str(exc)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    try:
        proc = subprocess.run([str(py), str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{script} ran over {timeout:.0f} s"}
    if proc.returncode != 0 or not out.exists():
        res = json.loads(out.read_text()) if out.exists() else {}
        res.setdefault("error", f"{script} exited with {proc.returncode}")
        res["stderr"] = proc.stderr[-2000:]
        return res
    return json.loads(out.read_text())
