"""The host link under injected faults (issue 9's figure); writes build/bench/link_faults.json.

Over the simulation server of a preset (default ``ice40-tiny``, the quickest to build), a
random mix of register and activation-buffer reads and writes (:func:`cimstack.link.faults.soak`)
runs through a :class:`~cimstack.link.faults.FaultyPort`, checked against a shadow copy. Rows:

- ``corrupt-1%``: 1 % of the bytes in both directions have a bit flipped (the issue's figure,
  at least 10^4 requests);
- ``mixed``: corruption plus lost bytes, truncated, duplicated and delayed frames;
- ``clean``: no faults, the baseline for the time per request.

Each row gives requests, wire frames (requests plus retransmissions), retries, reported
failures (timeouts after every retry, BAD_CRC on the last attempt), retransmissions the chip
acknowledged without applying, and silent errors: reads that returned a wrong value with no
error raised, and words left wrong at the end. The figure to hold is zero silent errors.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from cimstack.chip.config import load
from cimstack.link.client import Device
from cimstack.link.faults import Faults, soak
from cimstack.link.transport import Link
from cimstack.sim.server import SimServer

ROWS = {
    "clean": None,
    "corrupt-1%": Faults(corrupt=0.01, seed=1),
    "mixed": Faults(corrupt=0.005, drop=0.001, truncate=0.02, duplicate=0.02, delay=0.01, delay_s=0.1, seed=2),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ice40-tiny")
    p.add_argument("--requests", type=int, default=10_000, help="requests in the corrupt-1%% row")
    p.add_argument("--out", default="build/bench")
    args = p.parse_args()
    cfg = load(args.preset)
    results = {"preset": cfg.name, "machine": platform.machine(), "python": platform.python_version(), "rows": {}}
    with SimServer(cfg) as server:
        for name, faults in ROWS.items():
            n = args.requests if name == "corrupt-1%" else max(1, args.requests // 5)
            with Link(server.url, timeout=0.05, retries=8, faults=faults) as link:
                dev = Device(link, cfg)
                stats = soak(dev, n, seed=len(name))
                counts = link.fault_counts          # None for the clean row
                stats["wire_frames"] = link.stats.requests + link.stats.retries
            if counts is not None:
                stats["faults"] = {"corrupted_bytes": counts.corrupted, "dropped_bytes": counts.dropped,
                                   "truncated_frames": counts.truncated, "duplicated_frames": counts.duplicated,
                                   "delayed_frames": counts.delayed}
            stats["ms_per_request"] = 1000 * stats["seconds"] / n
            results["rows"][name] = stats
            print(f"{name:>11s}: {n} requests, {stats['wire_frames']} frames sent, {stats['retries']} retries, "
                  f"{stats['timeouts']} timeouts, {stats['device_errors']} device errors, "
                  f"{stats['duplicates_acknowledged']} retransmissions acknowledged, "
                  f"silent errors {stats['silent_errors']} (+{stats['final_mismatches']} at the end), "
                  f"{stats['ms_per_request']:.2f} ms/request", flush=True)
    base = results["rows"]["clean"]["ms_per_request"]
    for row in results["rows"].values():
        row["time_vs_clean"] = row["ms_per_request"] / base
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "link_faults.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'link_faults.json'}")


if __name__ == "__main__":
    main()
