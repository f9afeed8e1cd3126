#!/usr/bin/env bash
# The one prepared check for a lent GPU (issue 26): both studies' GPU paths in one call.
#
#   bash .device/setup.sh && PYTHONPATH=. bash tests/gpu/check.sh            # on a lent H100/H200 (one GPU)
#   bash tests/gpu/check.sh --cpu                                             # the same steps, tiny, no CUDA
#
# Every step has its own time cap and is non-fatal: a failure or a time-out is that step's result and the
# next step runs. Each step's result goes into one JSON file, $OUT/check.json; its log, the pages and the
# CSVs into $OUT/check-files.tar.gz. Without $OUT (the device tool's folder) both land in ./gpu-check/.
# The caps add up to 8 minutes on the GPU (the whole loan is 15, start-up included):
#   a. environment      30 s   torch, CUDA, cuDNN, driver, the GPU and its memory; CIFAR-10 decoded into the cache
#   b. graph            40 s   the CIFAR step captured in a CUDA graph equals the eager step after 50 steps
#      bench            50 s   make bench: the seed-style loop against ours, ResNet-18 and ResNet-34
#   c. study            75 s   the smoke study through papermill on cuda, then the report from its runs
#   d. science         150 s   cifar-depth's cpu-long cells (12 of them, 2,000 iterations) and their verdicts
#      surface-grid     25 s   the loss surface's 31 x 31 grid (the GPU profiles' contour) of one plain-56, on cuda
#   e. imagenet-bench   55 s   make bench MODE=imagenet: input paths, training per GPU at 224
#      imagenet-cell    55 s   one ImageNet cell through torchrun, NCCL and DDP at world size 1, 2 epochs
# A step past its cap gets SIGTERM, as the study pool's stop (its cells marked KILLED), and SIGKILL 30 s later.
# make test runs the --cpu mode (tests/test_gpu_check.py), so its flags, paths and keys are checked on every commit.
set -uo pipefail

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
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-$(command -v python3 || command -v python)}
out=${OUT:-$root/gpu-check}
work=$(mktemp -d "${TMPDIR:-/tmp}/resnet-check-XXXXXX")
export RESNET_RUNS_DIR="$work/runs" RESNET_DATA_DIR="$work/data"
if [ -z "$data" ]; then
    if [ "$mode" = cpu ]; then data=synthetic:10000
    elif [ -f .device/cifar10-jpeg.tar.xz ]; then data=.device/cifar10-jpeg.tar.xz
    else data=download; fi
fi
mkdir -p "$out" "$work/logs"

if [ "$mode" = gpu ]; then
    steps=(environment:30 graph:40 bench:50 study:75 science:150 surface-grid:25 imagenet-bench:55 imagenet-cell:55)
else
    steps=(environment:60 graph:60 bench:120 study:180 science:240 surface-grid:120 imagenet-bench:120 imagenet-cell:120)
fi
started=$(date +%s)
for entry in "${steps[@]}"; do
    step=${entry%%:*} cap=${entry##*:}
    echo "== $step (at most ${cap} s)"
    step_started=$(date +%s)
    timeout --kill-after=30 "$cap" "$python" tests/gpu/steps.py "$step" --mode "$mode" --work "$work" --data "$data" \
        >"$work/logs/$step.log" 2>&1
    code=$?
    tail -n 1 "$work/logs/$step.log"
    echo "$step $code $(( $(date +%s) - step_started )) $cap" >>"$work/exit-codes"
done

"$python" - "$work" "$mode" "$out/check.json" "$(( $(date +%s) - started ))" <<'PY'
import json, subprocess, sys
from pathlib import Path

work, mode, target, seconds = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
steps = {}
for line in (work / "exit-codes").read_text().splitlines():
    step, code, took, cap = line.split()
    path = work / f"{step}.json"
    record = json.loads(path.read_text()) if path.is_file() else {"result": None}
    if code in ("124", "137"):
        record["status"] = "timed out"
    elif "status" not in record:
        record["status"] = f"crashed (exit code {code})"
    record.update(wall_seconds=int(took), budget_seconds=int(cap))
    steps[step] = record
check = {"mode": mode, "commit": commit, "dirty": dirty, "wall_seconds": seconds, "steps": steps,
         "passed": all(record["status"] == "passed" for record in steps.values())}
target.write_text(json.dumps(check, indent=2))
print(json.dumps({step: record["status"] for step, record in steps.items()}))
PY
tar -czf "$out/check-files.tar.gz" -C "$work" logs $(cd "$work" && ls ./*.html ./*.csv 2>/dev/null)
rm -rf "$work"
echo "check done in $(( $(date +%s) - started )) s: $out/check.json, $out/check-files.tar.gz"
