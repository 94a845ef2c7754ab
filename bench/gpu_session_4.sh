#!/usr/bin/env bash
# The fourth lent device session's runs (bench/RESULTS.md cites this file), sized for about 8.5 minutes of one CUDA GPU
# and 16 CPU cores. Run from the repository root, with diffusers and the MNIST data importable:
#
#     bash bench/gpu_session_4.sh OUTDIR
#
# Issue 4, TIW-DSM at 5 % reference: does TIW's quality figure reach the control's with longer training? Side by side
# until a common deadline (TRAIN_MIN minutes after the start), each run exporting at every step count it reaches:
# 1. the shipped TIW model's run (the deep discriminator given the digit, 2400 steps; its run folder and discriminator
#    carried) resumed to 4800, 7200 and 9600 steps;
# 2. its matched control, DSM on D_bias fine-tuned from the shipped default, and DSM on D_ref alone: 2400, 4800, 7200
#    and 9600 steps (the bench's dsm and ref lines, then resumed);
# 3. TIW-DSM from scratch with the same discriminator: 3600 steps (the bench's scratch length), then 7200;
# then every export, and the shipped TIW model, evaluated at N samples, one process each.
# Carried along: $TIWRUN (state.safetensors, training_options.json, log.jsonl) and $DEEP.
# A pipeline check on the CPU (a few minutes on 2 cores):
#     cp -r bench/out/s22/tiw_deep/00000-tiw-colored-mnist /tmp/g4run  # the resume writes into its run folder
#     DEVICE=cpu TRAIN_MIN=2 EVAL_MIN=3 N=16 WORK=/tmp/g4w TIWRUN=/tmp/g4run bash bench/gpu_session_4.sh /tmp/g4
set -u
OUT=${1:?usage: bash bench/gpu_session_4.sh OUTDIR}
DEV=${DEVICE:-cuda} TRAIN_MIN=${TRAIN_MIN:-5.8} EVAL_MIN=${EVAL_MIN:-2} N=${N:-2000} PY=${PYTHON:-python3} W=${WORK:-bench/out/gpu4}
TIWRUN=${TIWRUN:-bench/out/s22/tiw_deep/00000-tiw-colored-mnist}
DEEP=bench/out/s22/deep/00000-tiw-colored-mnist/discriminator.safetensors
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$W/logs" "$OUT"
T0=$(date +%s)
. bench/gpu_helpers.sh

stage "device"
$PY -c "import torch, diffusers, training.data as d; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'); d.load(d.DataConfig(dataset='mnist'))" || exit 1
ls "$TIWRUN/state.safetensors" "$DEEP" || exit 1

stage "training until +$TRAIN_MIN min"
resume_to tiw tiw "$TIWRUN" 4800 7200 9600 &
for m in dsm ref; do
    { train "${m}_2400" $(plan "$m" --steps 2400 --out "$W/$m") &&
        resume_to "$m" dsm "$W/$m/runs/00000-dsm-colored-mnist" 4800 7200 9600; } &
done
{ train scratch_3600 $(plan tiw --mode scratch --disc-model deep --out "$W/scratch") --discriminator "$DEEP" &&
    resume_to scratch tiw "$W/scratch/runs/00000-tiw-colored-mnist" 7200; } &
wait
tail -qn 1 "$W"/logs/*.log | cut -c1-300
pack

stage "evaluation, at most $EVAL_MIN min"
eval_all "$EVAL_MIN" "$N" models/colored_mnist_tiw.safetensors "$W"/*.safetensors "$W"/*/cmnist*.safetensors
pack

stage "pack"
tar cf "$OUT/tiw_models.tar" "$W"/tiw_*.safetensors 2>/dev/null
tar cf "$OUT/scratch_models.tar" "$W"/scratch*.safetensors "$W"/scratch/cmnist*.safetensors 2>/dev/null
ls -la "$OUT"
stage "done"
