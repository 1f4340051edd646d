"""The host link under injected faults (cimstack.link.faults), against the simulated SoC: damaged,
lost, duplicated, delayed and truncated traffic never yields a wrong result, a write is
never applied twice, a silent device is reported within a bounded time, and the host carries
on after reconnecting. The 10^4-frame figure is benchmarks/bench_link.py."""
import time

import pytest
from helpers import soc_test_config

from cimstack.errors import ConfigError, LinkTimeout
from cimstack.link.client import Device
from cimstack.link.faults import Faults, soak
from cimstack.link.transport import Link
from cimstack.sim.server import SimServer


@pytest.fixture(scope="module")
def server():
    with SimServer(soc_test_config()) as srv:
        yield srv


@pytest.mark.verilator
def test_every_kind_of_fault_at_once_gives_no_silent_error(server):
    faults = Faults(corrupt=0.01, drop=0.002, truncate=0.03, duplicate=0.05, delay=0.03, delay_s=0.12, seed=3)
    with Link(server.url, timeout=0.08, retries=6, faults=faults) as link:
        dev = Device(link, server.cfg)
        stats = soak(dev, 300, seed=1)
        counts = link.fault_counts
    assert stats["silent_errors"] == 0 and stats["final_mismatches"] == 0, stats
    assert stats["reads_checked"] > 100
    # the faults happened, and the host had to work through them
    assert counts.corrupted > 50 and counts.truncated > 5 and counts.duplicated > 5 and counts.delayed > 3
    assert stats["retries"] > 20
    # duplicated frames and retries after lost answers reached the chip as retransmissions it
    # acknowledged without applying twice (a write applied twice would show as a mismatch
    # only when another write came between; the counter shows the chip saw them)
    assert stats["duplicates_acknowledged"] > 5, stats


@pytest.mark.verilator
def test_a_device_that_stops_answering_is_reported_in_bounded_time_and_the_host_recovers(server):
    with Link(server.url, timeout=0.2, retries=2) as link:
        dev = Device(link, server.cfg)
        dev.write("SCRATCH", 0x1234)
        link.faults = Faults(drop=1.0)                 # the line goes dead
        link.reconnect()
        t0 = time.monotonic()
        with pytest.raises(LinkTimeout, match=r"no answer within 0\.2 s after 3 attempt"):
            dev.read("SCRATCH")
        assert time.monotonic() - t0 < 3 * 0.2 + 0.5          # (retries + 1) x timeout, and no more
        link.faults = None                              # the cable is back
        link.reconnect()
        assert dev.read("SCRATCH") == 0x1234
        dev.write("SCRATCH", 0x5678)
        assert dev.read("SCRATCH") == 0x5678


def test_fault_rates_are_checked():
    with pytest.raises(ConfigError, match=r"fault rate corrupt = 1\.5 is outside \[0, 1\]"):
        Faults(corrupt=1.5)
