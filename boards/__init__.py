"""FPGA board targets: the SoC with clocking, reset, UART and status LEDs for each supported
board (:mod:`.targets`), bitstream builds with the YoWASP tools and their resource/timing
report (:mod:`.build`), and programming a board (:mod:`.flash`). See docs/boards.md.

``python -m cimstack.boards build|flash|list`` is what ``make bitstream`` / ``make flash`` run.
"""
from .targets import BOARDS, Board, board

__all__ = ["BOARDS", "Board", "board"]
