"""The host API from Python: train, compile, place, program and evaluate on the physics
emulator and on the bit-exact golden model, and write the placement map as a report.

    python examples/python_api.py [--out build/examples/python_api]

The same steps as ``cimstack train/place/program/eval``, for a script or a notebook.
"""
import argparse
import json
from pathlib import Path

import cimstack
from cimstack.backends import EmulatorBackend, GoldenBackend
from cimstack.reports import plots
from cimstack.reports.page import Report
from cimstack.zoo import models


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/examples/python_api")
    args = ap.parse_args()
    cfg = cimstack.preset("default")
    model, split, stats = models.train_digits("mlp")
    dep = cimstack.compile(model, cfg, example=split.x_train[:256])
    print(dep.summary())
    print(dep.placement.report())

    result = {"float": stats["test_accuracy"]}
    for backend in (EmulatorBackend(cfg), GoldenBackend(cfg)):
        programmed = dep.program(backend)
        print(programmed.table())
        result[backend.name] = dep.accuracy(split.x_test, split.y_test)
        result[f"{backend.name}_failed_cells"] = programmed.failed_cells

    report = Report(args.out, "The digits MLP on the default chip")
    report.figure("placement", plots.placement_map(dep.placement), "Weight blocks on the arrays.")
    report.figure("programming", plots.programming_histograms(programmed, cfg), "Write-verify on the golden model.")
    report.facts("Test accuracy", result)
    print(f"report: {report.write()}")
    Path(args.out, "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
