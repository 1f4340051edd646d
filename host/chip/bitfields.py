"""Named bit fields of a word: the one packing rule shared by registers
(:mod:`cimstack.chip.regmap`), memory-space words (write-verify jobs and results) and sequencer
instructions (:mod:`cimstack.chip.isa`)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from cimstack.errors import InputRangeError

__all__ = ["Field", "index_bits", "pack", "unpack", "contiguous"]


@dataclass(frozen=True)
class Field:
    """``width`` bits at ``offset`` of a word, unsigned, ``signed`` (two's complement) or holding
    an ``enum`` (an :mod:`cimstack.chip.enums` class, as wide as the field): the RTL then gives
    the field the enum's shape and :func:`unpack` returns its members."""

    name: str
    offset: int
    width: int
    doc: str
    signed: bool = False
    enum: type[IntEnum] | None = None

    def __post_init__(self):
        if self.enum is not None:
            assert not self.signed and max(self.enum) < 1 << self.width, \
                f"field {self.name}: {self.enum.__name__} does not fit {self.width} unsigned bits"

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.offset

    @property
    def bounds(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1


def index_bits(n: int) -> int:
    """Width of an unsigned field holding an index below ``n`` (at least 1)."""
    return max(1, (n - 1).bit_length())


def pack(fields: tuple[Field, ...], values: dict[str, int], owner: str, base: int = 0) -> int:
    """``base`` with each named field set; unknown names and out-of-range values raise
    :class:`~cimstack.errors.InputRangeError` naming ``owner``."""
    known = {f.name for f in fields}
    unknown = set(values) - known
    if unknown:
        raise InputRangeError(f"{owner} has no field(s) {', '.join(sorted(unknown))}")
    word = base
    for f in fields:
        v = int(values.get(f.name, 0))
        lo, hi = f.bounds
        if not lo <= v <= hi:
            raise InputRangeError(f"{owner}.{f.name} = {v} outside [{lo}, {hi}]")
        word |= (v & ((1 << f.width) - 1)) << f.offset
    return word


def unpack(fields: tuple[Field, ...], word: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in fields:
        v = (word >> f.offset) & ((1 << f.width) - 1)
        if f.signed and v >> (f.width - 1):
            v -= 1 << f.width
        out[f.name] = f.enum(v) if f.enum is not None else v
    return out


def contiguous(fields: tuple[Field, ...]) -> bool:
    """Whether the fields tile the word from bit 0 without gaps (as an Amaranth StructLayout)."""
    pos = 0
    for f in fields:
        if f.offset != pos:
            return False
        pos += f.width
    return True
