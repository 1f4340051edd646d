"""Session-wide settings of the suite. Shared helpers are in helpers.py, not here."""
import torch
from hypothesis import settings

# One torch thread: the models here are tiny, and two threads fighting the Verilator builds
# and simulation servers for two cores run 10-40x slower (and results depend on the count).
torch.set_num_threads(1)

# Property-based tests run the same examples on every machine (a failure replays exactly)
# and have no per-example deadline (the machines are shared and noisy).
settings.register_profile("cimstack", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("cimstack")
