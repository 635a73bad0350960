#!/usr/bin/env bash
# Every GPU check on one GPU of the GPU box: kernels at real shapes, the engine against HF, then
# the speed figures (bf16 and W4A16 side by side). Prints a short table last.
# Usage: bash tests/gpu/run_all.sh [OUT_DIR]. On a box with 2+ GPUs, also see run_multi_gpu.sh.
set -uo pipefail
out="${1:-${OUT:-/tmp/lmstation-gpu}}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 LMSTATION_HOME="$out/home"
summary="$out/summary.txt"; : >"$summary"
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$summary"; }

# Output to files, not pipes: a killed step's children must not hold a pipe open.
timeout -k 5 480 python3 -m pytest -q -p no:cacheprovider -o faulthandler_timeout=120 tests/engine/kernels tests/gpu \
  >"$out/pytest.log" 2>&1
row "GPU tests (kernels, engine vs HF)" "$(tail -n 1 "$out/pytest.log")"

bench() {  # name, args...
  local name="$1"; shift
  timeout -k 5 300 python3 -m app bench "$@" --json >"$out/$name.json" 2>"$out/$name.err" || { row "$name" "FAILED (see $name.err)"; return; }
  row "$name" "$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); b=r['batch']; print(' | '.join(f\"{x['name']}: prefill {x['prefill_tokens_per_s']:.0f} decode {x['decode_tokens_per_s']:.0f} tok/s\" for x in b), '|', {k: v for k, v in r.items() if k != 'batch'})" "$out/$name.json")"
}
bench llama8b-b1 --shape llama-3-8b --input-len 128 --output-len 256 --limits --ttft 2048
bench llama8b-awq-b1 --shape llama-3-8b-awq --input-len 128 --output-len 256 --ttft 2048
bench llama8b-b64 --shape llama-3-8b --batch 64 --input-len 128 --output-len 128
bench llama8b-awq-b64 --shape llama-3-8b-awq --batch 64 --input-len 128 --output-len 128
bench smollm-b1 --shape smollm2-135m --input-len 128 --output-len 256
bench llama8b-b32-hf-and-workload --shape llama-3-8b --batch 32 --input-len 128 --output-len 128 --baseline hf --workload 1000
timeout -k 5 500 python3 benchmarks/gpu_vlm.py --workdir "$out/vlm" >"$out/vlm.txt" 2>&1
row "Qwen2.5-VL-7B shape, 1024x1024 picture" "$(grep -E '^(ours|logits|HF)' "$out/vlm.txt" | tr '\n' ' ')"
echo; echo "== summary =="; cat "$summary"
