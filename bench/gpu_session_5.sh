#!/usr/bin/env bash
# The fifth lent device session's runs (bench/RESULTS.md cites this file), sized for about 8.5 minutes of one CUDA GPU
# and 16 CPU cores. Run from the repository root, with diffusers and the MNIST data importable:
#
#     bash bench/gpu_session_5.sh OUTDIR
#
# Issue 4, TIW-DSM at 5 % reference with the deep discriminator given the digit: does a larger share of reference rows
# in each batch (--reference-share; the same minimiser) close TIW's quality gap? Side by side until a common deadline
# (TRAIN_MIN minutes after the start), each run exporting at 2400 and 4800 steps and wherever the deadline stops it:
# 1. fine-tuning from the shipped default, --bias-sampling ratio, reference share 0.25, 0.5 and 0.75;
# 2. the same with uniform rows at share 0.5 (the share alone);
# 3. DSM on D_ref alone again (its quality figure moved between GPU sessions 3 and 4: 2.73 and 2.17 at 4800 steps);
# 4. from scratch, ratio rows at share 0.5: 3600 steps (the bench's scratch length), then on;
# then every export evaluated at N samples, one process each.
# Carried along: $DEEP. A pipeline check on the CPU (a few minutes on 2 cores):
#     DEVICE=cpu TRAIN_MIN=1.5 EVAL_MIN=2 N=16 STEPS="2 4" SCRATCH="2 4" WORK=/tmp/g5w bash bench/gpu_session_5.sh /tmp/g5
set -u
OUT=${1:?usage: bash bench/gpu_session_5.sh OUTDIR}
DEV=${DEVICE:-cuda} TRAIN_MIN=${TRAIN_MIN:-6.0} EVAL_MIN=${EVAL_MIN:-2} N=${N:-2000} PY=${PYTHON:-python3} W=${WORK:-bench/out/gpu5}
STEPS=(${STEPS:-2400 4800 7200}) SCRATCH=(${SCRATCH:-3600 7200})
DEEP=bench/out/s22/deep/00000-tiw-colored-mnist/discriminator.safetensors
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$W/logs" "$OUT"
T0=$(date +%s)
. bench/gpu_helpers.sh

chain() {  # chain NAME COMMAND FIRST_STEPS LATER_STEPS PLAN_ARGS...: the bench's planned run to FIRST_STEPS, then resumed
    local name=$1 command=$2 first=$3 later=$4 method=tiw; shift 4
    [ "$command" = dsm ] && method=ref
    train "${name}_$first" $(plan "$method" --steps "$first" --out "$W/$name" "$@") \
        $([ "$command" = tiw ] && echo --discriminator "$DEEP") &&
        cp "$W/$name"/cmnist_*.safetensors "$W/${name}_$first.safetensors" &&
        resume_to "$name" "$command" "$(ls -d "$W/$name"/runs/00000-*)" $later
}

stage "device"
$PY -c "import torch, diffusers, training.data as d; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'); d.load(d.DataConfig(dataset='mnist'))" || exit 1
ls "$DEEP" || exit 1

stage "training until +$TRAIN_MIN min"
for share in 0.25 0.5 0.75; do
    chain "ratio_s$share" tiw "${STEPS[0]}" "${STEPS[*]:1}" --bias-sampling ratio --reference-share "$share" &
done
chain uniform_s0.5 tiw "${STEPS[0]}" "${STEPS[*]:1}" --reference-share 0.5 &
chain ref dsm "${STEPS[0]}" "${STEPS[*]:1}" &
chain scratch_ratio_s0.5 tiw "${SCRATCH[0]}" "${SCRATCH[*]:1}" --mode scratch --bias-sampling ratio --reference-share 0.5 &
wait
tail -qn 1 "$W"/logs/*.log | cut -c1-300
pack

stage "evaluation, at most $EVAL_MIN min"
eval_all "$EVAL_MIN" "$N" "$W"/*.safetensors
pack

stage "pack"  # at most 8 files come back, 16 MiB each: two exports per tar
for name in ratio_s0.5 ratio_s0.25 ratio_s0.75 scratch_ratio_s0.5; do
    tar cf "$OUT/models_$name.tar" $(ls -t "$W/${name}"_*.safetensors | head -2) 2>/dev/null
done
ls -la "$OUT"
stage "done"
