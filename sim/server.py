"""The simulation server: the whole SoC Verilated into a C++ program (``server/cim_server.cpp``,
no per-cycle Python) that exposes the SoC's byte link on a TCP socket. Host code opens
``socket://127.0.0.1:<port>`` with pyserial exactly as it would open a board's serial port.

``cimstack sim serve --config NAME|FILE --port P`` runs :func:`serve`; tests and benchmarks
use :class:`SimServer` as a context manager.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

from cimstack.chip.config import ChipConfig
from cimstack.errors import SimulationError
from cimstack.gen.verilog import SOC_TOP, soc_verilog
from cimstack.sim.pty import PtyBridge
from cimstack.sim.verilator import verilator_env

__all__ = ["build_server", "SimServer", "serve"]

SOURCE = Path(__file__).with_name("server") / "cim_server.cpp"
BINARY = "cim_server"
LISTEN_RE = re.compile(r"listening on ([0-9.]+):(\d+)")


def build_server(cfg: ChipConfig, build_root: str | Path = "build/server", verbose: bool = False) -> Path:
    """Generate the SoC (stream PHY), Verilate it with the C++ harness and return the binary.

    Rebuilds only when the generated Verilog or the harness changed (a stamp of both hashes).
    """
    build_dir = Path(build_root).resolve() / cfg.name
    build_dir.mkdir(parents=True, exist_ok=True)
    verilog = soc_verilog(cfg, "stream")
    stamp = hashlib.sha256(verilog.encode() + SOURCE.read_bytes()).hexdigest()
    binary = build_dir / "obj" / BINARY
    stamp_file = build_dir / "stamp"
    if binary.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return binary
    vfile = build_dir / f"{SOC_TOP}_stream.v"
    vfile.write_text(verilog)
    env = {**os.environ, **verilator_env()}
    jobs = str(max(1, os.cpu_count() or 1))
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", jobs, "-O2", "-Wno-fatal",
           "--top-module", SOC_TOP, "--Mdir", str(build_dir / "obj"), "-o", BINARY,
           "-CFLAGS", "-O2", str(vfile), str(SOURCE)]
    log = build_dir / "build.log"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not binary.exists():
        raise SimulationError(f"building the simulation server for {cfg.name} failed "
                              f"(exit {proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    stamp_file.write_text(stamp)
    return binary


class SimServer:
    """Runs the server as a child process; ``url`` is the pyserial URL to open.

    ``stats`` (after :meth:`stop`) holds the server's summary: simulated cycles, wall time
    spent clocking, bytes in and out.
    """

    def __init__(self, cfg: ChipConfig, port: int = 0, host: str = "127.0.0.1",
                 build_root: str | Path = "build/server", start_timeout: float = 30.0):
        self.cfg = cfg
        self.binary = build_server(cfg, build_root)
        self.stats_file = self.binary.parent.parent / f"stats-{os.getpid()}-{id(self)}.json"
        self.proc = subprocess.Popen(
            [str(self.binary), "--port", str(port), "--host", host, "--stats", str(self.stats_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None      # both PIPE
        with selectors.DefaultSelector() as ready:     # a server that hangs before listening is named
            ready.register(self.proc.stdout, selectors.EVENT_READ)
            line = self.proc.stdout.readline() if ready.select(start_timeout) else \
                f"no answer within {start_timeout:g} s"
        match = LISTEN_RE.search(line)
        if not match:
            self.proc.kill()
            err = self.proc.stderr.read()
            self.proc.wait()
            raise SimulationError(f"simulation server did not start: {line.strip()} {err.strip()}")
        self.host, self.port = match.group(1), int(match.group(2))
        self.stats: dict = {}

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        if self.stats_file.exists():
            self.stats = json.loads(self.stats_file.read_text())
            self.stats_file.unlink()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(cfg: ChipConfig, port: int = 0, host: str = "127.0.0.1", pty: bool = False) -> None:
    """Run the server in the foreground until Ctrl-C (or SIGTERM); with ``pty`` also offer the
    link on a pseudo-terminal, to be opened like a board's serial port."""
    print(f"building the simulation server for {cfg.name} ...", flush=True)
    server = SimServer(cfg, port, host)
    print(f"cimstack sim server ({cfg.name}, config hash 0x{cfg.datapath.config_hash:08x}) "
          f"listening on {server.host}:{server.port}  ->  {server.url}", flush=True)
    bridge = None
    if pty:
        bridge = PtyBridge(server.url)
        print(f"serial port (pseudo-terminal): {bridge.path}", flush=True)
    stop = {"now": False}

    def handler(signum, frame):
        stop["now"] = True

    # Ctrl-C and SIGTERM stop the server the same way; SIGINT is handled here rather than as
    # KeyboardInterrupt, which a process started in the background (SIGINT ignored) never sees
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop["now"] and server.proc.poll() is None:
            time.sleep(0.2)
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
        if bridge is not None:
            bridge.close()
        server.stop()
    if server.stats:
        print(f"stopped after {server.stats['cycles']} simulated cycles", flush=True)
