# cimstack — set-up and main entry points. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= default

.PHONY: demo test sim gen bench clean distclean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

## demo: program a random 64x64 tile; compare emulator, golden model and Verilator RTL
demo: $(STAMP)
	$(PY) -m cimstack.demo --preset $(PRESET)

## test: the whole suite (unit, statistical and cocotb/Verilator benches)
test: $(STAMP)
	$(PY) -m pytest -q

## sim: build the tile and SoC RTL with Verilator and run the cocotb benches only
sim: $(STAMP)
	$(PY) -m pytest -q tests/test_tile_rtl.py tests/test_soc_rtl.py

## gen: write the SoC Verilog and register map (JSON, Markdown, C header) for PRESET under build/gen
gen: $(STAMP)
	$(PY) -m cimstack.gen --preset $(PRESET)

## bench: SoC benchmarks over the simulation server (JSON under build/bench/)
bench: $(STAMP)
	$(PY) benchmarks/bench_soc.py --preset $(PRESET)

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV)
