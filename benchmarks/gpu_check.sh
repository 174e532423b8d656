#!/usr/bin/env bash
# The GPU check, ready for the day a GPU machine is lent: the CUDA paths of the test suite (device
# placement, one GPU per xdist worker, out-of-memory batch halving, no host sync per batch) and the GPU
# benchmark (Grad-CAM against the model's forward pass, ResNet-50 batch 64; batched against one-at-a-time
# maximisation). Under 5 minutes on a machine with torch, torchvision, jinja2, matplotlib,
# scikit-image and pytest preinstalled and no package registry: nothing is installed, the project
# runs from this checkout (PYTHONPATH=.). Writes to $OUT (default ./gpu-check):
#   gpu-tests.xml / gpu-tests.log   the CUDA tests (pytest -m gpu)
#   gpu-bench.json                  the benchmark's figures
#   summary.json                    exit codes, and the GPU as torch sees it
# Usage: OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"

# load the plugin from this checkout unless cnnaudit is installed (then its entry point loads it)
plugin=(-p cnnaudit.plugin)
if "$PYTHON" -c "import sys; from importlib.metadata import entry_points; sys.exit(0 if any(e.name == 'cnnaudit' for e in entry_points(group='pytest11')) else 1)"; then
    plugin=()
fi

timeout 200 "$PYTHON" -m pytest "${plugin[@]}" -p no:cacheprovider -m gpu tests/test_gpu.py -q \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}

(cd benchmarks && timeout 150 "$PYTHON" bench_gpu.py --out "$OUT/gpu-bench.json" > "$OUT/gpu-bench.log" 2>&1)
bench=$?

"$PYTHON" - "$OUT" "$tests" "$bench" <<'PY'
import json, sys, torch
out, tests, bench = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
summary = {"tests_exit": tests, "bench_exit": bench, "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(summary))
PY
exit $(( tests != 0 || bench != 0 ))
