"""What the speech decoder says, alone: its unit error rate (UER) on answers it never trained on.

    python -m evals.unit_error --models omni_cli/e2e/weights/omni-e2e-base-smollm2 runs/x/model --data runs/v2/data

For each answered item of the built set's held-out split (and, with `--alpaca N`, the base
LLM's answers to the first N AlpacaEval instructions, typed), the LLM reads the typed
instruction and the answer (teacher forcing, as stage 2 trains), the speech decoder predicts
units from the states of the tokens the pipeline hands it (no markdown or list markers), read
as the model reads them (greedy CTC, or its unit-LM beam search), and the units are compared
with the ones the vocoder's front end gives for that text (Piper's phoneme ids): edit distance over the unit
sequence, the way WER counts words. Deterministic and fast (no answer generation, no vocoder,
no Whisper), so stage-2 changes can be told apart where ASR-WER on 40 spoken answers cannot
(its noise is about 10 points). With `--speak N`, the first N items are also vocoded from the
predicted and from the true units, and the Whisper judge's transcripts scored against the
answer text (corpus and per-item median): how a UER turns into intelligibility.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jiwer
import torch

from evals.report import emit, median_asr_wer_percent


def unit_error_rate(references: list[list[int]], predictions: list[list[int]]) -> float:
    """Corpus edit distance over unit sequences / total reference units, in [0, inf)."""
    keep = [(r, p) for r, p in zip(references, predictions, strict=True) if r]
    out = jiwer.process_words([" ".join(map(str, r)) for r, _ in keep], [" ".join(map(str, p)) or "-" for _, p in keep])
    return out.wer


def predicted_units(model, instructions: list[str], answers: list[str]) -> list[list[int]]:
    """The speech decoder's units for each answer, from the states of the tokens the pipeline
    hands it (`said_answer`: no markdown or list markers), read as the model reads them."""
    from omni_cli.e2e.train import emitting_states_batch, said_answer

    gen = model.speech_generator
    pairs = emitting_states_batch(model, answers, instructions=instructions)
    out = []
    for answer, (h, e) in zip(answers, pairs):
        keep = torch.tensor(said_answer(model, answer)[1])
        out.append(gen.predict(h[keep].to(model.device), e[keep].to(model.device) if gen.config.token_input else None))
    return out


def main() -> None:
    from omni_cli.e2e.build_data import read_manifest
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import said_answer
    from omni_cli.e2e.unit_vocoder import load_unit_vocoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--data", type=Path, required=True, help="a built set (omni data build): its answered held-out items")
    ap.add_argument("--limit", type=int, default=0, help="held-out items (0: all answered ones)")
    ap.add_argument("--alpaca", type=int, default=0, help="also the base LLM's answers to this many AlpacaEval instructions")
    ap.add_argument("--speak", type=int, default=0, help="vocode and judge this many items per set")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    held = read_manifest(args.data, split="heldout", answered=True)
    if args.limit:
        held = held[: args.limit]
    sets = {"heldout-answers": [(r["instruction"], r["response"]) for r in held]}
    first = load_omni(args.models[0])
    vocoder = load_unit_vocoder(first.config.vocoder)
    if args.alpaca:
        from omni_cli.benches import load_bench
        from omni_cli.llm import ChatLLM, GenerationOptions, answer_texts

        questions = [i.reference for i in load_bench("instructs2s-eval")[: args.alpaca]]
        base = ChatLLM.load(first.config.llm_source or None)
        sets["alpaca-answers"] = list(zip(questions, answer_texts(base, questions, GenerationOptions(max_new_tokens=80))))
        del base
    truth = {name: [vocoder.text_to_units(said_answer(first, a)[2]) for _, a in items] for name, items in sets.items()}
    judge = None
    if args.speak:
        from omni_cli.asr import load_judge
        from omni_cli.audio import SAMPLE_RATE, resample
        from omni_cli.metrics import asr_wer

        judge = load_judge()

        def heard(units: list[int]) -> str:
            audio = resample(vocoder.units_to_audio(units), vocoder.sample_rate, SAMPLE_RATE)
            return judge.transcribe(audio).text.strip() if audio.size else ""

    result = {}
    for n, folder in enumerate(args.models):
        model = first if n == 0 else load_omni(folder)
        scores = {}
        for name, items in sets.items():
            with torch.inference_mode():
                pred = predicted_units(model, [q for q, _ in items], [a for _, a in items])
            scores[name] = {"items": len(items), "uer": round(100 * unit_error_rate(truth[name], pred), 2)}
            if judge is not None:
                k = min(args.speak, len(items))
                answers = [a for _, a in items[:k]]
                spoken = [heard(u) for u in pred[:k]]
                scores[name]["asr_wer_predicted_units"] = round(100 * asr_wer(answers, spoken), 2)
                scores[name]["asr_wer_predicted_units_median"] = median_asr_wer_percent(answers, spoken)
                spoken = [heard(u) for u in truth[name][:k]]
                scores[name]["asr_wer_true_units"] = round(100 * asr_wer(answers, spoken), 2)
                scores[name]["asr_wer_true_units_median"] = median_asr_wer_percent(answers, spoken)
        result[str(folder)] = scores
        print(folder, json.dumps(scores), flush=True)
    emit(result, args.json)


if __name__ == "__main__":
    main()
