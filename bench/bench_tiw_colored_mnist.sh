#!/usr/bin/env bash
# Colored-MNIST TIW-DSM experiment of issue 4: 90:10 red:green biased set, balanced reference set of 5 / 10 / 25 %
# of its size; per fraction: DSM on D_bias, DSM on D_ref only, importance weighting only (IW, time-independent
# w(x0) from the same discriminator), TIW-DSM. Each model is then sampled (uniform digit labels) and measured by
# `python -m fair_core eval` (colour proportions, FD to 50:50, classifier-feature FD = quality; not FID).
#
#   bash bench/bench_tiw_colored_mnist.sh                       # full run (see times below)
#   MODEL=tiny STEPS=3 DISC_STEPS=3 N=16 FRACTIONS=0.05 OUT=/tmp/tiw_smoke bash bench/bench_tiw_colored_mnist.sh   # smoke test
#
# Estimated times on the 2-core CPU of this project (mnist-s, batch 64, 3600 steps like the shipped default, ~1 s per
# DSM step, TIW <= 1.3x, see bench/RESULTS.md): DSM on D_bias ~60 min, DSM on D_ref ~60 min, IW ~65 min,
# TIW ~70 min + discriminator (2000 steps, ~5 min): ~4.3 h per fraction, ~13 h for the three fractions; sampling and
# eval of 1000 images ~2.5 min per model. On one GPU (H100) the whole experiment takes well under an hour.
# Results: $OUT/results.jsonl (one line per model) and a Markdown table on stdout for bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
MODEL=${MODEL:-mnist-s}
STEPS=${STEPS:-3600}
DISC_STEPS=${DISC_STEPS:-2000}
LR=${LR:-4e-4}
N=${N:-1000}
THREADS=${THREADS:-2}
FRACTIONS=${FRACTIONS:-"0.05 0.10 0.25"}
OUT=${OUT:-runs/tiw_colored_mnist}
DEVICE=${DEVICE:-auto}
COMMON=(--model "$MODEL" --colour-ratio 0.9 --steps "$STEPS" --lr "$LR" --threads "$THREADS" --device "$DEVICE" --save-every 200)
EVAL_DEVICE=()
[ "$DEVICE" != auto ] && EVAL_DEVICE=(--device "$DEVICE")
DISC_MODEL=small
[ "$MODEL" = tiny ] && DISC_MODEL=tiny
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

train() {  # train NAME COMMAND ARGS... : once (skipped when its export exists: rerun the script to resume after a kill)
  local name=$1; shift
  local dir="$OUT/$name"
  if [ -f "$dir.safetensors" ]; then echo "== $name: exists"; return; fi
  local run
  run=$(ls -d "$dir"/0*/ 2>/dev/null | head -1 || true)
  echo "== $name: $*"
  if [ -n "$run" ]; then
    $PY -m training "$1" --resume "$run" --export "$dir.safetensors"
  else
    $PY -m training "$@" "${COMMON[@]}" --outdir "$dir" --export "$dir.safetensors"
  fi
}

evaluate() {  # evaluate NAME METHOD FRACTION
  local line
  line=$($PY -m fair_core eval "$OUT/$1.safetensors" --n "$N" --json "${EVAL_DEVICE[@]}")
  echo "{\"name\": \"$1\", \"method\": \"$2\", \"reference_fraction\": $3, \"eval\": $line}" >> "$OUT/results.jsonl"
}

for f in $FRACTIONS; do
  train "dsm_bias_$f" dsm --reference-fraction "$f" --part biased
  train "dsm_ref_$f" dsm --reference-fraction "$f" --part reference
  train "tiw_$f" tiw --reference-fraction "$f" --disc-model "$DISC_MODEL" --disc-steps "$DISC_STEPS"
  train "iw_$f" tiw --reference-fraction "$f" --loss-mode iw --discriminator "$(ls -d "$OUT/tiw_$f"/0*/ | head -1)discriminator.safetensors"
  for m in dsm_bias dsm_ref iw tiw; do evaluate "${m}_$f" "$m" "$f"; done
done

$PY - "$OUT/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| reference | method | red | green | FD to 50:50 | classifier-feature FD |")
print("|---|---|---|---|---|---|")
names = {"dsm_bias": "DSM on D_bias", "dsm_ref": "DSM on D_ref only", "iw": "IW only (w(x0))", "tiw": "TIW-DSM"}
for r in rows:
    colour, quality = r["eval"]["colour"], r["eval"]["quality"]
    p = colour["proportions"]
    print(f"| {100 * r['reference_fraction']:g} % | {names[r['method']]} | {p[0]:.3f} | {p[1]:.3f} | {colour['fd']:.3f} | "
          f"{quality.get('classifier_feature_fd', quality)} |")
EOF
