#!/usr/bin/env bash
# The engine's CUDA and nccl paths, checked in one call on a machine with an NVIDIA GPU.
#
#     bash bench/gpu_check.sh [OUT_DIR]        (from the repository root; a few minutes)
#
# Never run yet: no GPU was lent to the session that wrote it (docs/benchmarks.md, "GPU").
# It needs a CUDA build of torch in the venv (the project pins the CPU wheel torch==2.13.0;
# install the CUDA wheel of the same version there first). Steps, each with its exit code in
# the summary at the end; a failing step does not stop the later ones:
#   1. the default `moh train` run with --device cuda, then `moh report` on it (PASS expected);
#   2. bench/bench_time_to_target.py on the reference corpus with device=cuda;
#   3. a 1-rank torchrun (nccl backend, the engine picks it for cuda) of a short run, reported;
#   4. bench/bench_throughput.py --device cuda: tokens/s and MFU against the GPU's bf16 and
#      fp32 matmul peaks measured in the same process (the model trains in fp32).
# Everything goes to OUT_DIR (default /tmp/moh_gpu_check): logs, runs and the JSON results.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MOH=${MOH:-.venv/bin/moh}
OUT=${1:-/tmp/moh_gpu_check}
DATA=${DATA:-../shared/rustgpt/data}
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch in $PY sees no CUDA device (CPU wheel, or no GPU); nothing run" >&2
    exit 2
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  uptime; } | tee "$OUT/machine.txt"

declare -A RC
step() {  # step NAME CMD...: run, keep its output, record its exit code
    local name=$1; shift
    echo "== $name: $*" | tee "$OUT/$name.log"
    local t0=$SECONDS
    "$@" >>"$OUT/$name.log" 2>&1
    RC[$name]=$?
    echo "== $name: exit ${RC[$name]} after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
    tail -n 25 "$OUT/$name.log"
}

step default_train /usr/bin/env time -p "$MOH" train --quiet --overwrite --device cuda --out "$OUT/default"
step default_report "$MOH" report "$OUT/default"
step reference "$PY" bench/bench_time_to_target.py --data "$DATA" --set device=cuda
step nccl_1rank /usr/bin/env time -p "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m moh.train --out "$OUT/nccl" --overwrite device=cuda pretrain_epochs=4 instruct_epochs=4
step nccl_backend "$PY" -c "import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r['backend'], r['device']); sys.exit(0 if r['backend']=='nccl' else 1)" "$OUT/nccl/run.jsonl"
step throughput "$PY" bench/bench_throughput.py --device cuda --steps 200
cp bench/results/bench_time_to_target.json bench/results/bench_throughput_cuda.json "$OUT/" 2>/dev/null

echo "== summary (exit codes; 0 = ok)"
for name in default_train default_report reference nccl_1rank nccl_backend throughput; do
    echo "$name ${RC[$name]:-not run}"
done | tee "$OUT/summary.txt"
