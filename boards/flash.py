"""Programming a board: the loader command line, a dry run that prints it, and the checks
that turn "nothing happened" into a message saying why.

openFPGALoader programs both boards (``-b ulx3s``: SRAM by default, ``--flash`` writes the
SPI flash; ``-b ice40_generic``: the iCEBreaker's SPI flash). iceprog is the alternative for
iCE40 boards (``loader="iceprog"``; ``-S`` loads SRAM). Before running a loader the board's
USB bridge is looked for in sysfs, so a missing board fails at once with its USB IDs named.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from cimstack.boards.targets import Board
from cimstack.boards.targets import board as get_board
from cimstack.chip.config import load
from cimstack.errors import FlashError

__all__ = ["flash_command", "find_board_usb", "flash", "LOADERS"]

LOADERS = ("openFPGALoader", "iceprog")
SYSFS_USB = Path("/sys/bus/usb/devices")


def _loader_path(loader: str) -> str:
    """The loader executable: ``$OPENFPGALOADER`` / ``$ICEPROG`` (as Amaranth uses them) or PATH."""
    return os.environ.get(loader.upper(), loader)


def flash_command(brd: Board, bitstream: Path, port: str | None = None, loader: str = "openFPGALoader",
                  write_flash: bool = False) -> list[str]:
    """The exact command that programs ``bitstream`` into ``brd``."""
    if loader not in LOADERS:
        raise FlashError(f"unknown loader {loader!r}; loaders: {', '.join(LOADERS)}")
    exe = _loader_path(loader)
    if loader == "iceprog":
        if brd.family != "ice40":
            raise FlashError(f"iceprog programs iCE40 boards only; {brd.name} is {brd.family}: use openFPGALoader")
        if port is not None:
            raise FlashError("iceprog selects its board by USB ID, not by serial port; drop PORT or use openFPGALoader")
        return [exe, *([] if write_flash else ["-S"]), str(bitstream)]
    cmd = [exe, "-b", "ice40_generic" if brd.family == "ice40" else brd.loader_board]
    if port is not None:
        cmd += ["-d", port]
    if write_flash and brd.family != "ice40":      # iCE40 through openFPGALoader always writes flash
        cmd.append("-f")
    return cmd + [str(bitstream)]


def find_board_usb(brd: Board, sysfs: Path = SYSFS_USB) -> list[str]:
    """USB devices (sysfs names) whose vendor/product match the board's bridge."""
    found = []
    if not sysfs.is_dir():
        return found
    for dev in sorted(sysfs.iterdir()):
        try:
            ids = (int((dev / "idVendor").read_text(), 16), int((dev / "idProduct").read_text(), 16))
        except (OSError, ValueError):
            continue
        if ids in brd.usb_ids:
            found.append(dev.name)
    return found


def flash(board_name: str, bitstream: str | Path | None = None, port: str | None = None,
          loader: str = "openFPGALoader", write_flash: bool = False, dry_run: bool = False,
          config: str | None = None, sysfs: Path = SYSFS_USB, out_root: str | Path = "build/boards") -> list[str]:
    """Program ``board_name`` with ``bitstream`` (default: what ``make bitstream`` built for
    ``config``, itself defaulting to the board's preset). Returns the command; ``dry_run``
    checks the bitstream exists and returns the command without running it."""
    brd = get_board(board_name)
    if bitstream is None:
        cfg_name = brd.preset if config is None else load(config).name
        bitstream = Path(out_root) / brd.name / cfg_name / f"cim_board{brd.bitstream_ext}"
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        hint = f" CONFIG={config}" if config else ""
        raise FlashError(f"no bitstream at {bitstream}; build it first with 'make bitstream BOARD={brd.name}{hint}'")
    if bitstream.suffix != brd.bitstream_ext:
        raise FlashError(f"{bitstream} is not a {brd.name} bitstream (expected a {brd.bitstream_ext} file)")
    cmd = flash_command(brd, bitstream.resolve(), port, loader, write_flash)
    if dry_run:
        return cmd
    if shutil.which(cmd[0]) is None:
        raise FlashError(f"{loader} was not found (looked for {cmd[0]!r} on PATH); install it from your OS "
                         f"packages, or set {loader.upper()} to its path. Dry run: {shlex.join(cmd)}")
    if port is not None:
        if not Path(port).exists():
            raise FlashError(f"PORT={port} does not exist: is the {brd.description} plugged in?")
    elif not find_board_usb(brd, sysfs):
        ids = ", ".join(f"{v:04x}:{p:04x}" for v, p in brd.usb_ids)
        raise FlashError(f"no {brd.description} is attached: no USB device {ids} found; "
                         f"connect the board (or name its serial port with PORT=)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FlashError(f"{shlex.join(cmd)} failed (exit {proc.returncode}): {' / '.join(said)}")
    return cmd
