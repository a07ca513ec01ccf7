#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent GPU machine (bare: PyTorch and
# transformers, no registry, no network). Prepare here first:
#   python -m evals.train_speed --make-clips runs/v2/data --clips .gpu/clips   # 64 clips + the LLM's tokenizer
#   pip download the wheels the machine lacks into .whl/ (transformers, soundfile, openai-whisper, ...)
# then run it there with .whl and .gpu carried. It runs
#   1. the training and end-to-end model tests on CUDA (OMNI_TEST_DEVICE=cuda: the same
#      assertions as on the CPU: losses fall, checkpoints save, load and resume);
#   2. evals.train_speed on the GPU and on the same machine's CPU cores (a same-run ratio).
# Results land in $OUT (tests.log, speed-cuda.json, speed-cpu.json).
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
OMNI_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider -m "not real" tests/test_training.py tests/test_ctc_adaptor.py \
  -k "stage or lora or cli_train or batched or token_reading or collapsed or masked or export" 2>&1 | tee "$OUT/tests.log"
timeout 150 python3 -m evals.train_speed --clips .gpu/clips --device cuda --steps 30 --json "$OUT/speed-cuda.json" 2>&1 | grep -v "shards"
timeout 120 python3 -m evals.train_speed --clips .gpu/clips --device cpu --steps 6 --json "$OUT/speed-cpu.json" 2>&1 | grep -v "shards"
