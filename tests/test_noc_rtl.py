"""The router mesh under random unicast and multicast traffic with random backpressure:
no flit lost or duplicated, every destination of a multicast served once, and flits from one
source to one destination delivered in the order sent."""
import random

import pytest

from cimstack.sim.verilator import build_mesh

NODES = 7          # a 3x3 grid with two routers lacking a local port


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    return build_mesh(NODES, tmp_path_factory.mktemp("mesh"))


@pytest.mark.parametrize("stall,gap,multicast", [(0.0, 0.0, 0.0), (0.5, 0.2, 0.3), (0.8, 0.0, 0.5)])
def test_random_traffic(mesh, stall, gap, multicast):
    rng = random.Random(int(stall * 100 + gap * 10 + multicast * 1000))
    flits, sent = [], {}
    for src in range(NODES):
        mine = []
        for seq in range(60):
            if rng.random() < multicast:
                dest = rng.randrange(1, 1 << NODES)
            else:
                dest = 1 << rng.randrange(NODES)
            value = src << 24 | seq
            mine.append([dest, seq, value])
            for d in range(NODES):
                if dest >> d & 1:
                    sent.setdefault((src, d), []).append(value)
        flits.append(mine)
    total = sum(len(v) for v in sent.values())
    job = {"nodes": NODES, "flits": flits, "stall": stall, "gap": gap, "seed": 7, "expected_total": total}
    res = mesh.run_job(job, f"traffic-{stall}-{gap}-{multicast}")
    assert res["sources_done"], "a source could not inject all its flits (deadlock?)"
    got = {}
    for d, arrivals in enumerate(res["received"]):
        for dest, kind, index, value in arrivals:
            assert dest == 1 << d, f"node {d} got a flit whose mask {dest:b} is not narrowed to it"
            assert kind == 1 and index == value & 0xFFFF
            got.setdefault((value >> 24, d), []).append(value)
    assert got == sent          # same flits per (source, destination), in the order sent
    assert sum(len(a) for a in res["received"]) == total
