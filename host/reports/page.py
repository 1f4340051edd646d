"""Reports a person looks at: one static HTML page per run, with its PNGs beside it.

Every ``cimstack`` command that produces figures writes a folder (``--report``, by default
``build/reports/<command>-<model>-<config>/``) holding ``report.html`` and one PNG per figure,
and ``report.json`` with the same facts for scripts. The page has no scripts and no external
assets: it opens from disk, in a CI artefact or attached to an e-mail.

The figures themselves are in :mod:`cimstack.reports.plots`.
"""
from __future__ import annotations

import datetime
import html
import json
from pathlib import Path

import numpy as np

from cimstack.files import atomic_write

__all__ = ["Report", "json_default"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
.sub { color: #666; margin-top: 0; } table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; } pre { background: #f7f7f7; padding: 0.7em; overflow-x: auto; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; } img { max-width: 100%; }
"""


class Report:
    """Collects sections (facts, tables, text, figures) and writes them as one page.

    ``folder`` is created; figures are written as they are added so a run that fails later
    still leaves what it drew.
    """

    def __init__(self, folder: str | Path, title: str, subtitle: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.title, self.subtitle = title, subtitle
        self._parts: list[str] = []
        self.data: dict = {"title": title, "subtitle": subtitle, "sections": {}}
        self.figures: list[Path] = []

    def facts(self, heading: str, facts: dict) -> None:
        """A two-column table of named values."""
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in facts.items())
        self._parts.append(f"<h2>{html.escape(heading)}</h2><table>{rows}</table>")
        self.data["sections"][heading] = facts

    def table(self, heading: str, header: list[str], rows: list[list]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
        self._parts.append(f"<h2>{html.escape(heading)}</h2><table><tr>{head}</tr>{body}</table>")
        self.data["sections"][heading] = [dict(zip(header, row)) for row in rows]

    def text(self, heading: str, text: str) -> None:
        """Preformatted text: the command's own tables, a log excerpt."""
        self._parts.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(text)}</pre>")
        self.data["sections"][heading] = text

    def figure(self, name: str, fig, caption: str = "", heading: str | None = None) -> Path:
        """Save a matplotlib figure as ``<name>.png`` and show it on the page."""
        import matplotlib.pyplot as plt  # matplotlib loads slowly: only when a figure is drawn
        path = self.folder / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(path)
        title = f"<h2>{html.escape(heading)}</h2>" if heading else ""
        self._parts.append(f'{title}<figure><img src="{path.name}" alt="{html.escape(name)}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return path

    def write(self) -> Path:
        """Write ``report.html`` and ``report.json``; returns the page's path."""
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<p class='sub'>{html.escape(self.subtitle)} &middot; written {stamp} by cimstack</p>"
                + "".join(self._parts) + "</body></html>\n")
        atomic_write(self.folder / "report.json",
                     json.dumps(dict(self.data, written=stamp, figures=[p.name for p in self.figures]),
                                indent=1, default=json_default))
        return atomic_write(self.folder / "report.html", page)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def json_default(v):
    """``json.dumps``' fallback for what reports and ``--json`` carry: NumPy scalars and
    arrays as numbers and lists, anything else (paths) as text."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
