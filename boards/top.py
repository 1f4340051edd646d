"""The board top: the SoC with its UART on the board's USB-serial pins, clocking and reset,
and status LEDs.

LEDs, in order (a board lights as many as it has):

0. heartbeat: blinks at 1 Hz while the clock runs and reset is released
1. busy: a VMM, write-verify or program is running, or the bridge holds a frame
2. rx: a byte arrived on the UART (stretched to 50 ms)
3. tx: a byte left on the UART (stretched to 50 ms)
4. PLL locked
"""

from amaranth import *
from amaranth.lib import io

from cimstack.boards.clocking import ClockReset
from cimstack.chip.config import ChipConfig
from cimstack.rtl.soc import CimSoC

__all__ = ["BoardTop", "LED_MEANINGS"]

LED_MEANINGS = ("heartbeat", "busy", "uart rx activity", "uart tx activity", "pll locked")


class _Stretch(Elaboratable):
    """Holds ``o`` high for ``cycles`` after any cycle where ``i`` is high (activity LEDs)."""

    def __init__(self, cycles: int):
        self.i, self.o, self.cycles = Signal(), Signal(), cycles

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.cycles + 1))
        with m.If(self.i):
            m.d.sync += timer.eq(self.cycles)
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        m.d.comb += self.o.eq(timer != 0)
        return m


class BoardTop(Elaboratable):
    """Everything a board needs around :class:`~cimstack.rtl.soc.CimSoC` (UART PHY)."""

    def __init__(self, board, cfg: ChipConfig):
        self.board, self.cfg = board, cfg
        self.clocking = ClockReset(board.family, board.clock, board.clock_hz, cfg.clock.clock_hz,
                                   reset_button=board.reset_button)

    def elaborate(self, platform):
        m = Module()
        board, f = self.board, self.cfg.clock.clock_hz
        m.submodules.clocking = clocking = self.clocking
        m.submodules.soc = soc = CimSoC(self.cfg, phy="uart")

        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [soc.uart_rx.eq(rx_buf.i), tx_buf.o.eq(soc.uart_tx)]

        # status LEDs
        half_second = max(1, f // 2)
        beat = Signal(range(half_second))
        heartbeat = Signal()
        with m.If(beat == half_second - 1):
            m.d.sync += [beat.eq(0), heartbeat.eq(~heartbeat)]
        with m.Else():
            m.d.sync += beat.eq(beat + 1)
        stretch = max(1, f // 20)
        m.submodules.rx_led = rx_led = _Stretch(stretch)
        m.submodules.tx_led = tx_led = _Stretch(stretch)
        m.d.comb += [rx_led.i.eq(~soc.uart_rx), tx_led.i.eq(~soc.uart_tx)]   # start bits are low
        states = (heartbeat, soc.busy, rx_led.o, tx_led.o, clocking.locked)
        for index, state in enumerate(states[:board.leds]):
            led = platform.request("led", index, dir="-")
            m.submodules[f"led{index}"] = buf = io.Buffer("o", led)
            m.d.comb += buf.o.eq(state)
        return m
