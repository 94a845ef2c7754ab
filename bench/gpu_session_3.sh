#!/usr/bin/env bash
# The third lent device session's runs (bench/RESULTS.md cites this file), sized for about 8.5 minutes of one CUDA GPU
# and 16 CPU cores. Run from the repository root, with diffusers and the MNIST data importable:
#
#     bash bench/gpu_session_3.sh OUTDIR
#
# Issue 4, TIW-DSM at 5 % reference, all with the discriminator conditional on the digit (--disc-condition model):
# 1. the weighted discriminator of bench/out/cond/big (6000 steps at batch 256, "8x") at 4x and 8x its samples
#    (batch 1024 and 2048, "32x" and "64x"), each checked at sampling time on the shipped biased model
#    (bench_tiw_discriminator.py --guide); with the 32x one a TIW fine-tuning run from the shipped default;
# 2. from t = 0, with the 8x discriminator (carried): the fine-tuning runs TIW, DSM on D_bias and DSM on D_ref to 4800
#    steps (the CPU runs reached 2400), and TIW-DSM from scratch (3600 steps);
# every training run stops at a common deadline (TRAIN_MIN minutes after the start) with its state saved and its
# export written, and its log says how far it got; a discriminator still training then is cut (no export). As first
# run (bench/RESULTS.md, GPU session 3) the discriminators had no deadline: the 64x one took 9.4 minutes, the call
# ran out before the evaluation, and two further calls on the warm machine ran the evaluation and the speed rows;
# 3. every export evaluated on the GPU at N samples, one process per model;
# 4. the speed rows on the then idle GPU: bench/gpu_speed.sh (issues 6, 7) and the TIW step against the DSM step.
# Every training command is the one the bench's own `plan` prints, plus device, threads and time limit.
# Its shell helpers (stage, left, train, plan, eval_all, pack) moved to bench/gpu_helpers.sh at stop 23, unchanged.
# Carried along: the two discriminators it reads ($D8, $TEACHER).
# A pipeline check on the CPU (about 6 minutes on 2 cores; a shorter TRAIN_MIN cuts the discriminators, whose w0 pass
# takes 2 minutes there):
#     DEVICE=cpu TRAIN_MIN=4 EVAL_MIN=3 DISC_STEPS=3 N=16 SPEED=0 bash bench/gpu_session_3.sh /tmp/g3
set -u
OUT=${1:?usage: bash bench/gpu_session_3.sh OUTDIR}
DEV=${DEVICE:-cuda} TRAIN_MIN=${TRAIN_MIN:-5.5} EVAL_MIN=${EVAL_MIN:-1.5} DISC_STEPS=${DISC_STEPS:-6000} N=${N:-2000}
SPEED=${SPEED:-1} PY=${PYTHON:-python3} W=bench/out/gpu3
D8=bench/out/cond/big/00000-tiw-colored-mnist/discriminator.safetensors
TEACHER=bench/out/grad/teacher/00000-tiw-colored-mnist/discriminator.safetensors
BIASED=models/colored_mnist_dsm.safetensors
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$W/logs" "$OUT"
T0=$(date +%s)
. bench/gpu_helpers.sh  # stage, left, left_s, train, plan, eval_all, pack

stage "device"
$PY -c "import torch, diffusers, training.data as d; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'); d.load(d.DataConfig(dataset='mnist'))" || exit 1
ls "$D8" "$TEACHER" || exit 1

stage "training until +$TRAIN_MIN min"
disc() {  # disc NAME BATCH: a weighted conditional discriminator, its sampling-time check; with 32x a TIW run
    local name=$1 batch=$2 D="$W/$1/00000-tiw-colored-mnist/discriminator.safetensors"
    timeout "$(left_s)" $PY -m training tiw --model tiny --steps 1 --disc-objective weighted --disc-teacher "$TEACHER" --disc-w0-sigma 0.5 \
        --disc-steps "$DISC_STEPS" --disc-batch "$batch" --disc-schedule cosine --disc-pool dense --outdir "$W/$name" \
        --device "$DEV" --threads 2 >"$W/logs/$name.log" 2>&1 || { echo "-- $name failed or cut at the deadline"; return; }
    echo "-- $(date +%T) $name trained"
    cp "$D" "$W/$name.safetensors"
    if [ "$name" = disc32 ]; then
        train tiw_ft_disc32 $(plan tiw --steps 2400 --out "$W/ft32") --discriminator "$D" &
    fi
    timeout "$(($(left_s) + 60))" $PY bench/bench_tiw_discriminator.py "$D" --n 300 --guide "$BIASED" --gammas 1 --guide-n 1000 --device "$DEV" \
        --threads 1 --json "$W/${name}_guide.json" >"$W/logs/${name}_guide.log" 2>&1; echo "-- $(date +%T) ${name}_guide exit $?"
    wait
}
disc disc32 1024 &
disc disc64 2048 &
for m in tiw dsm ref; do
    extra=(); [ "$m" = tiw ] && extra=(--discriminator "$D8")
    train "${m}_ft_4800" $(plan "$m" --steps 4800 --out "$W/ft") "${extra[@]}" &
done
train tiw_scratch $(plan tiw --mode scratch --out "$W/scratch") --discriminator "$D8" &
wait
tail -qn 1 "$W"/logs/*.log | cut -c1-300
pack

stage "evaluation, at most $EVAL_MIN min"
eval_all "$EVAL_MIN" "$N" "$W"/ft/*.safetensors "$W"/ft32/*.safetensors "$W"/scratch/*.safetensors
pack

if [ "$SPEED" = 1 ]; then
    stage "speed on the idle GPU"
    DEVICE=$DEV PYTHON=$PY REPEATS=4 bash bench/gpu_speed.sh "$W/speed"
    $PY bench/bench_tiw.py --model mnist-s --batch 64 --steps 100 --block 8 --device "$DEV" --threads 1 \
        >"$W/speed/tiw_speed.log" 2>&1; echo "tiw speed exit $?"; tail -n 6 "$W/speed/tiw_speed.log"
    pack
fi

stage "pack"
tar cf "$OUT/models_a.tar" "$W"/ft/*.safetensors "$W"/disc*.safetensors 2>/dev/null
tar cf "$OUT/models_b.tar" "$W"/ft32/*.safetensors "$W"/scratch/*.safetensors 2>/dev/null
pack
ls -la "$OUT"
stage "done"
