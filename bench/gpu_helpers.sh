# Shell helpers of the lent-GPU session scripts from the third on (bench/gpu_session_3.sh, bench/gpu_session_4.sh; the
# first two keep their own copies). Source it after setting T0 (the start, `date +%s`), TRAIN_MIN (the training
# deadline, minutes after T0), W (the work folder), OUT (the folder that comes back), DEV (cpu | cuda) and PY (python).

stage() { echo "== $(date +%T) (+$(($(date +%s) - T0)) s) $*"; }

# left: minutes to the training deadline, at least 0.05 (a --time-limit of 0 would mean none); left_s: whole seconds
left() { awk -v d="$T0" -v n="$(date +%s)" -v m="$TRAIN_MIN" 'BEGIN { x = m - (n - d) / 60; printf "%.2f", x < 0.05 ? 0.05 : x }'; }
left_s() { awk -v m="$(left)" 'BEGIN { printf "%d", m * 60 + 1 }'; }

train() {  # train NAME COMMAND...: logged to $W/logs/NAME.log, stopped (state saved, export written) at the deadline
    local name=$1; shift
    "$@" --device "$DEV" --threads 1 --time-limit "$(left)" >"$W/logs/$name.log" 2>&1; echo "-- $(date +%T) $name exit $?"
}

plan() {  # plan METHOD ARGS...: the bench's training command for METHOD at 5 % reference, run by $PY
    local method=$1; shift
    $PY bench/bench_tiw_colored_mnist.py plan --fractions 0.05 --disc-pool dense --methods "$method" "$@" |
        grep "^python -m training" | sed "s|^python |$PY |"
}

resume_to() {  # resume_to NAME COMMAND RUN_DIR STEPS...: resume a `training COMMAND` run to each step count in turn,
    local name=$1 command=$2 run=$3 steps  # exporting $W/NAME_STEPS.safetensors each time, until the deadline
    shift 3
    for steps in "$@"; do
        [ "$(left_s)" -gt 20 ] || { echo "-- $name: the deadline came before $steps steps"; return; }
        train "${name}_$steps" $PY -m training "$command" --resume "$run" --steps "$steps" --export "$W/${name}_$steps.safetensors"
    done
}

eval_all() {  # eval_all MINUTES N EXPORT...: each export evaluated in its own process, then a summary of all
    local minutes=$1 n=$2 f name; shift 2  # NAME: the export's file name, after its folder's unless that is $W
    for f in "$@"; do
        [ -f "$f" ] || continue
        name=$(basename "$f" .safetensors)
        [ "$(dirname "$f")" = "$W" ] || name=$(basename "$(dirname "$f")")_$name
        timeout "$(awk -v m="$minutes" 'BEGIN { print m * 60 }')" $PY bench/bench_tiw_colored_mnist.py eval "$f" --n "$n" \
            --device "$DEV" --json "$W/eval_$name.json" >"$W/logs/eval_$name.log" 2>&1 &
    done
    wait
    $PY - "$W"/eval_*.json <<'END'
import json, sys
for path in sys.argv[1:]:
    for r in json.load(open(path)):
        c = r["colour"]
        print(path.split("/")[-1][5:-5], r.get("train_steps", ""), c["proportions"], "FD", c["fd"],
              "quality", r["quality"]["classifier_feature_fd"])
END
}

pack() { tar czf "$OUT/results.tar.gz" --exclude='*.safetensors' --exclude='state*' "$W" 2>/dev/null; }
