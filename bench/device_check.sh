#!/usr/bin/env bash
# The GPU checks of this project, as one prepared command for a session lent a device machine:
#
#   bash bench/fetch_device_wheels.sh                        # here, once (needs an index)
#   run(command="bash bench/device_check.sh", carry=[".device-wheels"], timeout_s=480)
#
# On the device: installs the carried wheels beside the image's torch, then
#   1. the CUDA tests (loader batches on the GPU equal the CPU ones, bit for bit),
#   2. bench/stream.py: loader throughput there, and the share of step time a U-Net training on the GPU
#      spends waiting for data (target <= 5%), with loader threads and with loader processes,
#   3. a short symmetric-learning run of the CLI on the GPU (the main job end to end).
# Every result lands in $OUT (stream_gpu.json, pytest_cuda.txt, train_gpu.txt, gpu.txt).
set -uo pipefail
OUT=${OUT:-/tmp/hvaeseg-device-out}
mkdir -p "$OUT"
site=/tmp/hvaeseg-site
python3 -m pip install -q --no-index --no-deps --target "$site" .device-wheels/*.whl || exit 1
export PYTHONPATH="$site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
python3 -c "import torch, zarr, pyro; print(torch.__version__, zarr.__version__, pyro.__version__, torch.cuda.get_device_name(0))" >>"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/data/test_loader.py tests/data/test_workers.py -k "cuda" >"$OUT/pytest_cuda.txt" 2>&1
tail -3 "$OUT/pytest_cuda.txt"

timeout 240 python3 bench/stream.py --store /tmp/hvaeseg-stream.zarr --rounds 3 >"$OUT/stream_gpu.json" 2>"$OUT/stream_gpu.err"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: d.get(k) for k in ('patches_per_s', 'ratio_vs_xbatcher', 'ratio_vs_decode_limit', 'processes_ratio_vs_decode_limit', 'cuda', 'cuda_processes', 'targets_met')}, indent=1))" "$OUT/stream_gpu.json" || tail -20 "$OUT/stream_gpu.err"

timeout 150 python3 -m hvaeseg train --method symmetric --data synthetic:small --labels 10 --steps 300 --patch-size 32 \
  --device cuda --out /tmp/hvaeseg-run --evaluate >"$OUT/train_gpu.txt" 2>&1
tail -15 "$OUT/train_gpu.txt"
