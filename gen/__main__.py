"""``python -m cimstack.gen --preset NAME|FILE``: write the tile Verilog under build/gen/."""
import argparse

from cimstack.config import load
from cimstack.gen import write_tile_verilog

parser = argparse.ArgumentParser(prog="python -m cimstack.gen", description=__doc__)
parser.add_argument("--preset", default="default", help="preset name or TOML file")
parser.add_argument("--out", default="build/gen", help="output folder")
args = parser.parse_args()
print(write_tile_verilog(load(args.preset), args.out))
