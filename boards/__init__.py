"""FPGA board targets: the SoC with clocking, reset, UART and status LEDs for each supported
board (:mod:`.targets`), bitstream builds with the YoWASP tools and their resource/timing
report (:mod:`.build`), and programming a board (:mod:`.flash`). See docs/boards.md.

``cimstack bitstream`` / ``cimstack flash`` / ``cimstack boards`` (and ``make bitstream`` / ``make flash``) run them.
"""
from cimstack.boards.targets import BOARDS, Board, board

__all__ = ["BOARDS", "Board", "board"]
