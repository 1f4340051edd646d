"""The ``cimstack`` command line.

    cimstack sim serve --config NAME|FILE [--port P] [--host H] [--pty]
        Build (once) and run the simulation server; prints the address it listens on (and,
        with --pty, a pseudo-terminal that host code opens like a board's serial port).
    cimstack gen --config NAME|FILE [--out DIR]
        Write the SoC Verilog and the register map (JSON, Markdown, C header) under build/gen.
"""
from __future__ import annotations

import argparse
import sys

from .errors import CimstackError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cimstack", description="memristor CIM emulator: gateware, simulation, host stack")
    sub = p.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("sim", help="simulation").add_subparsers(dest="sim_command", required=True)
    serve = sim.add_parser("serve", help="run the Verilated SoC with its byte link on a TCP socket")
    serve.add_argument("--config", default="default", help="preset name or TOML file (default: default)")
    serve.add_argument("--port", type=int, default=0, help="TCP port, 0 picks a free one (default 0)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--pty", action="store_true", help="also serve the link on a pseudo-terminal (a stand-in serial port)")
    gen = sub.add_parser("gen", help="generate Verilog and the register map")
    gen.add_argument("--config", default="default", help="preset name or TOML file")
    gen.add_argument("--out", default="build/gen", help="output folder (default build/gen)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .config import load
    try:
        cfg = load(args.config)
        if args.command == "sim":
            from cimstack.sim.server import serve
            serve(cfg, args.port, args.host, args.pty)
        elif args.command == "gen":
            from cimstack.gen import write_all
            for path in write_all(cfg, args.out):
                print(path)
    except CimstackError as exc:
        print(f"cimstack: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
