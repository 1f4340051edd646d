"""Full-size bitstream builds: every board with its preset (and any extra --config), the
resources, fmax and build time of each, or why it failed. Writes build/bench/boards.json and
a Markdown table next to it.

    python benchmarks/bench_boards.py [--boards ulx3s-85f icebreaker] [--config BOARD=PRESET ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

from cimstack.boards import BOARDS
from cimstack.boards.build import build_bitstream, resources
from cimstack.errors import BuildError


def _utilisation_from_log(path: Path) -> dict:
    """nextpnr's 'Device utilisation' lines, for builds that failed to place."""
    found = {}
    if path.exists():
        for cell, used, avail in re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)", path.read_text(), re.M):
            found[cell] = {"used": int(used), "available": int(avail)}
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--boards", nargs="*", default=list(BOARDS))
    p.add_argument("--config", nargs="*", default=[], help="extra BOARD=PRESET|FILE builds")
    p.add_argument("--out", default="build/bench")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    jobs = [(b, BOARDS[b].preset) for b in args.boards] + [tuple(spec.split("=", 1)) for spec in args.config]
    results = []
    for board_name, cfg in jobs:
        start = time.monotonic()
        print(f"== {board_name} / {cfg}", flush=True)
        try:
            report = build_bitstream(board_name, cfg, Path(args.out) / "boards", seed=args.seed, allow_timing_fail=True)
            entry = {"board": board_name, "config": cfg, "ok": True, **report.__dict__}
        except BuildError as exc:
            log = Path(args.out) / "boards" / board_name / cfg / "cim_board.tim"
            entry = {"board": board_name, "config": cfg, "ok": False, "error": str(exc),
                     "build_seconds": time.monotonic() - start, "nextpnr_utilisation": _utilisation_from_log(log)}
        print(json.dumps(entry, indent=1), flush=True)
        results.append(entry)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "boards.json").write_text(json.dumps({
        "benchmark": "boards", "seed": args.seed, "machine": platform.machine(),
        "python": platform.python_version(), "builds": results}, indent=2) + "\n")
    lines = ["| board | config | logic | ff | dsp | bram | fmax / target MHz | build s | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in results:
        res = e["resources"] if e["ok"] else resources(e["nextpnr_utilisation"], BOARDS[e["board"]].family)
        cols = " | ".join(f"{res[k]['used']}/{res[k]['available']}" if res.get(k, {}).get("available") else "-"
                          for k in ("logic", "ff", "dsp", "bram"))
        fmax = f"{e['fmax_mhz']:.1f} / {e['target_mhz']:.1f}" if e["ok"] else "-"
        result = ("met" if e["timing_met"] else "timing missed") if e["ok"] else "does not fit"
        lines.append(f"| {e['board']} | {e['config']} | {cols} | {fmax} | {e['build_seconds']:.0f} | {result} |")
    (out / "boards.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
