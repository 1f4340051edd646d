"""What the ``cimstack`` commands share: options, exit codes, output, and the steps from a
model file to a compiled deployment on an opened backend."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cimstack.errors import (
    BuildError,
    CimstackError,
    ConfigMismatchError,
    DeviceError,
    FlashError,
    LinkError,
    ProgrammingError,
    SimulationError,
)

if TYPE_CHECKING:                # for annotations only: these import torch, and the command line starts without it
    from cimstack.chip.config import ChipConfig
    from cimstack.runtime.deployment import Deployment
    from cimstack.training.checkpoint import LoadedModel
    from cimstack.zoo.datasets import Split

log = logging.getLogger("cimstack")

#: exit codes (``cimstack --help`` lists them)
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_HARDWARE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: errors of the machine side (a link, a device, a tool) rather than of what the user gave
HARDWARE_ERRORS = (LinkError, DeviceError, SimulationError, BuildError, FlashError, ConfigMismatchError)
CALIBRATION_SAMPLES = 256
SAVED_SUFFIX = ".dep"            # a saved deployment (cimstack.runtime.saved), accepted where a model is


class CheckFailed(CimstackError):
    """The job ran, but its result failed a check the user asked for (exit code 1)."""


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, (CheckFailed, ProgrammingError)):
        return EXIT_CHECK_FAILED
    if isinstance(exc, HARDWARE_ERRORS):
        return EXIT_HARDWARE
    return EXIT_BAD_INPUT


@dataclass
class Run:
    """Per-invocation state: verbosity and whether progress bars are drawn."""

    verbose: int = 0
    quiet: bool = False
    json: bool = False

    @property
    def progress(self) -> bool:
        """Bars on an interactive terminal only, never with --json or --quiet."""
        return not (self.quiet or self.json) and sys.stderr.isatty()

    def say(self, message: str) -> None:
        """A status line (stderr, so stdout stays the result)."""
        if not self.quiet:
            click.echo(message, err=True)

    def emit(self, human: str, data: dict) -> None:
        """The command's result: ``data`` as JSON with --json, else the human text."""
        if self.json:
            from cimstack.reports.page import json_default
            click.echo(json.dumps(data, indent=1, default=json_default))
        elif human:
            click.echo(human)


def current() -> Run:
    return click.get_current_context().find_object(Run) or Run()


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


# -- options -------------------------------------------------------------------------------------
def json_option(f):
    def set_json(ctx, _param, value):
        if value:
            ctx.ensure_object(Run).json = True
        return value
    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=set_json,
                        help="print the result as one JSON object on stdout")(f)


def config_option(f):
    return click.option("-c", "--config", "config", default="default", show_default=True, metavar="NAME|FILE",
                        help="chip config: a preset name or a TOML file")(f)


def model_options(f):
    """MODEL plus what turns it into a deployment: data set, settings, placement strategy."""
    for opt in reversed([
        click.argument("model", type=click.Path(dir_okay=False, path_type=Path), metavar="MODEL|DEPLOYMENT.dep"),
        config_option,
        click.option("--dataset", metavar="NAME|FILE.npz",
                     help="data for calibration and evaluation (default: the one the model was trained on; "
                          "digits-flat, digits-image, digits-sequence or an .npz file)"),
        click.option("--settings", "settings", type=click.Path(dir_okay=False, path_type=Path),
                     help="per-layer hardware settings from 'cimstack tune'"),
        click.option("--strategy", default="auto", show_default=True,
                     help="placement strategy: auto, skyline or layer_per_array"),
        click.option("--trust-pickle", is_flag=True,
                     help="accept a whole pickled torch.nn.Module (unpickling runs code from the file)"),
    ]):
        f = opt(f)
    return f


def backend_option(default: str = "emulator"):
    return click.option("-b", "--backend", default=default, show_default=True, metavar="BACKEND",
                        help="emulator (physics), golden (bit-exact integer model), sim (start the Verilated "
                             "SoC here), or a link: socket://HOST:PORT (cimstack sim serve), /dev/ttyUSB0 (a board)")


def report_option(f):
    return click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
                        help="folder for report.html and its PNGs (default build/reports/<command>-<model>-<config>)")(f)


def report_folder(given: Path | None, command: str, *names: str) -> Path:
    return given if given is not None else Path("build/reports") / "-".join((command,) + names)


# -- from files to a deployment ------------------------------------------------------------------
@dataclass
class Prepared:
    cfg: ChipConfig
    loaded: LoadedModel
    split: Split
    dep: Deployment

    @property
    def tag(self) -> tuple[str, str]:
        return self.loaded.name, self.cfg.name


def load_config(spec: str):
    from cimstack.chip.config import load
    return load(spec)


def prepare(model: Path, config: str, dataset: str | None, settings: Path | None, strategy: str,
            trust_pickle: bool) -> Prepared:
    """Load the config, the model and its data, and compile (import, quantise, place)."""
    import cimstack
    from cimstack.errors import ConfigError
    from cimstack.training.checkpoint import load_model
    from cimstack.zoo.datasets import load as load_dataset
    if model.suffix == SAVED_SUFFIX:
        return _prepare_saved(model, config, dataset, settings, strategy)
    cfg = load_config(config)
    loaded = load_model(model, trust_pickle=trust_pickle)
    spec = dataset or loaded.dataset
    if spec is None:
        raise ConfigError(f"{model} does not say what data it takes: give --dataset "
                          f"(digits-flat, digits-image, digits-sequence or an .npz file)")
    split = load_dataset(spec)
    t0 = time.perf_counter()
    dep = cimstack.compile(loaded.model, cfg, example=split.x_train[:CALIBRATION_SAMPLES], strategy=strategy,
                           settings=settings)
    log.info("compiled %s for %s in %.2f s", loaded.name, cfg.name, time.perf_counter() - t0)
    return Prepared(cfg, loaded, split, dep)


def _prepare_saved(path: Path, config: str, dataset: str | None, settings: Path | None, strategy: str) -> Prepared:
    """A deployment ``program --save`` wrote: its own config, placement and settings."""
    from click.core import ParameterSource

    from cimstack.errors import ConfigError
    from cimstack.runtime.saved import load_deployment
    from cimstack.training.checkpoint import LoadedModel
    from cimstack.zoo.datasets import load as load_dataset
    dep = load_deployment(path)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("config") != ParameterSource.DEFAULT and load_config(config) != dep.cfg:
        raise ConfigError(f"{path} was saved for chip config {dep.cfg.name!r}, not {config!r}: leave out --config")
    if settings is not None or strategy != "auto":
        raise ConfigError(f"{path} is a saved deployment with its own placement and settings: "
                          f"--settings and --strategy apply to model files")
    spec = dataset or dep.info.get("dataset")
    if spec is None:
        raise ConfigError(f"{path} does not say what data it takes: give --dataset")
    return Prepared(dep.cfg, LoadedModel(None, path.stem, spec, dict(dep.info)), load_dataset(spec), dep)


@contextlib.contextmanager
def busy(run: Run, desc: str):
    """An elapsed-time line on the terminal for a step that reports no progress of its own
    (a Verilator or nextpnr build); not with -v, which shows the tools' own output."""
    if not run.progress or run.verbose:
        yield
        return
    from tqdm import tqdm
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", leave=False)
    stop = threading.Event()

    def tick():
        while not stop.wait(1.0):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()


@contextlib.contextmanager
def open_backend(run: Run, spec: str, cfg, baudrate: int | None = None):
    """The backend named by ``spec``; ``sim`` starts (and at the end stops) the simulation server."""
    from cimstack.backends import DeviceBackend, EmulatorBackend, GoldenBackend
    from cimstack.errors import ConfigError
    if spec == "emulator":
        yield EmulatorBackend(cfg)
    elif spec == "golden":
        yield GoldenBackend(cfg)
    elif spec == "sim":
        from cimstack.sim.server import SimServer
        run.say(f"starting the simulated SoC for {cfg.name} (the first run for a config builds it with "
                f"Verilator: a few minutes) ...")
        with busy(run, "Verilator build"):
            server = SimServer(cfg)
        with server:
            log.info("simulation server at %s", server.url)
            with DeviceBackend(server.url, cfg) as be:
                yield be
    elif "://" in spec or spec.startswith(("/dev/", "COM")):
        with DeviceBackend(spec, cfg, baudrate=baudrate or cfg.clock.uart_baud) as be:
            yield be
    else:
        raise ConfigError(f"unknown backend {spec!r}: use emulator, golden, sim, socket://HOST:PORT or a serial port")


def write_report(run: Run, report) -> None:
    path = report.write()
    run.say(f"report: {path}")
