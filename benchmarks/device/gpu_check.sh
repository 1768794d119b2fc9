#!/usr/bin/env bash
# Run THERE, on the lent GPU machine, as one device call from the repository root:
#
#     run(command="bash benchmarks/device/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# after benchmarks/device/fetch_wheels.sh here. It installs the carried wheels beside the
# machine's own torch, runs the GPU tests, then benchmarks/serve.py on CUDA at 256 x 256 and
# 1024 x 1024 (a small U-Net at 256 x 256 may be bound by the HTTP path rather than the GPU,
# so the batching speed-up is measured at both sizes). Everything lands in $OUT; record the
# figures in docs/benchmarks.md with the device named.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'
} 2>&1 | tee "$OUT/device.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD

timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/service/inference/test_engine.py \
    2>&1 | tee "$OUT/gpu_tests.txt"
for side in 256 1024; do
    timeout 180 python3 benchmarks/serve.py --device cuda --side "$side" --requests 512 \
        --seconds 20 --no-overload >"$OUT/serve_cuda_$side.json" 2>"$OUT/serve_cuda_$side.log"
    echo "serve.py --side $side: exit $?"
    python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["summary"]))' \
        "$OUT/serve_cuda_$side.json" || tail -20 "$OUT/serve_cuda_$side.log"
done
