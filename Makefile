# cimstack — set-up and main entry points. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= default

.PHONY: demo demo-tile test sim gen bench clean distclean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

## demo: train the digits MLP, compile and place it, program it with write-verify on the
## simulated SoC and run the test split there (accuracy against software, bit-exact check)
demo: $(STAMP)
	$(PY) -m cimstack.demo --preset $(PRESET)

## demo-tile: one random tile on the emulator, the golden model and the Verilated RTL
demo-tile: $(STAMP)
	$(PY) -m cimstack.demo_tile --preset $(PRESET)

## test: the whole suite (unit, statistical and cocotb/Verilator benches)
test: $(STAMP)
	$(PY) -m pytest -q

## sim: build the tile and SoC RTL with Verilator and run the cocotb benches only
sim: $(STAMP)
	$(PY) -m pytest -q tests/test_tile_rtl.py tests/test_soc_rtl.py

## gen: write the SoC Verilog and register map (JSON, Markdown, C header) for PRESET under build/gen
gen: $(STAMP)
	$(PY) -m cimstack.gen --preset $(PRESET)

## bench: SoC, model, training and tuning/IR-drop benchmarks (JSON under build/bench/; training also times aihwkit-lightning in its own venv)
bench: $(STAMP)
	$(PY) benchmarks/bench_soc.py --preset $(PRESET)
	$(PY) benchmarks/bench_models.py --preset $(PRESET)
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_tuning.py

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV)
