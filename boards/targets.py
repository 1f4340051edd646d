"""The supported boards. Adding one is one :class:`Board` entry (see docs/boards.md): its
amaranth-boards platform, oscillator, LEDs, reset button, the chip preset that fits it, and
how to flash it.
"""

import importlib
from dataclasses import dataclass

from cimstack.errors import ConfigError

__all__ = ["Board", "BOARDS", "board"]


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    platform: str                  # "module:Class" in amaranth_boards
    family: str                    # "ice40" or "ecp5": picks the PLL and the YoWASP tools
    clock: str                     # oscillator resource
    clock_hz: float
    preset: str                    # chip preset that fits this board (cimstack.chip.config.PRESETS)
    leds: int                      # how many status LEDs to drive (top.LED_MEANINGS)
    reset_button: str | None       # resource name of an active button that resets the SoC
    bitstream_ext: str             # ".bin" (iCE40) or ".bit" (ECP5)
    loader_board: str              # openFPGALoader's -b name
    usb_ids: tuple = ()            # (vendor, product) of the board's USB bridge, for detection

    def platform_class(self):
        """The amaranth-boards platform class; openFPGALoader is not a build requirement here
        (flashing goes through :mod:`cimstack.boards.flash`)."""
        try:
            module_name, cls_name = self.platform.split(":")
            base = getattr(importlib.import_module(f"amaranth_boards.{module_name}"), cls_name)
        except ImportError as exc:
            raise ConfigError(f"board {self.name}: amaranth-boards is not installed ({exc}); "
                              f"'make bitstream' installs it") from None

        class Platform(base):
            @property
            def required_tools(self):
                return [t for t in super().required_tools if t != "openFPGALoader"]

        Platform.__name__ = cls_name
        return Platform


BOARDS = {b.name: b for b in (
    Board(name="icebreaker", description="1BitSquared iCEBreaker (Lattice iCE40UP5K-SG48)",
          platform="icebreaker:ICEBreakerPlatform", family="ice40", clock="clk12", clock_hz=12e6,
          preset="icebreaker", leds=2, reset_button="button", bitstream_ext=".bin",
          loader_board="icebreaker", usb_ids=((0x0403, 0x6010),)),
    Board(name="ulx3s-85f", description="Radiona ULX3S 85F (Lattice ECP5 LFE5U-85F-6BG381C)",
          platform="ulx3s:ULX3S_85F_Platform", family="ecp5", clock="clk25", clock_hz=25e6,
          preset="ulx3s-85f", leds=5, reset_button="button_fire", bitstream_ext=".bit",
          loader_board="ulx3s", usb_ids=((0x0403, 0x6015),)),
)}


def board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ConfigError(f"unknown board {name!r}; boards: {', '.join(BOARDS)}") from None
