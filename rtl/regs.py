"""The register decoder, generated from the one declaration in :mod:`cimstack.regmap`."""
from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from cimstack.regmap import RegisterMap

__all__ = ["RegisterFile", "port_name"]


def port_name(reg_name: str) -> str:
    return reg_name.lower()


class RegisterFile(wiring.Component):
    """32-bit registers behind a simple bus.

    Bus: ``addr``, ``w_data``, ``w_en`` (one-cycle write strobe), ``r_data`` (combinational),
    ``hit`` (the address names a register) and ``writable`` (it is ``rw`` or ``wo``).

    Per register (port named after it in lower case): ``rw`` -> ``Out(32)`` holding the value
    (bits outside the register's fields are not stored and read as 0);
    ``ro`` -> ``In(32)`` the hardware drives (constants are held here and have no port);
    ``wo`` -> ``Out(32)`` equal to the written word during the ``<name>_w`` strobe.
    """

    def __init__(self, regmap: RegisterMap):
        self.regmap = regmap
        members = {
            "addr": In(16), "w_data": In(32), "w_en": In(1),
            "r_data": Out(32), "hit": Out(1), "writable": Out(1),
        }
        for r in regmap.registers:
            if r.const:
                continue
            name = port_name(r.name)
            if r.access == "rw":
                members[name] = Out(32, init=r.reset)
            elif r.access == "ro":
                members[name] = In(32)
            else:
                members[name] = Out(32)
                members[name + "_w"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        with m.Switch(self.addr):
            for r in self.regmap.registers:
                with m.Case(r.addr):
                    m.d.comb += [self.hit.eq(1), self.writable.eq(r.access != "ro")]
                    if r.const:
                        m.d.comb += self.r_data.eq(r.reset)
                    elif r.access in ("rw", "ro"):
                        m.d.comb += self.r_data.eq(getattr(self, port_name(r.name)))
                    if r.access == "rw":
                        # only the declared fields are stored: other bits read as 0 (and the
                        # flip-flops behind them are optimised away)
                        mask = sum(((1 << f.width) - 1) << f.offset for f in r.fields)
                        assert r.reset & ~mask == 0, f"{r.name}: reset value outside its fields"
                        with m.If(self.w_en):
                            m.d.sync += getattr(self, port_name(r.name)).eq(self.w_data & mask)
                    elif r.access == "wo":
                        m.d.comb += [getattr(self, port_name(r.name)).eq(self.w_data),
                                     getattr(self, port_name(r.name) + "_w").eq(self.w_en)]
        return m
