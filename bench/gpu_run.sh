#!/usr/bin/env bash
# The GPU benchmark runs for bench/RESULTS.md, on a machine without network access whose python3
# has a CUDA build of PyTorch and transformers; the other packages come from .whl/
# (bench/gpu_wheels.sh). Every output goes to OUT_DIR as it is printed; each run's JSON holds
# the sizes it finished.
#   bash bench/gpu_run.sh OUT_DIR [MINUTES_PER_RUN, default 3] [TOTAL_MINUTES, default 9]
# The first two runs stop after MINUTES_PER_RUN; the last (--compile, whose first steps compile)
# has what is left of TOTAL_MINUTES, counted from the start of this script, and is skipped on a
# torch older than 2.12 (see dynamic_compile_works in models/conformer.py). Before them, the
# attention table (bench/attention_memory.py: one base-size layer, materialised bias against
# query blocks, 5/20/40 s clips) takes about a minute.
set -uo pipefail
out=${1:?usage: bash bench/gpu_run.sh OUT_DIR [MINUTES_PER_RUN] [TOTAL_MINUTES]}
minutes=${2:-3}
total=$((${3:-9} * 60))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
export PYTHONPATH="$PWD/src:$site"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__)"
} 2>&1 | tee "$out/env.txt"
corpus=$(mktemp -d)/demo
python3 -m bestrq synth --out "$corpus" --hours 1 --seed 0 --quiet 2>&1 | tail -3 | tee "$out/synth.txt"
bench() {  # SECONDS NAME ARGS...: one benchmark run, stopped after SECONDS (or at the total's end)
  local limit=$1 name=$2; shift 2
  local left=$((total - SECONDS))
  ((limit > left)) && limit=$left
  echo "== $name: $* (stopped after ${limit} s)" | tee "$out/$name.txt"
  ((limit > 0)) || { echo "exit skipped: no time left" | tee -a "$out/$name.txt"; return; }
  # BENCH_DEVICE and BENCH_EXTRA (more arguments) are for a dry run on a CPU
  timeout "$limit" python3 -m bestrq.benchmark --corpus "$corpus" --device "${BENCH_DEVICE:-cuda}" \
    --precision bf16 --sizes tiny paper --json "$out/$name.json" "$@" ${BENCH_EXTRA:-} 2>&1 | tee -a "$out/$name.txt"
  echo "exit ${PIPESTATUS[0]}" | tee -a "$out/$name.txt"
}
echo "== attention: bench/attention_memory.py --device ${BENCH_DEVICE:-cuda}" | tee "$out/attention.txt"
timeout 300 python3 bench/attention_memory.py --device "${BENCH_DEVICE:-cuda}" --batch 8 2>&1 | tee -a "$out/attention.txt"
# the first run also times our BEST-RQ computing its padded frames: does skipping them pay on a GPU?
bench "$((minutes * 60))" bf16 --models bestrq-ours bestrq-padded wav2vec2-ours wav2vec2-hf bestrq-sb
bench "$((minutes * 60))" bf16_bucketed --batching bucketed
old_torch=$(python3 -c "import torch; from bestrq.models.conformer import DYNAMIC_COMPILE_TORCH as v, \
dynamic_compile_works as works; print('' if works() else f'torch {torch.__version__} < {v}')")
if [[ -z $old_torch ]]; then
  bench "$total" bf16_compile --compile
else  # our encoders compile again for every batch length there, or fail (docs/implementation.md)
  echo "== bf16_compile: skipped: $old_torch" | tee "$out/bf16_compile.txt"
fi
