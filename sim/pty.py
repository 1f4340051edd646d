"""The simulated SoC on a pseudo-terminal: a tty device that behaves like a board's USB-serial
port, so the host's serial path (pyserial opening ``/dev/pts/N``, termios settings, reads
with timeouts) runs against the simulation server exactly as it would against a board.

:class:`PtyBridge` copies bytes both ways between the pty's master side and the server's
TCP socket on a background thread; ``path`` is the tty to open. ``cimstack sim serve --pty``
uses it.
"""
from __future__ import annotations

import os
import pty
import select
import socket
import threading
import tty
from urllib.parse import urlparse

from cimstack.errors import LinkError

__all__ = ["PtyBridge"]


class PtyBridge:
    """A pseudo-terminal wired to a ``socket://host:port`` link."""

    def __init__(self, url: str, connect_timeout: float = 5.0):
        parsed = urlparse(url)
        if parsed.scheme != "socket" or not parsed.hostname or not parsed.port:
            raise LinkError(f"a pty bridge needs a socket://host:port URL, got {url!r}")
        try:
            self._sock = socket.create_connection((parsed.hostname, parsed.port), timeout=connect_timeout)
        except OSError as exc:
            raise LinkError(f"cannot reach {url}: {exc}") from None
        self._sock.setblocking(False)
        self.url = url
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)            # no echo, no line discipline: bytes pass unchanged
        self.path = os.ttyname(self._slave)
        self.bytes_to_device = self.bytes_from_device = 0
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._pump, name=f"pty-bridge {self.path}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        to_sock = b""
        while True:
            readable, _, _ = select.select([self._master, self._sock, self._stop_r], [], [], 0.5)
            if self._stop_r in readable:
                return
            if self._master in readable:
                try:
                    to_sock += os.read(self._master, 4096)
                except OSError:            # the client closed its side; keep serving the next one
                    pass
            if self._sock in readable:
                try:
                    data = self._sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data == b"":            # the server went away: the tty goes quiet, like a dead board
                    return
                if data:
                    self.bytes_from_device += len(data)
                    os.write(self._master, data)
            while to_sock:
                try:
                    sent = self._sock.send(to_sock)
                except (BlockingIOError, InterruptedError):
                    select.select([], [self._sock], [], 0.5)
                    continue
                except OSError:
                    return
                self.bytes_to_device += sent
                to_sock = to_sock[sent:]

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(5)
        for fd in (self._master, self._slave, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._sock.close()

    def __enter__(self) -> PtyBridge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
