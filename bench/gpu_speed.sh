#!/usr/bin/env bash
# The speed stage alone, for a short device lease (about 1.5 minutes of one CUDA GPU): each sampling method against
# vanilla sampling side by side in one process (issues 6 and 7), the GPU otherwise idle. Run from the repository
# root with diffusers importable:
#
#     bash bench/gpu_speed.sh OUTDIR
#
# Check the pipeline on the CPU first: DEVICE=cpu REPEATS=1 N=16 bash bench/gpu_speed.sh /tmp/speed
set -u
OUT=${1:?usage: bash bench/gpu_speed.sh OUTDIR}
DEV=${DEVICE:-cuda} REPEATS=${REPEATS:-6} N=${N:-64}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT"
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 1
echo '{"summary": {"searched_tau": 13}}' >"$OUT/switching_speed.json"  # the searched tau of the CPU sweep (bench/RESULTS.md)
$PY bench/bench_switching.py --speed-only --repeats "$REPEATS" --device "$DEV" --threads 1 --out "$OUT/switching_speed.json" \
    >"$OUT/switching_speed.log" 2>&1; echo "switching exit $?"
$PY bench/bench_guidance.py --attribute digit --labels none --batches "$N" --n "$N" --speed-batch "$N" --scale 300 \
    --adp models/colored_mnist_adp.safetensors --targets uniform --repeats "$REPEATS" --device "$DEV" --threads 1 \
    --json "$OUT/guidance_speed.json" >"$OUT/guidance_speed.log" 2>&1; echo "guidance exit $?"
tail -n 12 "$OUT"/*.log | cut -c1-300
