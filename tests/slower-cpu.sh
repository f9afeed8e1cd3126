#!/usr/bin/env bash
# Run a command as on a CPU about half as fast per core as this one, to time `make test` for slower machines
# (issue 37: under 20 minutes on a 2-core AVX2-only CPU) where none is at hand:
#
#   bash tests/slower-cpu.sh make test
#
# One busy loop per core, pinned there at the command's priority: wherever the command computes it gets half of
# that core (the kernel shares a core equally between tasks of equal weight), while its sleeps, waits on servers
# and Slurm's scheduling take the time they take, as on a slower CPU. Measured on a 2-core AMD EPYC (AVX512-BF16,
# fp32): a plain-56 training step at batch 128 on one thread ran at 80 images/s alone, 46 beside the loops, near
# the rate the brief gives for a 2-core AVX2-only EPYC (44). Add ONEDNN_MAX_CPU_ISA=AVX2 so that the project also
# takes the CPU for one without native bf16 (docs/cpu.md). The loops share the command's session, so the kernel's
# autogroups (one per session) do not give the command a core's share of its own.
set -euo pipefail
if [ $# -eq 0 ]; then
    echo "usage: bash tests/slower-cpu.sh COMMAND [ARGUMENTS...]" >&2
    exit 2
fi
loops=()
for core in $(seq 0 $(( $(nproc) - 1 ))); do
    taskset -c "$core" bash -c 'while :; do :; done' &
    loops+=($!)
done
trap 'kill "${loops[@]}" 2>/dev/null' EXIT
"$@"
