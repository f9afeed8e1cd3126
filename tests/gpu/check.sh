#!/usr/bin/env bash
# The one prepared check for a lent GPU (issues 26 and 36): both studies' GPU paths in one call.
#
#   export CHECK_STARTED=$(date +%s); bash .device/setup.sh && PYTHONPATH=. bash tests/gpu/check.sh   # on a lent GPU
#   bash tests/gpu/check.sh --cpu                                                                      # tiny, no CUDA
#
# Whatever happens in the call, something comes back: after every step, $OUT/check.json holds every step so far
# (its status and result) and the ones not reached, and $OUT/check-files.tar.gz the per-step JSONs, logs, pages,
# CSVs, the study's mlflow.db and the cells' logs. A step that fails or runs past its cap is that step's result
# and the next step runs; a step that would end past the deadline is not started ("not reached: no time left").
# Without $OUT (the device tool's folder) both land in ./gpu-check/.
#
# On the GPU, ordered by value, with their caps (estimates: no GPU has measured them yet):
#   environment   40 s   the GPU, torch, CUDA, cuDNN, driver asked first; then CIFAR-10 decoded into the cache (~22 s)
#   graph         35 s   the CIFAR step captured in a CUDA graph equals the eager step after 50 steps
#   science      160 s   cifar-depth's cpu-long cells (12, 2,000 iterations) and their verdicts; the CPU reference's
#                        verdicts are computed and written first, so a time-out keeps them
#   bench         45 s   make bench: the seed-style loop against ours, ResNet-18 and ResNet-34
#   study         70 s   the smoke study through papermill on cuda, then the report from its runs
#   surface-grid  30 s   the loss surface's 31 x 31 grid (the GPU profiles' contour) of one plain-56, on cuda
#   imagenet-cell 45 s   one ImageNet cell through torchrun (rendezvous on 127.0.0.1), NCCL and DDP, 2 epochs
#   imagenet-bench 35 s  make bench MODE=imagenet: input paths, training per GPU at 224
# 460 s of caps, each step at most KILL_AFTER (5 s) more after its SIGTERM (40 s), and SETUP_SECONDS (40 s) for
# .device/setup.sh: 540 s, inside the call's 600. The deadline counts from $CHECK_STARTED (set before the set-up),
# else from this script's start less SETUP_SECONDS.
# make test runs the --cpu mode (tests/test_gpu_check.py), so its flags, paths and keys are checked on every commit.
set -uo pipefail

SETUP_SECONDS=40
KILL_AFTER=5
DEADLINE_SECONDS=540
GPU_STEPS="environment:40 graph:35 science:160 bench:45 study:70 surface-grid:30 imagenet-cell:45 imagenet-bench:35"
CPU_STEPS="environment:60 graph:60 science:240 bench:120 study:180 surface-grid:120 imagenet-cell:120 imagenet-bench:120"

mode=gpu
data=${CHECK_DATA:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) mode=cpu ;;
        --data) data=$2; shift ;;
        *) echo "check.sh: unknown argument $1; legal: --cpu, --data PATH" >&2; exit 2 ;;
    esac
    shift
done
started=${CHECK_STARTED:-$(( $(date +%s) - SETUP_SECONDS ))}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# No network on the lent machine: MLflow's telemetry would try it.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
python=${PYTHON:-$(command -v python3 || command -v python)}
out=${OUT:-$root/gpu-check}
work=$(mktemp -d "${TMPDIR:-/tmp}/resnet-check-XXXXXX")
export RESNET_RUNS_DIR="$work/runs" RESNET_DATA_DIR="$work/data"
if [ -z "$data" ]; then
    if [ "$mode" = cpu ]; then data=synthetic:10000
    elif [ -f .device/cifar10-jpeg.tar.xz ]; then data=.device/cifar10-jpeg.tar.xz
    else data=download; fi
fi
plan=${CHECK_STEPS:-$([ "$mode" = gpu ] && echo "$GPU_STEPS" || echo "$CPU_STEPS")}
mkdir -p "$out" "$work/logs"
: >"$work/exit-codes"

# check.json and the tar, as they stand: called before the first step and after every one.
record() {
    "$python" tests/gpu/gather.py --work "$work" --mode "$mode" --plan "$plan" --started "$started" \
        --target "$out/check.json"
    (cd "$work" && tar -czf "$out/.check-files.tar.gz" --exclude='*.pt' --exclude='data' \
        logs $(ls ./*.json ./*.html ./*.csv ./mlflow.db 2>/dev/null) $(ls -d runs 2>/dev/null)) \
        && mv "$out/.check-files.tar.gz" "$out/check-files.tar.gz"
}

record
for entry in $plan; do
    step=${entry%%:*} cap=${entry##*:}
    left=$(( started + DEADLINE_SECONDS - $(date +%s) ))
    if [ "$mode" = gpu ] && [ $(( cap + KILL_AFTER )) -gt "$left" ]; then
        echo "== $step: not started, ${left} s left of the deadline and its cap is ${cap} s"
        echo "$step skipped 0 $cap" >>"$work/exit-codes"
        continue
    fi
    echo "== $step (at most ${cap} s)"
    step_started=$(date +%s)
    timeout --kill-after=$KILL_AFTER "$cap" "$python" tests/gpu/steps.py "$step" --mode "$mode" --work "$work" \
        --data "$data" >"$work/logs/$step.log" 2>&1
    code=$?
    tail -n 1 "$work/logs/$step.log"
    echo "$step $code $(( $(date +%s) - step_started )) $cap" >>"$work/exit-codes"
    record
done
rm -rf "$work"
echo "check done in $(( $(date +%s) - started )) s (set-up counted): $out/check.json, $out/check-files.tar.gz"
