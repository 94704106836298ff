#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, every step time-limited (15.5 minutes in all), writes
# gpu-check/summary.json with
#   1. the CUDA-marked tests (tests/test_cuda.py),
#   2. `make bench` on the GPU: EdgeFace-XXS, batch 256, fp16 AMP (gpu-check/bench.json),
#   3. a 2-epoch `edgeface train --device cuda` on generated sample data (gpu-check/train/),
#   4. deploy on that run: eval, a pt2 export with its parity check, embed and verify on the GPU (gpu-check/deploy/),
#   5. face alignment (MTCNN) on the GPU beside the official-style loop (gpu-check/bench-align.json; needs the
#      example photos: EDGEFACE_SHARED, else ../shared; skipped without them),
#   6. the ONNX export on onnxruntime's CUDA provider, fp32 and fp16, beside PyTorch on the GPU
#      (gpu-check/onnx-gpu.json; says "skipped" when onnxruntime-gpu is not installed),
#   7. the default ONNX export through TensorRT's ONNX parser, fp32 and fp16 engines, beside eager CUDA
#      (gpu-check/tensorrt-gpu.json; says "skipped" when the tensorrt package is not installed).
# It installs nothing: run it where the package is importable (make install, or pip install --no-deps -e .).
# GPU_CHECK_DEVICE=cpu rehearses the same steps on the CPU (a quick bench) to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${GPU_CHECK_OUT:-gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BENCH_ARGS=(--device cuda --amp fp16 --batch-size 256 --workers 4 --images 8192 --large-images 512 --repeats 3)
if [ "$DEVICE" = cpu ]; then
  BENCH_ARGS=(--device cpu --quick)
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu-check: no CUDA GPU is visible to $PY; run it on a machine with one" >&2
  exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)
step() {  # name, limit in seconds, command...
  local name=$1 limit=$2; shift 2
  local begin=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - begin ))" | tee -a "$OUT/steps.txt"
  tail -n 3 "$OUT/$name.log"
}
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
  | tee "$OUT/device.txt"
step tests 150 "$PY" -m pytest -q -m cuda tests/test_cuda.py
step bench 240 "$PY" benchmarks/bench.py "${BENCH_ARGS[@]}" --out "$OUT/bench.json"
step train 90 bash -c "'$PY' -m edgeface_cli sample-data '$OUT/data' --ids 16 --per-id 32 --val-per-id 4 --size 112 &&
  '$PY' -m edgeface_cli train --train-dir '$OUT/data/train' --val-dir '$OUT/data/val' --device $DEVICE --out '$OUT/train' \
  --force --stage1-epochs 1 --epochs 2 --batch-size 64 --quiet"
# pt2, not onnx: ONNX export needs onnxscript, which the GPU image may lack (the export extra).
step deploy 90 bash -c "'$PY' -m edgeface_cli eval --val-dir '$OUT/data/val' --checkpoint '$OUT/train' --device $DEVICE &&
  '$PY' -m edgeface_cli export --checkpoint '$OUT/train' --format pt2 --out '$OUT/deploy/edgeface.pt2' --json &&
  '$PY' -m edgeface_cli embed '$OUT/data/val' --checkpoint '$OUT/train' --device $DEVICE --out '$OUT/deploy/val.npz' &&
  '$PY' -m edgeface_cli verify '$OUT/data/val/id_000/0000.png' '$OUT/data/val/id_000/0001.png' --checkpoint '$OUT/train' \
  --device $DEVICE --json"
step align 60 "$PY" benchmarks/align.py --device $DEVICE --repeats 2 --out "$OUT/bench-align.json"
step onnx-gpu 120 "$PY" benchmarks/onnx_gpu.py --device $DEVICE --out "$OUT/onnx-gpu.json"
step tensorrt 180 "$PY" benchmarks/tensorrt_gpu.py --out "$OUT/tensorrt-gpu.json"
"$PY" - "$OUT" "$started" <<'PY'
import json, sys, time
from pathlib import Path
out = Path(sys.argv[1])
steps = dict(line.split(" ", 1) for line in (out / "steps.txt").read_text().splitlines())
summary = {"device": (out / "device.txt").read_text().strip(), "steps": steps,
           "seconds": round(time.time() - int(sys.argv[2]))}
for key, name in (("bench", "bench.json"), ("align", "bench-align.json"), ("onnx_gpu", "onnx-gpu.json"),
                  ("tensorrt", "tensorrt-gpu.json")):
    if (out / name).exists():
        summary[key] = json.loads((out / name).read_text())
metrics = out / "train" / "metrics.jsonl"
if metrics.exists():
    summary["train_epochs"] = [json.loads(line) for line in metrics.read_text().splitlines()]
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"wrote {out / 'summary.json'} after {summary['seconds']} s")
PY
grep -q "rc=[^0]" "$OUT/steps.txt" && exit 1 || exit 0
