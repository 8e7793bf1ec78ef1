#!/usr/bin/env bash
# Regenerate the sample logs from real `moh train` runs (about 2 minutes on an idle 2-core CPU).
#
#   healthy_adaptive.jsonl     the defaults: fully adaptive routing, every bar of issue 2 met
#   dense_baseline.jsonl       the same model with every head on (--router dense)
#   broken_no_gradient.jsonl   the reference trainer's pitfall 1: gates detached, so neither the
#                              LM loss nor (all aux weights 0) anything else reaches the router
#   broken_unstable_lr.jsonl   lr 0.3 with clipping off: loss and gradient norm blow up (0.05 no
#                              longer did once the output head was untied)
#
# Every run fixes --threads 1: the automatic count is the machine's cores, and a different
# thread count changes the last bits of float sums, so the samples would depend on the machine.
#
# Usage: sample_logs/regenerate.sh   (needs `moh` on PATH, or MOH=/path/to/moh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
moh="${MOH:-moh}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

run() {  # run NAME ARGS...: train into a scratch dir, keep only the log
  local name="$1"; shift
  "$moh" train --quiet --seed 1337 --threads 1 --out "$work/$name" "$@" >/dev/null
  cp "$work/$name/run.jsonl" "$here/$name.jsonl"
  echo "$here/$name.jsonl"
}

run healthy_adaptive
run dense_baseline --router dense
run broken_no_gradient --set straight_through=false --set lb_weight=0 --set z_weight=0 \
    --set complexity_weight=0 --set budget_weight=0
run broken_unstable_lr --lr 0.3 --set instruct_lr=0.3 --set grad_clip=0 --set warmup_steps=0
