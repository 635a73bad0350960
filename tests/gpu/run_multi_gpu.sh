#!/usr/bin/env bash
# The checks that need 2 GPUs (nvidia-h100-x2 or larger): the peer all-reduce, tensor parallelism
# against one GPU (tiny models, AWQ, a killed rank), then TP=2 against TP=1 on the Llama-3-8B
# shape (logits and batch-1 speed). Usage: bash tests/gpu/run_multi_gpu.sh [OUT_DIR]
set -uo pipefail
out="${1:-${OUT:-/tmp/lmstation-gpu}}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 LMSTATION_HOME="$out/home"
step() {  # name, seconds, command...: output to a file; leftover rank processes killed after
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$out/$name.txt" 2>&1
  echo "== $name: exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
  pkill -9 -f spawn_main; sleep 1
}
step tp-tests 300 python3 -m pytest -v -p no:cacheprovider -o faulthandler_timeout=100 \
  tests/gpu/test_peer_all_reduce_gpu.py tests/gpu/test_tensor_parallel_gpu.py
step tp-bench 240 python3 benchmarks/gpu_tensor_parallel.py --shape llama-3-8b --tp 2
grep -E "PASSED|FAILED|ERROR|passed|failed" "$out/tp-tests.txt" | tail -n 12
grep -E "TP=|greedy|speed-up" "$out/tp-bench.txt"
