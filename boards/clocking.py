"""Board clocking: PLL settings for iCE40 and ECP5, and the clock/reset generator every board
top uses.

The PLL searches follow the published constraints of the vendor primitives (the same ones
Project IceStorm's ``icepll`` and Project Trellis' ``ecppll`` apply) and pick the setting
closest to the requested frequency; the tests compare them with those tools (shipped in the
YoWASP wheels). The chip config's ``clock.clock_hz`` must be reachable: the SoC derives its
UART divisor from it, so a PLL that lands elsewhere would break the link.
"""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer

from cimstack.errors import ConfigError

__all__ = ["PllSetting", "ice40_pll", "ecp5_pll", "ClockReset", "PLL_TOLERANCE"]

#: Largest relative error between the requested and the reachable system clock. 0.1 % keeps the
#: UART (which tolerates about 2 %) and the reported timing honest.
PLL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PllSetting:
    """Divider settings of one PLL; ``f_out`` is what the hardware will really produce."""

    family: str
    f_in: float
    f_out: float
    f_vco: float
    params: dict

    def check(self, f_want: float) -> None:
        if abs(self.f_out - f_want) > PLL_TOLERANCE * f_want:
            raise ConfigError(
                f"clock.clock_hz = {f_want:.0f} cannot be made by the {self.family} PLL from "
                f"{self.f_in / 1e6:g} MHz: the nearest is {self.f_out:.0f} Hz; set clock.clock_hz to it")


def ice40_pll(f_in: float, f_out: float) -> PllSetting:
    """SB_PLL40 in SIMPLE feedback: PFD 10–133 MHz, VCO 533–1066 MHz, f = VCO / 2**DIVQ."""
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = f_vco / (1 << divq)
                if best is None or abs(f - f_out) < abs(best[0] - f_out):
                    best = (f, f_vco, f_pfd, divr, divf, divq)
    if best is None:
        raise ConfigError(f"the iCE40 PLL cannot run from a {f_in / 1e6:g} MHz reference")
    f, f_vco, f_pfd, divr, divf, divq = best
    filter_range = next(i for i, edge in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, float("inf")), 1)
                        if f_pfd < edge)
    return PllSetting("iCE40", f_in, f, f_vco, {
        "FEEDBACK_PATH": "SIMPLE", "DIVR": divr, "DIVF": divf, "DIVQ": divq,
        "FILTER_RANGE": filter_range})


def ecp5_pll(f_in: float, f_out: float) -> PllSetting:
    """EHXPLLL with CLKOP feedback: PFD 3.125–400 MHz, VCO 400–800 MHz; ties go to the VCO
    nearest 600 MHz, as ``ecppll`` does."""
    best = None
    for in_div in range(1, 129):
        f_pfd = f_in / in_div
        if not 3.125e6 <= f_pfd <= 400e6:
            continue
        for fb_div in range(1, 81):
            f = f_pfd * fb_div
            for out_div in range(1, 129):
                f_vco = f * out_div
                if not 400e6 <= f_vco <= 800e6:
                    continue
                key = (round(abs(f - f_out), 3), abs(f_vco - 600e6))
                if best is None or key < best[0]:
                    best = (key, f, f_vco, in_div, fb_div, out_div)
    if best is None:
        raise ConfigError(f"the ECP5 PLL cannot run from a {f_in / 1e6:g} MHz reference")
    _, f, f_vco, in_div, fb_div, out_div = best
    return PllSetting("ECP5", f_in, f, f_vco, {
        "CLKI_DIV": in_div, "CLKFB_DIV": fb_div, "CLKOP_DIV": out_div,
        "CLKOP_CPHASE": out_div // 2, "CLKOP_FPHASE": 0})


class ClockReset(Elaboratable):
    """Drives the ``sync`` domain from the board oscillator, through the PLL when the config's
    clock differs from it, and holds reset until the PLL has locked, the power-on delay has
    passed (iCE40 block RAMs read zeroes for about 3 µs after configuration) and the reset
    button is released. ``locked`` is exposed for a status LED.
    """

    def __init__(self, family: str, clk_resource: str, f_in: float, f_out: float,
                 reset_button: str | None = None, por_seconds: float = 20e-6):
        if family not in ("ice40", "ecp5"):
            raise ConfigError(f"no clocking for FPGA family {family!r}")
        self.family, self.clk_resource = family, clk_resource
        self.f_in, self.f_out = f_in, f_out
        self.reset_button, self.por_cycles = reset_button, max(2, int(por_seconds * f_out))
        self.pll = None
        if abs(f_out - f_in) > PLL_TOLERANCE * f_out:
            self.pll = (ice40_pll if family == "ice40" else ecp5_pll)(f_in, f_out)
            self.pll.check(f_out)
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        clk = Signal()
        clk_io = platform.request(self.clk_resource, dir="-")
        if self.pll is None:
            m.submodules.clk_buf = buf = io.Buffer("i", clk_io)
            m.d.comb += [clk.eq(buf.i), self.locked.eq(1)]
        elif self.family == "ice40":
            platform.add_clock_constraint(clk, self.pll.f_out)
            # the PLL sits on the oscillator's pad (the iCEBreaker's pin 35 is PLL-capable)
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", i_PACKAGEPIN=clk_io.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=clk, o_LOCK=self.locked,
                **{f"p_{k}": v for k, v in self.pll.params.items()})
        else:
            platform.add_clock_constraint(clk, self.pll.f_out)
            m.submodules.clk_buf = buf = io.Buffer("i", clk_io)
            clkop = Signal()
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{self.f_in / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.pll.f_out / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_FEEDBK_PATH="CLKOP", **{f"p_{k}": v for k, v in self.pll.params.items()},
                i_RST=0, i_STDBY=0, i_CLKI=buf.i, o_CLKOP=clkop, i_CLKFB=clkop,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=self.locked)
            m.d.comb += clk.eq(clkop)

        button = Const(0)
        if self.reset_button is not None:
            m.submodules.btn_buf = btn = io.Buffer("i", platform.request(self.reset_button, dir="-"))
            button = btn.i

        # power-on delay, restarted whenever the PLL loses lock or the button is pressed
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(clk)
        hold = Signal()
        m.submodules.hold_sync = FFSynchronizer(~self.locked | button, hold, o_domain="por", init=1)
        timer = Signal(range(self.por_cycles + 1))
        ready = Signal()
        with m.If(hold):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == self.por_cycles):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)

        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.rst_sync = ResetSynchronizer(~ready, domain="sync")
        return m
