#!/usr/bin/env bash
# Download, into .whl/, the wheels that `bench/gpu_run.sh` installs on a GPU machine without
# network access whose python3 already has a CUDA build of PyTorch and transformers (and the
# common scientific packages: numpy, scipy, pyyaml, tqdm, safetensors, tensorboard, matplotlib).
# Run it here, where pip reaches PyPI:   bash bench/gpu_wheels.sh [PYTHON_VERSION, default 3.12]
set -euo pipefail
py=${1:-3.12}
dest=.whl
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
# bestrq's own needs (lhotse with its needs, audio I/O, the synthesiser, WER) and the peer
# SpeechBrain (its modules used by the benchmark are pure PyTorch)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d "$dest" \
  lhotse==1.33.0 audioread cytoolz soundfile==0.14.0 cffi pycparser espeakng-loader==0.2.4 "wonderwords>=3,<4" \
  jiwer rapidfuzz speechbrain==1.1.2 hyperpyyaml==1.2.3 ruamel.yaml
python3 -m pip wheel -q --no-deps -w "$dest" intervaltree==3.1.0  # published as a source archive only
du -sh "$dest"
