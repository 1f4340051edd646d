"""``python -m cimstack.gen --preset NAME|FILE [--out DIR] [--docs]``: write the SoC Verilog and
the register map under build/gen/; ``--docs`` refreshes the register map in docs/protocol.md
(always from the ``default`` preset)."""
import argparse
from pathlib import Path

from cimstack.config import load, preset
from cimstack.gen import update_protocol_doc, write_all

parser = argparse.ArgumentParser(prog="python -m cimstack.gen", description=__doc__)
parser.add_argument("--preset", default="default", help="preset name or TOML file")
parser.add_argument("--out", default="build/gen", help="output folder")
parser.add_argument("--docs", action="store_true", help="update docs/protocol.md's register map")
args = parser.parse_args()
for path in write_all(load(args.preset), args.out):
    print(path)
if args.docs:
    doc = Path("docs/protocol.md")
    changed = update_protocol_doc(doc, preset("default"))
    print(f"{doc}: {'updated' if changed else 'already current'}")
