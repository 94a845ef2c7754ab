#!/usr/bin/env bash
# The GPU runs of one lent device session, as they ran (bench/RESULTS.md cites this file), sized for about 3 minutes
# of one CUDA GPU and many CPU cores. Run from the repository root, with diffusers and the MNIST data importable:
#
#     bash bench/gpu_session.sh OUTDIR [TRAIN_MINUTES]
#
# 1. speed, the GPU alone: each method's cost against its baseline, side by side in one process (issues 4-7);
# 2. training, all at once (one process each, 1 CPU thread, at most TRAIN_MINUTES each, default 2):
#    - issue 5: dual fine-tuning at bound margins -0.08, -0.10, -0.12, -0.15 from bench/out/mnist457_mnist-s_dsm
#      (the DSM model of the CPU runs, which must be present);
#    - issue 4: TIW-DSM fine-tuning (5 % reference) with a discriminator trained on 12x the samples of the CPU runs
#      (1500 steps at batch 1024, cosine learning rate), and its check by bench_tiw_discriminator.py --against
#      (needs bench/out/tiw_ft's two fine-tuned models);
# 3. logs, JSON reports and exports packed into OUTDIR (at most 8 files; results.tar.gz after each stage).
# The exports are evaluated afterwards, on the CPU, by the benches' `eval` (the same numbers as the CPU runs' rows).
# Every training command is the one the bench's own `plan` prints, plus the device, threads and time limit.
# A pipeline check on the CPU (a few minutes):
#     DEVICE=cpu DISC_STEPS=3 SPEED_STEPS=1 GUIDE_N=16 GUIDE_BATCHES=16 bash bench/gpu_session.sh /tmp/gpu 0.1
set -u
OUT=${1:?usage: bash bench/gpu_session.sh OUTDIR [TRAIN_MINUTES]}
MIN=${2:-2}
DEV=${DEVICE:-cuda} DISC_STEPS=${DISC_STEPS:-1500} SPEED_STEPS=${SPEED_STEPS:-10}
GUIDE_N=${GUIDE_N:-64} GUIDE_BATCHES=${GUIDE_BATCHES:-64}
W=bench/out/gpu
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$W/logs" "$OUT"
stage() { echo "== $(date +%T) $*"; }
job() {  # job NAME COMMAND...: run in the background, log to $W/logs/NAME.log, report the exit status
    local name=$1; shift
    ( "$@" >"$W/logs/$name.log" 2>&1; rc=$?; echo "-- $(date +%T) $name exit $rc" ) &
}
plan_line() {  # plan_line PATTERN BENCH ARGS...: the command the bench's plan prints for PATTERN, run by $PY
    local pattern=$1 bench=$2; shift 2
    $PY "$bench" plan "$@" | grep "^python -m training $pattern" | head -n 1 | sed "s|^python |$PY |"
}
pack() { tar czf "$OUT/results.tar.gz" --exclude='*.safetensors' "$W" bench/out/runs 2>/dev/null; }

stage "device"
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 1

stage "speed"
speed() { local name=$1; shift; $PY "$@" --device "$DEV" --threads 1 >"$W/logs/speed_$name.log" 2>&1; echo "$name speed exit $?"; }
speed tiw bench/bench_tiw.py --model mnist-s --batch 64 --steps "$((SPEED_STEPS * 10))" --block 8 --out "$W/tiw_speed.json"
speed dual bench/bench_dual.py --steps "$((SPEED_STEPS * 8))" --skip "$((SPEED_STEPS / 2))" --json "$W/dual_speed.json"
echo '{"summary": {"searched_tau": 13}}' >"$W/switching_speed.json"  # the searched tau of the CPU sweep (bench/RESULTS.md)
speed switching bench/bench_switching.py --speed-only --repeats "$((SPEED_STEPS / 2 + 1))" --out "$W/switching_speed.json"
speed guidance bench/bench_guidance.py --attribute digit --labels none --batches "$GUIDE_BATCHES" --n "$GUIDE_N" --scale 300 \
    --adp models/colored_mnist_adp.safetensors --targets uniform --repeats "$((SPEED_STEPS / 3))" --json "$W/guidance_speed.json"
pack

stage "training, $MIN min per run at most"
LIMIT=(--device "$DEV" --threads 1 --time-limit "$MIN")
for m in -0.08 -0.10 -0.12 -0.15; do
    cmd=$(plan_line dual bench/bench_dual_mnist.py --margin "$m" --out bench/out)
    echo "$cmd"; job "dual$m" $cmd "${LIMIT[@]}"
done
cmd=$(plan_line tiw bench/bench_tiw_colored_mnist.py --methods tiw --disc-steps "$DISC_STEPS" --disc-batch 1024 --disc-schedule cosine \
      --out "$W/tiw_ft")
echo "$cmd"; job tiw_ft $cmd "${LIMIT[@]}"
D="$W/tiw_ft/runs/00000-tiw-colored-mnist/discriminator.safetensors"
(
    while [ ! -f "$D" ]; do sleep 2; done
    job against $PY bench/bench_tiw_discriminator.py "$D" --device "$DEV" --json "$W/disc_against.json" \
        --against bench/out/tiw_ft/cmnist_dsm_ft_r5_s1200.safetensors bench/out/tiw_ft/cmnist_ref_ft_r5.safetensors
    wait
) &
wait
tail -n 2 "$W"/logs/*.log | cut -c1-400
pack

stage "pack"
cp bench/out/mnist457_mnist-s_dual_ft_m*.safetensors "$W/" 2>/dev/null
tar cf "$OUT/models_dual_a.tar" "$W"/mnist457_mnist-s_dual_ft_m{8,10}.safetensors
tar cf "$OUT/models_dual_b.tar" "$W"/mnist457_mnist-s_dual_ft_m{12,15}.safetensors
tar cf "$OUT/models_tiw.tar" "$W/tiw_ft/cmnist_tiw_ft_r5.safetensors" "$D"
ls -la "$OUT"
stage "done"
