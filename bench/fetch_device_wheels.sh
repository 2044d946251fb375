#!/usr/bin/env bash
# Wheels the GPU check needs that the device image lacks (it has torch, numpy, xarray, fsspec, pyyaml, tqdm,
# matplotlib; no network). Run here, where pip can reach an index; the wheels land in .device-wheels/
# (git-ignored, about 11 MB) and travel with `run(..., carry=[".device-wheels"])`.
# Versions pinned to what the tests here run with; the device's Python is 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.device-wheels
mkdir -p "$dest"
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$dest" "zarr==3.1.6" "numcodecs==0.16.6" "pyro-ppl==1.9.2" "pyro-api==0.1.2" "xbatcher==0.4.0" \
  "donfig==0.8.1.post1" "google-crc32c==1.9.0"
ls "$dest"
