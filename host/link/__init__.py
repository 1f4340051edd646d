"""The host's side of the chip's byte link: requests with retries over a socket or serial port
(:mod:`.transport`), the SoC client that speaks the register map over it (:mod:`.client`), and
fault injection for testing both (:mod:`.faults`)."""
from cimstack.link.client import Device
from cimstack.link.faults import Faults, FaultyPort
from cimstack.link.transport import Link

__all__ = ["Link", "Device", "Faults", "FaultyPort"]
