"""The figures of cimstack's reports (matplotlib, drawn off-screen). Each function returns a
``matplotlib.figure.Figure``; :meth:`cimstack.reports.page.Report.figure` saves it."""
from __future__ import annotations

import numpy as np

from cimstack.chip.config import ChipConfig
from cimstack.physics.devices import level_step_us

__all__ = ["placement_map", "programming_histograms", "accuracy_sweep", "tuning_errors", "resources"]


def _pyplot():
    """pyplot, imported on first use: matplotlib takes a second to load and most commands draw nothing."""
    import matplotlib  # see the docstring: loaded on first use
    matplotlib.use("Agg")            # no display: reports are files
    import matplotlib.pyplot as plt
    return plt


def _layer_colours(names: list[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def placement_map(placement) -> object:
    """Every tile used, to scale: each block a rectangle in its layer's colour, labelled with
    the block number (and copy); empty cells white."""
    plt = _pyplot()
    from matplotlib.patches import Patch, Rectangle  # with pyplot, on first use
    a = placement.cfg.array
    tiles = placement.tiles_used or [0]
    cols = min(len(tiles), 4)
    nrows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols + 1.8, 3.2 * nrows * a.rows / max(a.cols, 1) + 0.6),
                             squeeze=False)
    colours = _layer_colours([layer.name for layer in placement.layers])
    for ax, t in zip(axes.flat, tiles):
        ax.set_xlim(0, a.cols)
        ax.set_ylim(a.rows, 0)
        ax.set_aspect("equal")
        ax.set_title(f"tile {t}: {100 * placement.utilisation(t):.0f} % used", fontsize=9)
        ax.set_xlabel("weight column", fontsize=8)
        ax.set_ylabel("row", fontsize=8)
        ax.tick_params(labelsize=7)
        for layer in placement.layers:
            for b in layer.blocks:
                if b.tile != t:
                    continue
                ax.add_patch(Rectangle((b.col, b.row), b.cols, b.rows, facecolor=colours[layer.name],
                                       edgecolor="black", linewidth=0.6, alpha=0.85))
                label = f"{b.index}" + (f"c{b.copy}" if b.copy else "")
                ax.text(b.col + b.cols / 2, b.row + b.rows / 2, label, ha="center", va="center", fontsize=7)
    for ax in list(axes.flat)[len(tiles):]:
        ax.axis("off")
    fig.legend(handles=[Patch(facecolor=c, edgecolor="black", label=n) for n, c in colours.items()],
               loc="center right", fontsize=8, title="layer", title_fontsize=8)
    fig.suptitle(f"placement ({placement.strategy}) on {placement.cfg.name}: {len(placement.tiles_used)} of "
                 f"{a.tiles} arrays of {a.rows}x{a.cols}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.82, 0.95))
    return fig


def programming_histograms(report, cfg: ChipConfig):
    """Left: target and programmed conductance of every programmed cell. Right: the final
    write-verify error (last read minus target) per layer, in state LSBs."""
    plt = _pyplot()
    frac, step = float(1 << cfg.cell.frac_bits), level_step_us(cfg)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    targets = np.concatenate([report.targets[n] for n in report.targets]) if report.targets else np.zeros(0)
    errors = np.concatenate([report.errors[n] for n in report.errors]) if report.errors else np.zeros(0)
    g_target = cfg.device.g_min_us + targets / frac * step
    g_prog = cfg.device.g_min_us + (targets + errors) / frac * step
    bins = np.linspace(min(cfg.device.g_min_us, g_prog.min(initial=0)), max(cfg.device.g_max_us, g_prog.max(initial=1)), 80)
    left.hist(g_target, bins=bins, alpha=0.55, label="target", color="tab:blue")
    left.hist(g_prog, bins=bins, histtype="step", linewidth=1.3, label="programmed", color="tab:red")
    left.set_xlabel("conductance (µS)")
    left.set_ylabel("cells")
    left.set_yscale("log")
    left.legend(fontsize=8)
    left.set_title(f"{len(targets)} cells on {report.backend}", fontsize=9)
    colours = _layer_colours(list(report.errors))
    lo = int(np.floor(errors.min(initial=0))) - 1
    hi = int(np.ceil(errors.max(initial=0))) + 1
    ebins = np.arange(lo, hi + 1) - 0.5 if hi - lo <= 80 else 80
    right.hist([report.errors[n] for n in report.errors], bins=ebins, stacked=True,
               color=[colours[n] for n in report.errors], label=list(report.errors))
    tol = max((1 << (cfg.cell.frac_bits - 1)) - 1, 0) if cfg.cell.frac_bits else 0
    for x in (-tol - 0.5, tol + 0.5):
        right.axvline(x, color="black", linestyle=":", linewidth=1)
    right.set_xlabel("final error (state LSBs; dotted: default tolerance)")
    right.set_ylabel("cells")
    right.set_yscale("log")
    right.legend(fontsize=8)
    right.set_title(f"programming error: {report.failed_cells} cells out of tolerance", fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_sweep(sweeps: dict[str, dict], reference: dict[str, float]):
    """One panel per swept quantity: ``sweeps[name] = {"x": [...], "accuracy": [[...] per
    chip instance], "xlabel": str, "log": bool}``; ``reference`` draws horizontal lines
    (floating point, the quantised model)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.2 * len(sweeps), 3.8), squeeze=False)
    for ax, (name, sw) in zip(axes.flat, sweeps.items()):
        acc = 100 * np.asarray(sw["accuracy"], dtype=float)          # (instances, points)
        x = np.asarray(sw["x"], dtype=float)
        xs = np.where(x > 0, x, np.nan) if sw.get("log") else x
        mean = acc.mean(axis=0)
        ax.plot(xs, mean, "o-", color="tab:red", label="chip (emulator), mean")
        if acc.shape[0] > 1:
            ax.fill_between(xs, acc.min(axis=0), acc.max(axis=0), color="tab:red", alpha=0.2,
                            label=f"min..max over {acc.shape[0]} chips")
        for (label, value), style in zip(reference.items(), ("--", ":", "-.")):
            ax.axhline(100 * value, color="black", linestyle=style, linewidth=1, label=label)
        if sw.get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(sw["xlabel"])
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def tuning_errors(report):
    """Per-layer NMSE against floating point before and after tuning (log scale)."""
    plt = _pyplot()
    names = [r.layer for r in report.layers]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
    ax.bar(x - 0.2, [r.before.nmse for r in report.layers], 0.4, label="before", color="tab:gray")
    ax.bar(x + 0.2, [r.after.nmse for r in report.layers], 0.4, label="after", color="tab:green")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("NMSE against floating point")
    ax.set_title(f"{report.stage} tuning ({report.searcher}): {report.evaluations} evaluations", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def resources(report):
    """A bitstream build's FPGA resource use, in per cent of the device, and its fmax."""
    plt = _pyplot()
    names = [n for n, r in report.resources.items() if r.get("available")]
    share = [100 * report.resources[n]["used"] / report.resources[n]["available"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.4))
    bars = ax.barh(names, share, color=["tab:red" if s > 90 else "tab:blue" for s in share])
    for bar, n in zip(bars, names):
        r = report.resources[n]
        ax.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2, f"{r['used']} / {r['available']}",
                va="center", fontsize=8)
    ax.set_xlim(0, 115)
    ax.set_xlabel("used (% of the device)")
    ax.invert_yaxis()
    fmax = f"{report.fmax_mhz:.1f}" if report.fmax_mhz else "?"
    ax.set_title(f"{report.board} ({report.device}): fmax {fmax} MHz, target {report.target_mhz:.1f} MHz", fontsize=10)
    fig.tight_layout()
    return fig
