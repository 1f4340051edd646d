"""The model flow: train, compile, place, program, run, eval, tune."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from cimstack.cli.common import (
    CALIBRATION_SAMPLES,
    SAVED_SUFFIX,
    CheckFailed,
    backend_option,
    config_option,
    current,
    json_option,
    log,
    model_options,
    open_backend,
    prepare,
    report_folder,
    report_option,
    write_report,
)


def _placement_data(dep) -> dict:
    p = dep.placement
    return {"strategy": p.strategy, "tiles": p.tiles_used, "utilisation": p.utilisation(), "cost": p.cost,
            "blocks": [{"layer": b.layer, "block": b.index, "copy": b.copy, "tile": b.tile, "row": b.row, "col": b.col,
                        "rows": b.rows, "cols": b.cols, "inputs": [b.in0, b.in0 + b.rows],
                        "outputs": [b.out0, b.out0 + b.cols]} for layer in p.layers for b in layer.blocks]}


def _layers_data(dep) -> list[dict]:
    return [{"layer": layer.name, "op": layer.node.op, "in_features": layer.in_features,
             "out_features": layer.out_features, "blocks": len(layer.blocks), "copies": layer.copies,
             "mode": layer.mode, "input_range": layer.x_range, "weight_error": layer.weight_error()}
            for layer in dep.layers]


# -- train ---------------------------------------------------------------------------------------
@click.command(epilog="""\b
Examples:
  cimstack train -o build/mlp.pt                      # the digits MLP, floating point
  cimstack train --model cnn --epochs 10 -o build/cnn.pt
  cimstack train --hwa -c pcm-joshi2020 -o build/mlp-hwa.pt   # then a noise-aware fine-tune""")
@click.option("--model", "arch", default="mlp", show_default=True,
              type=click.Choice(["mlp", "cnn", "gru", "lstm", "resnet"]), help="reference network")
@click.option("--width", type=click.IntRange(1, 4096), help="hidden units (MLP, GRU, LSTM) or channels (CNN, ResNet)")
@click.option("--dataset", help="digits-flat|-image|-sequence or an .npz file (default: the digits layout the model takes)")
@click.option("--epochs", type=click.IntRange(1, 10000), help="epochs (default: the model's own, a few seconds)")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="learning rate (default: the model's own)")
@click.option("--seed", type=int, default=0, show_default=True, help="initialisation and shuffling seed")
@click.option("--hwa", is_flag=True, help="then fine-tune hardware-aware through the chip model of --config")
@click.option("--hwa-epochs", type=click.IntRange(1, 10000), default=10, show_default=True)
@config_option
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="checkpoint to write (.pt)")
@json_option
def train(arch, width, dataset, epochs, lr, seed, hwa, hwa_epochs, config, out):
    """Train a reference network on a data set and write a checkpoint the other commands take."""
    import torch

    from cimstack.training.checkpoint import save_model
    from cimstack.zoo import models
    from cimstack.zoo.datasets import load as load_dataset
    run = current()
    cls_shape = models.MODELS[arch][1]
    dataset = dataset or f"digits-{cls_shape}"
    split = load_dataset(dataset, seed=seed)
    torch.manual_seed(seed)
    model = models.build(arch, width)
    defaults = models.DEFAULTS[arch]
    run.say(f"training {arch} on {dataset} ({len(split.y_train)} samples) ...")
    try:
        stats = models.train(model, split, epochs=epochs or int(defaults["epochs"]), lr=lr or float(defaults["lr"]),
                             seed=seed, progress=run.progress)
    except RuntimeError as exc:
        raise click.UsageError(f"{arch} cannot train on {dataset}: {exc}") from None
    result = {"model": arch, "dataset": dataset, "width": width, "seed": seed, "float": stats}
    cfg = None
    if hwa:
        from cimstack.cli.common import load_config
        from cimstack.training import train_hwa
        cfg = load_config(config)
        run.say(f"hardware-aware fine-tune for {cfg.name} ...")
        result["hwa"] = train_hwa(model, split, cfg, epochs=hwa_epochs, seed=seed, progress=run.progress)
        result["config"] = cfg.name
    path = save_model(out, model, arch, dataset, width=width, hwa_config=cfg, info=result)
    result["checkpoint"] = str(path)
    lines = [f"{arch} on {dataset}: test accuracy {100 * stats['test_accuracy']:.2f} % (floating point, "
             f"{stats['epochs']} epochs, {stats['seconds']:.1f} s)"]
    if hwa:
        assert cfg is not None                  # loaded above for --hwa
        lines.append(f"hardware-aware for {cfg.name}: test accuracy {100 * result['hwa']['test_accuracy']:.2f} % "
                     f"through the chip model")
    lines.append(f"checkpoint: {path}")
    run.emit("\n".join(lines), result)


# -- compile / place -----------------------------------------------------------------------------
@click.command("compile", epilog="""\b
Examples:
  cimstack compile build/mlp.pt                       # on the default chip
  cimstack compile model.onnx --dataset digits-flat -c ulx3s-85f --json""")
@model_options
@json_option
def compile_(model, config, dataset, settings, strategy, trust_pickle):
    """Import a model, quantise it, cut it into array blocks and place them: print the layers."""
    prep = prepare(model, config, dataset, settings, strategy, trust_pickle)
    dep = prep.dep
    p = dep.placement
    human = (dep.summary() + f"\nplaced ({p.strategy}) on {len(p.tiles_used)} of {prep.cfg.array.tiles} arrays, "
             f"utilisation {100 * p.utilisation():.1f} %, {p.cost['cycles']:.0f} array cycles per sample")
    current().emit(human, {"model": prep.loaded.name, "config": prep.cfg.name,
                           "config_hash": f"{prep.cfg.datapath.config_hash:08x}", "layers": _layers_data(dep),
                           "placement": {k: v for k, v in _placement_data(dep).items() if k != "blocks"}})


@click.command(epilog="""\b
Examples:
  cimstack place build/mlp.pt                         # text map, and build/reports/place-mlp-default/
  cimstack place build/cnn.pt -c opencimtc-576x128 --strategy layer_per_array""")
@model_options
@report_option
@json_option
def place(model, config, dataset, settings, strategy, trust_pickle, report_dir):
    """Show where every weight block sits on the arrays: a table, ASCII maps and a PNG."""
    from cimstack.reports import plots
    from cimstack.reports.page import Report
    run = current()
    prep = prepare(model, config, dataset, settings, strategy, trust_pickle)
    dep = prep.dep
    maps = "\n".join(f"tile {t}:\n{dep.placement.tile_map(t)}" for t in dep.placement.tiles_used)
    report = Report(report_folder(report_dir, "place", *prep.tag), f"Placement of {prep.loaded.name} on {prep.cfg.name}")
    report.text("Layers", dep.summary())
    report.figure("placement", plots.placement_map(dep.placement),
                  "Blocks on the arrays: each rectangle one block, numbered within its layer (cN: weight copy N).",
                  heading="Placement map")
    report.text("Blocks", dep.placement.report())
    write_report(run, report)
    run.emit(dep.placement.report() + "\n" + maps,
             dict(_placement_data(dep), model=prep.loaded.name, config=prep.cfg.name, report=str(report.folder)))


# -- program / run / eval ------------------------------------------------------------------------
RUN_BATCH = 64          # samples per call into the chip: a progress step, and the same on every backend


def _batched(run, dep, x, desc: str):
    """``dep.run`` over ``x`` in fixed batches with a progress bar. The batch size is fixed
    so results do not depend on whether a terminal is attached (the chip's noise streams are
    consumed in the order of the calls)."""
    import torch
    from tqdm import tqdm
    x = torch.as_tensor(x)
    parts = [dep.run(x[i:i + RUN_BATCH]) for i in tqdm(range(0, len(x), RUN_BATCH), desc=desc, unit="batch",
                                                       disable=not run.progress, leave=False)]
    return torch.cat(parts) if parts else dep.run(x)


def _program(run, dep, be, max_pulses, tol, strict):
    run.say(f"write-verify on {be.name} ...")
    return dep.program(be, max_pulses=max_pulses, tol=tol, strict=strict, progress=run.progress)


def _program_section(report, prog, cfg):
    from cimstack.reports import plots
    report.text("Write-verify", prog.table())
    report.figure("programming", plots.programming_histograms(prog, cfg),
                  "Conductance of every programmed cell (target and after write-verify) and the final error per layer.",
                  heading="Programming")


program_options = [
    click.option("--max-pulses", type=click.IntRange(1, 65535), default=100, show_default=True,
                 help="write-verify pulse budget per cell"),
    click.option("--tol", type=click.IntRange(0, 255), help="write-verify tolerance, state LSBs (default: half a code bin)"),
    click.option("--strict", is_flag=True, help="fail (exit 1) when any cell ends out of tolerance and in use "
                 "(spare lines, where the config has them, take faulty cells out of use first)"),
    click.option("--baud", type=int, help="serial rate of a board (default: the config's clock.uart_baud)"),
]


def with_program_options(f):
    for opt in reversed(program_options):
        f = opt(f)
    return f


@click.command(epilog="""\b
Examples:
  cimstack program build/mlp.pt                       # on the physics emulator
  cimstack program build/mlp.pt -b /dev/ttyUSB0 --save build/mlp.dep   # a board; run it later from the .dep
  cimstack program build/mlp.pt -b socket://127.0.0.1:40123 --strict   # a chip behind 'cimstack sim serve'""")
@model_options
@backend_option()
@with_program_options
@click.option("--save", "save_path", type=click.Path(dir_okay=False, path_type=Path),
              help="write the deployment (codes, scales, settings, config) to this .dep file, atomically")
@report_option
@json_option
def program(model, config, dataset, settings, strategy, trust_pickle, backend, max_pulses, tol, strict, baud,
            save_path, report_dir):
    """Write-verify every placed cell and report pulses, failures and errors per layer."""
    from cimstack.reports.page import Report
    run = current()
    prep = prepare(model, config, dataset, settings, strategy, trust_pickle)
    report = Report(report_folder(report_dir, "program", *prep.tag),
                    f"Programming {prep.loaded.name} on {prep.cfg.name}", f"backend {backend}")
    from cimstack.errors import ConfigError
    if save_path is not None and save_path.suffix != SAVED_SUFFIX:
        raise ConfigError(f"--save {save_path}: a saved deployment's name ends in {SAVED_SUFFIX}")
    with open_backend(run, backend, prep.cfg, baud) as be:
        prog = _program(run, prep.dep, be, max_pulses, tol, strict)
    if save_path is not None:
        prep.dep.info.update(dataset=dataset or prep.loaded.dataset, model=str(model))
        prep.dep.save(save_path)
        run.say(f"deployment saved to {save_path}")
    _program_section(report, prog, prep.cfg)
    write_report(run, report)
    run.emit(prog.table(), dict(prog.as_dict(), model=prep.loaded.name, config=prep.cfg.name,
                                report=str(report.folder)))


@click.command("run", epilog="""\b
Examples:
  cimstack run build/mlp.pt --input x.npy -o y.npy    # program the emulator, run x through it
  cimstack run build/mlp.pt -b socket://127.0.0.1:40123 --no-program --input x.npy -o y.npy""")
@model_options
@backend_option()
@with_program_options
@click.option("--input", "input_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help=".npy batch of model inputs (samples first)")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help=".npy file for the outputs")
@click.option("--no-program", is_flag=True, help="the chip already holds this deployment ('cimstack program' on a device)")
@json_option
def run_(model, config, dataset, settings, strategy, trust_pickle, backend, max_pulses, tol, strict, baud,
         input_path, out, no_program):
    """Run a batch of inputs through the programmed model on a backend."""
    from cimstack.errors import InputRangeError
    run = current()
    try:
        x = np.load(input_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:           # EOFError: an empty or truncated file
        raise InputRangeError(f"{input_path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise InputRangeError(f"{input_path}: holds {x.dtype} values, not numbers")
    prep = prepare(model, config, dataset, settings, strategy, trust_pickle)
    dep = prep.dep
    dep._check_input(x)                        # shape and NaN errors before any chip time is spent
    with open_backend(run, backend, prep.cfg, baud) as be:
        if no_program:
            dep.attach(be)
        else:
            _program(run, dep, be, max_pulses, tol, strict)
        t0 = time.perf_counter()
        y = _batched(run, dep, x, f"run on {backend}").numpy()
        seconds = time.perf_counter() - t0
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, y)
    pred = y.argmax(-1) if y.ndim == 2 else None
    human = f"{len(x)} samples through {prep.loaded.name} on {backend} in {seconds:.2f} s" + \
            (f"; outputs written to {out}" if out else "") + \
            (f"\npredicted classes: {' '.join(map(str, pred[:32]))}{' ...' if len(pred) > 32 else ''}" if pred is not None else "")
    run.emit(human, {"samples": len(x), "seconds": seconds, "output_shape": list(y.shape), "out": str(out) if out else None,
                     "predicted": pred.tolist() if pred is not None else None})


SWEEP_NOISE = (0.0, 0.01, 0.02, 0.05, 0.1)                         # device.read_noise_sigma
SWEEP_TIMES = (1.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0)   # seconds after programming


def _sweep(run, prep, x, y, chips: int) -> tuple[dict, dict]:
    """Test accuracy on emulator chips against read noise and against time after programming."""
    from tqdm import tqdm

    import cimstack
    from cimstack.backends import EmulatorBackend
    cfg = prep.cfg
    noise = np.zeros((chips, len(SWEEP_NOISE)))
    drift = np.zeros((chips, len(SWEEP_TIMES)))
    bar = tqdm(total=chips * (len(SWEEP_NOISE) + 1), desc="sweep", disable=not run.progress, leave=False)
    for k in range(chips):
        for j, sigma in enumerate(SWEEP_NOISE):
            c = cfg.replace(device={"read_noise_sigma": sigma})
            dep = cimstack.compile(prep.loaded.model, c, example=prep.split.x_train[:CALIBRATION_SAMPLES],
                                   strategy=prep.dep.placement.strategy, settings=_retarget(prep.dep.settings(), c),
                                   seed=cfg.seed + k)
            dep.program(EmulatorBackend(c))
            noise[k, j] = dep.accuracy(x, y)
            bar.update(1)
        be = EmulatorBackend(cfg)
        dep = prep.dep
        dep.seed = cfg.seed + k
        dep.program(be)
        for j, t in enumerate(SWEEP_TIMES):
            be.t = max(t, cfg.device.drift_t0_s)
            drift[k, j] = dep.accuracy(x, y)
        bar.update(1)
    bar.close()
    prep.dep.seed = cfg.seed
    d = cfg.device
    drifts = d.model == "pcm" or d.drift_nu > 0
    sweeps = {"read noise": {"x": list(SWEEP_NOISE), "accuracy": noise.tolist(),
                             "xlabel": "per-cell read noise σ / G (device.read_noise_sigma)"},
              "drift" if drifts else "drift (this config has none: device.drift_nu = 0)":
                  {"x": list(SWEEP_TIMES), "accuracy": drift.tolist(), "log": True,
                   "xlabel": "time after programming (s)"}}
    return sweeps, {"noise_levels": list(SWEEP_NOISE), "noise_accuracy": noise.mean(0).tolist(),
                    "times_s": list(SWEEP_TIMES), "drift_accuracy": drift.mean(0).tolist(), "chips": chips}


def _retarget(settings, cfg):
    """The same per-layer settings, for a config that differs only in the emulator's physics."""
    from dataclasses import replace
    return replace(settings, config_name=cfg.name, config_hash=cfg.datapath.config_hash)


@click.command("eval", epilog="""\b
Examples:
  cimstack eval build/mlp.pt                          # emulator: float, quantised and chip accuracy
  cimstack eval build/mlp.pt --sweep --chips 3        # plus accuracy against read noise and drift
  cimstack eval build/mlp.pt -b sim --samples 100 --min-accuracy 0.85   # on the Verilated SoC""")
@model_options
@backend_option()
@with_program_options
@click.option("--samples", type=click.IntRange(1), help="test samples (default: the whole test split)")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="exit 1 when the chip's accuracy is below this")
@click.option("--sweep", is_flag=True, help="also sweep read noise and drift on emulator chips (plot in the report)")
@click.option("--chips", type=click.IntRange(1, 100), default=3, show_default=True, help="emulator chip instances per sweep point")
@click.option("--no-program", is_flag=True, help="the chip already holds this deployment ('cimstack program' on a device)")
@report_option
@json_option
def eval_(model, config, dataset, settings, strategy, trust_pickle, backend, max_pulses, tol, strict, baud,
          samples, min_accuracy, sweep, chips, no_program, report_dir):
    """Program a backend and measure test accuracy against the floating-point and quantised model."""
    from cimstack.errors import ConfigError
    from cimstack.reports import plots
    from cimstack.reports.page import Report
    from cimstack.zoo.models import accuracy
    run = current()
    prep = prepare(model, config, dataset, settings, strategy, trust_pickle)
    dep, split = prep.dep, prep.split
    x, y = split.x_test, split.y_test
    if samples:
        x, y = x[:samples], y[:samples]
    result = {"model": prep.loaded.name, "config": prep.cfg.name, "backend": backend, "samples": len(x),
              "float_accuracy": accuracy(dep.reference(x), x, y), "quantised_accuracy": accuracy(dep.quantised(x), x, y)}
    report = Report(report_folder(report_dir, "eval", *prep.tag),
                    f"Accuracy of {prep.loaded.name} on {prep.cfg.name}", f"backend {backend}, {len(x)} test samples")
    with open_backend(run, backend, prep.cfg, baud) as be:
        prog = None
        if no_program:
            dep.attach(be)
        else:
            prog = _program(run, dep, be, max_pulses, tol, strict)
        run.say(f"running {len(x)} test samples on {backend} ...")
        t0 = time.perf_counter()
        result["chip_accuracy"] = accuracy(_batched(run, dep, x, f"eval on {backend}"), x, y)
        result["run_seconds"] = time.perf_counter() - t0
    if prog is not None:
        result["programming"] = {k: v for k, v in prog.as_dict().items() if k != "layers"}
    report.facts("Accuracy", {"floating point": result["float_accuracy"], "quantised, ideal VMMs": result["quantised_accuracy"],
                              f"chip ({backend})": result["chip_accuracy"], "test samples": len(x)})
    if sweep:
        if prep.loaded.model is None:
            raise ConfigError(f"--sweep recompiles the model for each noise level: give the model file, not {model}")
        run.say(f"sweeping read noise and drift on {chips} emulator chip(s) ...")
        sweeps, result["sweep"] = _sweep(run, prep, x, y, chips)
        report.figure("accuracy", plots.accuracy_sweep(
            sweeps, {"floating point": result["float_accuracy"], "quantised, ideal": result["quantised_accuracy"]}),
            f"Test accuracy on emulator chips (mean, min..max over {chips}) against per-cell read noise and "
            f"against time after programming.", heading="Accuracy against noise and drift")
    if prog is not None:
        _program_section(report, prog, prep.cfg)
    report.text("Layers", dep.summary())
    write_report(run, report)
    result["report"] = str(report.folder)
    lines = [f"accuracy of {prep.loaded.name} on {len(x)} test samples:",
             f"  floating point          {100 * result['float_accuracy']:6.2f} %",
             f"  quantised, ideal VMMs   {100 * result['quantised_accuracy']:6.2f} %",
             f"  {f'chip ({backend})':<24s}{100 * result['chip_accuracy']:6.2f} %"]
    if sweep:
        sw = result["sweep"]
        lines.append("  read noise σ:  " + "  ".join(f"{s:g}: {100 * a:.1f} %" for s, a in zip(sw["noise_levels"], sw["noise_accuracy"])))
        lines.append("  drift, t (s):  " + "  ".join(f"{t:.0e}: {100 * a:.1f} %" for t, a in zip(sw["times_s"], sw["drift_accuracy"])))
    run.emit("\n".join(lines), result)
    if min_accuracy is not None and result["chip_accuracy"] < min_accuracy:
        raise CheckFailed(f"chip accuracy {100 * result['chip_accuracy']:.2f} % is below --min-accuracy "
                          f"{100 * min_accuracy:.2f} %")


# -- tune ----------------------------------------------------------------------------------------
@click.command(epilog="""\b
Examples:
  cimstack tune build/mlp.pt -o build/mlp.settings.json
  cimstack eval build/mlp.pt --settings build/mlp.settings.json     # run with them""")
@model_options
@click.option("--method", default="genetic", show_default=True, type=click.Choice(["genetic", "coordinate"]),
              help="search algorithm")
@click.option("--budget", type=click.IntRange(1), help="objective evaluations per layer (default: the searcher's own)")
@click.option("--layers", help="comma-separated layers to tune (default: all)")
@click.option("--copies", default="1,2,4", show_default=True,
              help="weight copies to try per layer, comma-separated (1 keeps the placement as it is)")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="settings file to write (JSON; compile/eval take it with --settings)")
@report_option
@json_option
def tune(model, config, dataset, settings, strategy, trust_pickle, method, budget, layers, copies, out, report_dir):
    """Search each layer's ADC gain/offset, input mode, input range and weight copies on emulator chips."""
    from cimstack.reports import plots
    from cimstack.reports.page import Report
    from cimstack.tuning import Tuner
    run = current()
    prep = prepare(model, config, dataset, settings, strategy, trust_pickle)
    try:
        copies = tuple(int(c) for c in copies.split(","))
    except ValueError:
        raise click.BadParameter(f"{copies!r} is not a comma-separated list of integers", param_hint="--copies") from None
    tuner = Tuner(prep.dep, prep.split.x_train[:CALIBRATION_SAMPLES], copies=copies)
    names = [n.strip() for n in layers.split(",")] if layers else None
    run.say(f"tuning {len(names or prep.dep.layers)} layer(s) with the {method} search ...")
    tr = tuner.tune(method, layers=names, progress=run.progress, **({"budget": budget} if budget else {}))
    tr.settings.save(out)
    log.info("settings written to %s", out)
    report = Report(report_folder(report_dir, "tune", *prep.tag), f"Tuning {prep.loaded.name} on {prep.cfg.name}",
                    f"{method} search")
    report.figure("tuning", plots.tuning_errors(tr), "Per-layer NMSE of the layer's output against floating point.",
                  heading="Per-layer error before and after tuning")
    report.text("Settings", tr.table())
    write_report(run, report)
    run.emit(tr.table() + f"\nsettings: {out}", dict(tr.as_dict(), out=str(out), report=str(report.folder)))
    # each layer's copies were chosen for that layer alone: check that they fit together
    import cimstack
    from cimstack.errors import PlacementError
    try:
        cimstack.compile(prep.loaded.model, prep.cfg, example=prep.split.x_train[:CALIBRATION_SAMPLES],
                         strategy=strategy, settings=tr.settings)
    except PlacementError as exc:
        raise CheckFailed(f"the tuned weight copies do not fit on the chip together ({exc}); "
                          f"tune again with fewer --copies, e.g. --copies 1") from None


COMMANDS = [train, compile_, place, program, run_, eval_, tune]
