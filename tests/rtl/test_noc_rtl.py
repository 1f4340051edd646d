"""The router mesh under random unicast and multicast traffic with random backpressure:
no flit lost or duplicated, every destination of a multicast served once, and flits from one
source to one destination delivered in the order sent."""
import random

import pytest

from cimstack.chip.enums import FlitKind
from cimstack.sim.verilator import build_mesh

# every test here runs Verilated RTL
pytestmark = pytest.mark.verilator

NODES = 7          # a 3x3 grid with two routers lacking a local port


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    return build_mesh(NODES, tmp_path_factory.mktemp("mesh"))


@pytest.fixture(scope="session")
def link(tmp_path_factory):
    """The one-tile chip's network: two nodes joined by a FIFO each way, no routers."""
    return build_mesh(2, tmp_path_factory.mktemp("link"))


@pytest.mark.parametrize("stall,gap,multicast", [(0.0, 0.0, 0.0), (0.5, 0.2, 0.3), (0.8, 0.0, 0.5)])
def test_random_traffic(mesh, stall, gap, multicast):
    _random_traffic(mesh, NODES, stall, gap, multicast, to_self=True)


@pytest.mark.parametrize("stall,gap", [(0.0, 0.0), (0.7, 0.3)])
def test_two_node_link(link, stall, gap):
    # in the SoC no node addresses itself: the buffer sends to the tile and the tile back
    _random_traffic(link, 2, stall, gap, 0.0, to_self=False)


def _random_traffic(mesh, nodes, stall, gap, multicast, to_self):
    rng = random.Random(int(stall * 100 + gap * 10 + multicast * 1000))
    flits, sent = [], {}
    for src in range(nodes):
        mine = []
        for seq in range(60):
            if rng.random() < multicast:
                dest = rng.randrange(1, 1 << nodes)
            elif to_self:
                dest = 1 << rng.randrange(nodes)
            else:
                dest = 1 << rng.choice([n for n in range(nodes) if n != src])
            value = src << 24 | seq
            mine.append([dest, seq, value])
            for d in range(nodes):
                if dest >> d & 1:
                    sent.setdefault((src, d), []).append(value)
        flits.append(mine)
    total = sum(len(v) for v in sent.values())
    job = {"nodes": nodes, "flits": flits, "stall": stall, "gap": gap, "seed": 7, "expected_total": total}
    res = mesh.run_job(job, f"traffic-{stall}-{gap}-{multicast}")
    assert res["sources_done"], "a source could not inject all its flits (deadlock?)"
    got = {}
    for d, arrivals in enumerate(res["received"]):
        for dest, kind, index, value in arrivals:
            assert dest == 1 << d, f"node {d} got a flit whose mask {dest:b} is not narrowed to it"
            assert kind == FlitKind.OUT and index == value & 0xFFFF
            got.setdefault((value >> 24, d), []).append(value)
    assert got == sent          # same flits per (source, destination), in the order sent
    assert sum(len(a) for a in res["received"]) == total
