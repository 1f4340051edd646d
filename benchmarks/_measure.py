"""Timing and memory measurement shared by the speed benchmarks on both sides of a comparison:
standard library only, so the scripts that run in the aihwkit-lightning environment (where
cimstack is not installed) import it too."""
from __future__ import annotations

import resource
import time
from collections.abc import Callable


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024          # kB
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """This process's resident set size now, MB (Linux; elsewhere the peak so far)."""
    now = _status_mb("VmRSS")
    return peak_mb() if now is None else now


def peak_mb() -> float:
    """This process's peak resident set size so far, MB (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    hwm = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if hwm is None else hwm


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, min_seconds: float) -> list[float]:
    """Seconds of each timed call of ``fn``, after ``warmup`` untimed calls: at least
    ``repeats`` calls, more until ``min_seconds`` have passed in timed calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def throughput(times: list[float], batch: int) -> dict:
    """Images per second over the timed calls of a batch of ``batch``, and the call times (each
    one up to 100 calls; min, median and max always)."""
    s = sorted(times)
    res = {"images_per_second": batch * len(times) / sum(times), "batch": batch, "calls": len(times),
           "seconds_per_call": {"min": s[0], "median": s[len(s) // 2], "max": s[-1]}}
    if len(times) <= 100:
        res["seconds_per_call"]["all"] = times
    return res
