"""``python -m cimstack.gen --preset NAME|FILE [--out DIR] [--docs]``: write the SoC Verilog and
the register map under build/gen/; ``--docs`` refreshes the generated sections of the docs
(register map of the ``default`` preset in docs/protocol.md, instruction set in docs/soc.md)."""
import argparse
from pathlib import Path

from cimstack.config import load, preset
from cimstack.gen import update_isa_doc, update_protocol_doc, write_all

parser = argparse.ArgumentParser(prog="python -m cimstack.gen", description=__doc__)
parser.add_argument("--preset", default="default", help="preset name or TOML file")
parser.add_argument("--out", default="build/gen", help="output folder")
parser.add_argument("--docs", action="store_true", help="update docs/protocol.md's register map")
args = parser.parse_args()
for path in write_all(load(args.preset), args.out):
    print(path)
if args.docs:
    for doc, update in ((Path("docs/protocol.md"), lambda d: update_protocol_doc(d, preset("default"))),
                        (Path("docs/soc.md"), update_isa_doc)):
        print(f"{doc}: {'updated' if update(doc) else 'already current'}")
