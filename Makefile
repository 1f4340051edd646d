# cimstack — set-up and main entry points. Every target installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= default
BOARD  ?= ulx3s-85f

.PHONY: demo demo-tile test lint sim gen bench bitstream flash clean distclean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

## demo: train the digits MLP, compile and place it, program it with write-verify on the
## simulated SoC and run the test split there (accuracy against software, bit-exact check)
demo: $(STAMP)
	$(PY) -m cimstack.cli.demo --preset $(PRESET)

## demo-tile: one random tile on the emulator, the golden model and the Verilated RTL
demo-tile: $(STAMP)
	$(PY) -m cimstack.cli.demo_tile --preset $(PRESET)

## test: the whole suite (unit, statistical and cocotb/Verilator benches)
test: $(STAMP)
	$(PY) -m pytest -q

## sim: only the tests that build Verilog and run it in Verilator (marker `verilator`)
sim: $(STAMP)
	$(PY) -m pytest -q -m verilator

## lint: ruff (rules and reasons in pyproject.toml) and pyright (basic; strict for chip/ and golden/).
## pyright cannot follow the package-dir mapping (cimstack = host/), so it reads a tree of links
## under build/typecheck that lays the sources out under their import names.
lint: $(STAMP)
	$(PY) -m ruff check host rtl gen sim boards tests benchmarks examples
	rm -rf build/typecheck && mkdir -p build/typecheck/cimstack
	for f in host/*; do ln -s ../../../$$f build/typecheck/cimstack/; done
	for d in rtl gen sim boards; do ln -s ../../../$$d build/typecheck/cimstack/$$d; done
	$(VENV)/bin/pyright --project pyproject.toml

## gen: write the SoC Verilog and register map (JSON, Markdown, C header) for PRESET under build/gen
gen: $(STAMP)
	$(VENV)/bin/cimstack gen --config $(PRESET)

## bench: SoC, model, training, emulator speed, tuning/IR-drop, link-fault, spare-line repair and full-size bitstream benchmarks (JSON under build/bench/; training and emulator speed also time aihwkit-lightning in its own venv)
bench: $(STAMP)
	$(PY) benchmarks/bench_soc.py --preset $(PRESET)
	$(PY) benchmarks/bench_models.py --preset $(PRESET)
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_emulator.py
	$(PY) benchmarks/bench_tuning.py
	$(PY) benchmarks/bench_link.py
	$(PY) benchmarks/bench_repair.py
	$(PY) benchmarks/bench_boards.py

## bitstream: build BOARD's bitstream (ulx3s-85f, icebreaker) with the YoWASP tools from PyPI;
## CONFIG=<preset|file> overrides the board's preset; report.json/report.md next to it under build/boards/
bitstream: $(STAMP)
	$(VENV)/bin/cimstack bitstream $(BOARD) $(if $(CONFIG),--config $(CONFIG))

## flash: program BOARD with openFPGALoader (LOADER=iceprog for iCE40); PORT=/dev/ttyUSBn picks
## the board; FLASH=1 writes the SPI flash instead of SRAM; DRY_RUN=1 only prints the command
flash: $(STAMP)
	$(VENV)/bin/cimstack flash $(BOARD) $(if $(PORT),--port $(PORT)) $(if $(LOADER),--loader $(LOADER)) \
		$(if $(CONFIG),--config $(CONFIG)) $(if $(FLASH),--write-flash) $(if $(DRY_RUN),--dry-run)

clean:
	rm -rf build .pytest_cache

distclean: clean
	rm -rf $(VENV)
