#!/usr/bin/env bash
# The tutorial (docs/tutorial.md) with the command line only: a model, a placement map, an
# accuracy plot, tuning, and a run on the simulated SoC.
#
#   examples/cli_walkthrough.sh [OUT]          # OUT defaults to build/walkthrough
#   SIM=0 examples/cli_walkthrough.sh          # skip the simulated SoC (no Verilator build)
#
# Uses .venv/bin/cimstack when there is one (make test / make demo create it), else the
# cimstack on PATH. Every file it writes is under OUT; the reports under OUT/reports.
set -euo pipefail
OUT=${1:-build/walkthrough}
SIM=${SIM:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
CIMSTACK=${CIMSTACK:-$([ -x "$here/.venv/bin/cimstack" ] && echo "$here/.venv/bin/cimstack" || echo cimstack)}
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "a small chip: two 32x16 tiles, 6-bit weights and inputs, ADCs that saturate at the default gain"
$CIMSTACK config new default -o "$OUT/small-chip.toml" --force --name soc-test \
    --set array.tiles=2 --set array.rows=32 --set array.cols=16 --set array.mac_lanes=8 --set array.adc_share=2 \
    --set cell.cell_bits=3 --set cell.frac_bits=3 --set mapping.weight_bits=6 --set input.bits=6 \
    --set adc.gain_shift=3 --set post.out_bits=16 --set post.shift=1 \
    --set device.output_noise_lsb=1.0 --set device.read_noise_sigma=0.01 --set device.pulse_c2c_sigma=0.2 \
    --set device.pulse_step_lsb=2.0 --set soc.act_words=512 --set soc.wv_jobs=128 --set soc.max_payload=256
$CIMSTACK config validate "$OUT/small-chip.toml"
CHIP=(-c "$OUT/small-chip.toml")

step "a digits MLP with 8 hidden units (it fits the two tiles)"
$CIMSTACK train --width 8 --epochs 10 -o "$OUT/mlp8.pt"

step "where its weights go"
$CIMSTACK place "$OUT/mlp8.pt" "${CHIP[@]}" --report "$OUT/reports/place"

step "accuracy on emulator chips, against read noise and drift"
$CIMSTACK eval "$OUT/mlp8.pt" "${CHIP[@]}" --sweep --chips 1 --samples 120 --report "$OUT/reports/eval" \
    --json > "$OUT/eval.json"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"chip {100*r['chip_accuracy']:.1f} %, quantised {100*r['quantised_accuracy']:.1f} %\")" "$OUT/eval.json"

step "tune the ADC gains, offsets, input modes and ranges (one copy per layer: the chip is full)"
$CIMSTACK tune "$OUT/mlp8.pt" "${CHIP[@]}" --copies 1 --budget 24 -o "$OUT/mlp8.settings.json" --report "$OUT/reports/tune"

step "the bit-exact golden model before and after tuning"
$CIMSTACK eval "$OUT/mlp8.pt" "${CHIP[@]}" -b golden --report "$OUT/reports/golden-before" --json > "$OUT/golden-before.json"
$CIMSTACK eval "$OUT/mlp8.pt" "${CHIP[@]}" -b golden --settings "$OUT/mlp8.settings.json" \
    --report "$OUT/reports/golden-after" --json > "$OUT/golden-after.json"
python3 -c "import json,sys; a,b=(json.load(open(p)) for p in sys.argv[1:]); print(f\"golden: {100*a['chip_accuracy']:.1f} % before tuning, {100*b['chip_accuracy']:.1f} % after\")" \
    "$OUT/golden-before.json" "$OUT/golden-after.json"

if [ "$SIM" != 0 ]; then
    step "the tuned model on the simulated SoC (Verilated RTL; the first run builds it)"
    $CIMSTACK eval "$OUT/mlp8.pt" "${CHIP[@]}" -b sim --settings "$OUT/mlp8.settings.json" --samples 40 \
        --report "$OUT/reports/sim"
fi
printf '\nreports:\n'; ls "$OUT"/reports/*/report.html
