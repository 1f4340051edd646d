"""On-chip network: a 2D mesh of routers with XY dimension-order routing and tree multicast.

Packets are single flits: a destination *bit mask* over the nodes (so one flit can go to
several tiles), a kind (:class:`~cimstack.chip.enums.FlitKind`), a 16-bit index and a 32-bit
value. Node 0 is the activation buffer (the sequencer), node ``1 + t`` is tile ``t``; node
``n`` sits at ``(n % width, n // width)``.

Routing: a router forwards a flit to every output that leads to one of its destinations —
east/west until the destination's column, then north/south, then local — with the flit's mask
narrowed to the destinations behind that output (so the multicast tree branches where paths
diverge). An input releases its flit once every output it needs has taken it; outputs are
round-robin arbitrated among inputs.

Deadlock freedom: every flit moves along X before Y, so channel dependencies follow the
dimension order and cannot form a cycle; endpoints always drain (the buffer consumes outputs
unconditionally, a tile consumes inputs once its previous VMM is done, and its outputs travel
on channels pointing towards the buffer, disjoint from the ones carrying inputs away from it).
Ordering: flits from one source to one destination arrive in the order they were sent (one
fixed path, FIFO inputs, per-input order kept by every output); flits from different sources
interleave arbitrarily.
"""

from amaranth import *
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from cimstack.chip.enums import FlitKind, InputEncoding
from cimstack.chip.topology import mesh_shape

__all__ = ["FlitLayout", "CfgValue", "mesh_shape", "Router", "Mesh", "TileInterface"]

DIRS = ("local", "north", "east", "south", "west")


def FlitLayout(nodes: int) -> data.StructLayout:
    return data.StructLayout({"dest": nodes, "kind": FlitKind, "index": 16, "value": 32})


#: the value of a CFG flit (its index is where the tile's first output goes)
CfgValue = data.StructLayout({"accumulate": 1, "mode": InputEncoding})


def route_masks(node: int, nodes: int, width: int) -> dict[str, int]:
    """For the router of ``node``: per output direction, the destinations it leads to."""
    x, y = node % width, node // width
    masks = {d: 0 for d in DIRS}
    for n in range(nodes):
        nx, ny = n % width, n // width
        d = ("east" if nx > x else "west" if nx < x else
             "south" if ny > y else "north" if ny < y else "local")
        masks[d] |= 1 << n
    return masks


class Router(wiring.Component):
    """One mesh router at grid position ``node``: ``i_<dir>``/``o_<dir>`` streams for the
    local port (positions below ``nodes``) and each neighbour."""

    def __init__(self, node: int, nodes: int, width: int, height: int, depth: int = 2):
        self.node, self.nodes, self.depth = node, nodes, depth
        x, y = node % width, node // width
        # a full width x height grid: positions past the last node hold routers without a
        # local port, so XY routes never leave the mesh
        exists = {"local": node < nodes, "north": y > 0, "west": x > 0,
                  "east": x + 1 < width, "south": y + 1 < height}
        self.dirs = [d for d in DIRS if exists[d]]
        self.masks = route_masks(node, nodes, width)
        assert all(self.masks[d] == 0 for d in DIRS if d not in self.dirs), "XY route leaves the mesh"
        layout = FlitLayout(nodes)
        members = {}
        for d in self.dirs:
            members[f"i_{d}"] = In(stream.Signature(layout))
            members[f"o_{d}"] = Out(stream.Signature(layout))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        dirs = self.dirs
        n = len(dirs)
        heads, reqs, served, pops = [], [], [], []
        for d in dirs:
            q = fifo.SyncFIFOBuffered(width=Shape.cast(FlitLayout(self.nodes)).width, depth=self.depth)
            m.submodules[f"q_{d}"] = q
            inp = getattr(self, f"i_{d}")
            m.d.comb += [q.w_data.eq(inp.payload), q.w_en.eq(inp.valid), inp.ready.eq(q.w_rdy)]
            head = data.View(FlitLayout(self.nodes), q.r_data)
            req = Signal(n, name=f"req_{d}")
            for j, o in enumerate(dirs):
                m.d.comb += req[j].eq(q.r_rdy & (head.dest & self.masks[o]).any())
            heads.append((q, head))
            reqs.append(req)
            served.append(Signal(n, name=f"served_{d}"))
            pops.append(Signal(n, name=f"taken_{d}"))      # outputs taking this input's flit now

        for j, o in enumerate(dirs):
            out = getattr(self, f"o_{o}")
            last = Signal(range(n), name=f"last_{o}")
            pending = [reqs[i][j] & ~served[i][j] for i in range(n)]
            grant = Signal(range(n), name=f"grant_{o}")
            with m.Switch(last):
                for l in range(n):
                    with m.Case(l):
                        for k in reversed(range(1, n + 1)):
                            i = (l + k) % n
                            with m.If(pending[i]):
                                m.d.comb += grant.eq(i)
            with m.Switch(grant):
                for i in range(n):
                    with m.Case(i):
                        q, head = heads[i]
                        m.d.comb += [out.valid.eq(pending[i]), out.payload.eq(head),
                                     out.payload.dest.eq(head.dest & self.masks[o])]
                        with m.If(pending[i] & out.ready):
                            m.d.comb += pops[i][j].eq(1)
                            m.d.sync += last.eq(i)

        for i in range(n):
            q, _ = heads[i]
            done = (reqs[i] & ~(served[i] | pops[i])) == 0
            with m.If(q.r_rdy & done):
                m.d.comb += q.r_en.eq(1)
                m.d.sync += served[i].eq(0)
            with m.Else():
                m.d.sync += served[i].eq(served[i] | pops[i])
        return m


class Mesh(wiring.Component):
    """``nodes`` routers in a mesh; ``inject[n]`` / ``eject[n]`` are node ``n``'s local ports."""

    def __init__(self, nodes: int, depth: int = 2):
        self.nodes, self.depth = nodes, depth
        self.width, self.height = mesh_shape(nodes)
        layout = FlitLayout(nodes)
        super().__init__({
            "inject": In(stream.Signature(layout)).array(nodes),
            "eject": Out(stream.Signature(layout)).array(nodes),
        })

    def elaborate(self, platform):
        m = Module()
        if self.nodes == 2:
            # the buffer and one tile: routers would only ever forward to the one other node,
            # so the two are wired together (no node's valid waits on its ready, so this makes
            # no combinational loop, and every endpoint drains as argued above)
            for src, dst in ((0, 1), (1, 0)):
                inp, out = self.inject[src], self.eject[dst]
                m.d.comb += [out.valid.eq(inp.valid), out.payload.eq(inp.payload),
                             out.payload.dest.eq(inp.payload.dest & (1 << dst)), inp.ready.eq(out.ready)]
            return m
        w = self.width
        routers = []
        for n in range(w * self.height):
            r = Router(n, self.nodes, w, self.height, self.depth)
            m.submodules[f"router{n}"] = r
            routers.append(r)
            if n < self.nodes:
                wiring.connect(m, wiring.flipped(self.inject[n]), r.i_local)
                wiring.connect(m, r.o_local, wiring.flipped(self.eject[n]))
        for n, r in enumerate(routers):
            if "east" in r.dirs:
                e = routers[n + 1]
                wiring.connect(m, r.o_east, e.i_west)
                wiring.connect(m, e.o_west, r.i_east)
            if "south" in r.dirs:
                s = routers[n + w]
                wiring.connect(m, r.o_south, s.i_north)
                wiring.connect(m, s.o_north, r.i_south)
        return m


class TileInterface(wiring.Component):
    """A tile's network interface: CFG flits set where its outputs go (index = base + column,
    value :data:`CfgValue`: accumulate or store) and the input mode, ACT flits feed its ``x``
    stream in arrival order, each ``y`` beat leaves as an OUT or ACC flit to the buffer (node 0)."""

    def __init__(self, nodes: int, input_bits: int, out_bits: int, col_bits: int):
        self.nodes, self.input_bits = nodes, input_bits
        layout = FlitLayout(nodes)
        super().__init__({
            "eject": In(stream.Signature(layout)),
            "inject": Out(stream.Signature(layout)),
            "x": Out(stream.Signature(signed(input_bits))),
            "mode": Out(InputEncoding),
            "y": In(stream.Signature(data.StructLayout({"value": signed(out_bits), "col": col_bits}))),
        })

    def elaborate(self, platform):
        m = Module()
        base = Signal(16)
        acc = Signal()
        f = self.eject.payload
        cfg = data.View(CfgValue, f.value[:CfgValue.size])
        is_act = f.kind == FlitKind.ACT
        m.d.comb += [self.x.payload.eq(f.value[:self.input_bits]),
                     self.x.valid.eq(self.eject.valid & is_act),
                     self.eject.ready.eq(Mux(is_act, self.x.ready, 1))]
        with m.If(self.eject.valid & (f.kind == FlitKind.CFG)):
            m.d.sync += [base.eq(f.index), acc.eq(cfg.accumulate), self.mode.eq(cfg.mode)]
        m.d.comb += [self.inject.valid.eq(self.y.valid), self.y.ready.eq(self.inject.ready),
                     self.inject.payload.dest.eq(1),
                     self.inject.payload.kind.eq(Mux(acc, FlitKind.ACC, FlitKind.OUT)),
                     self.inject.payload.index.eq(base + self.y.payload.col),
                     self.inject.payload.value.eq(self.y.payload.value)]
        return m
