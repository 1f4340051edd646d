"""The register decoder, generated from the one declaration in :mod:`cimstack.chip.regmap`,
and the Amaranth layouts of declared bit fields (registers, memory-space words, instructions)."""
from __future__ import annotations

import functools
import operator

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from cimstack.chip.bitfields import Field, contiguous
from cimstack.chip.regmap import RegisterMap

__all__ = ["RegisterFile", "port_name", "field_layout"]


def port_name(reg_name: str) -> str:
    return reg_name.lower()


def _field_shape(f: Field):
    return f.enum if f.enum is not None else signed(f.width) if f.signed else unsigned(f.width)


def field_layout(fields: tuple[Field, ...], size: int | None = None) -> data.Layout:
    """The declared ``fields`` as a layout, so the RTL names them and never repeats an offset or
    a width: each field at its offset, of its width, signed or of its enum's shape as declared.

    Without ``size`` the fields must tile the word from bit 0 (a :class:`~amaranth.lib.data.StructLayout`
    as wide as they are); with it, a :class:`~amaranth.lib.data.FlexibleLayout` of ``size`` bits
    (gaps and bits above the last field belong to no field)."""
    if size is None:
        assert contiguous(fields), f"fields {[f.name for f in fields]} leave gaps: give the word's size"
        return data.StructLayout({f.name: _field_shape(f) for f in fields})
    return data.FlexibleLayout(size, {f.name: data.Field(_field_shape(f), f.offset) for f in fields})


class RegisterFile(wiring.Component):
    """32-bit registers behind a simple bus.

    Bus: ``addr``, ``w_data``, ``w_en`` (one-cycle write strobe), ``r_data`` (combinational),
    ``hit`` (the address names a register) and ``writable`` (it is ``rw`` or ``wo``).

    Per register, a port named after it in lower case, a 32-bit view whose fields are the
    register's declared fields (:func:`field_layout`), so ``regs.cell_addr.row`` is the row:
    ``rw`` -> ``Out`` holding the value (bits outside the register's fields are not stored and
    read as 0); ``ro`` -> ``In`` the hardware drives (constants are held here and have no port);
    ``wo`` -> ``Out`` equal to the written word during the ``<name>_w`` strobe.
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
            name, layout = port_name(r.name), field_layout(r.fields, 32)
            if r.access == "rw":
                members[name] = Out(layout, init=layout.from_bits(r.reset))
            elif r.access == "ro":
                members[name] = In(layout)
            else:
                members[name] = Out(layout)
                members[name + "_w"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        regs = self.regmap.registers
        # registers are told apart by the address bits below the highest one in use; the bits
        # above only have to be zero, checked once rather than in every comparison
        abits = max(r.addr for r in regs).bit_length()
        in_range = self.addr[abits:] == 0
        sel = {}
        for r in regs:
            sel[r.name] = Signal(name=f"sel_{port_name(r.name)}")
            m.d.comb += sel[r.name].eq(self.addr[:abits] == r.addr)
        m.d.comb += [self.hit.eq(in_range & Cat(*sel.values()).any()),
                     self.writable.eq(in_range & Cat(*(sel[r.name] for r in regs if r.access != "ro")).any())]

        # read data: an AND-OR over the readable registers, each contributing only its fields'
        # bits (the others read 0)
        terms = []
        for r in regs:
            if r.const:
                value = C(r.reset & r.mask, 32)
            elif r.access in ("rw", "ro"):
                value = getattr(self, port_name(r.name)).as_value() & r.mask
            else:
                continue
            terms.append(Mux(sel[r.name], value, 0))
        m.d.comb += self.r_data.eq(functools.reduce(operator.or_, terms))

        for r in regs:
            write = self.w_en & in_range & sel[r.name]
            if r.access == "rw":
                # only the declared fields are stored: other bits read as 0 (and the
                # flip-flops behind them are optimised away)
                assert r.reset & ~r.mask == 0, f"{r.name}: reset value outside its fields"
                with m.If(write):
                    m.d.sync += getattr(self, port_name(r.name)).eq(self.w_data & r.mask)
            elif r.access == "wo":
                m.d.comb += [getattr(self, port_name(r.name)).eq(self.w_data),
                             getattr(self, port_name(r.name) + "_w").eq(write)]
        return m
