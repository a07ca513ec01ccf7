"""Quality of an end-to-end model (issue 4, the model card's figures), in one command:

    python -m evals.e2e_quality --data runs/default/data [--model PATH] [--limit 60] [--out quality.json]

Three measures, each on held-out voices (the built set's `heldout` split: eSpeak's British
voices, which no training item uses), on real human speech (`real-speech` bench) and on the
AlpacaEval `helpful_base` + `vicuna` instructions spoken by held-out voices (`instructs2s-eval`):
- repeat WER: the model is asked to repeat what was said (the ASR pre-alignment's prompt);
  WER of its text against the transcript: speech understanding through the LLM;
- chrF: the model's text answer to the speech against the same LLM's answer to the
  instruction typed as text, under the same system prompt (response fidelity);
- ASR-WER: the answer text against a Whisper transcript of the answer's speech.
Real speech gets the repeat WER only (its utterances are not instructions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from evals.report import emit


def _repeat(model, audio, max_new_tokens: int = 60) -> str:
    from omni_cli.e2e.train import ASR_INSTRUCTION
    from omni_cli.llm import GenerationOptions, stream_generate

    prompt = dataclasses.replace(model.config.prompt, instruction=ASR_INSTRUCTION)
    features = model.speech_features(audio)
    steps = stream_generate(model.llm, inputs_embeds=model.prompt_embeds(features, prompt=prompt),
                            options=GenerationOptions(max_new_tokens=max_new_tokens))
    return "".join(s.text for s in steps).strip()


def evaluate(model_spec: str | None, data_dir: Path | None, limit: int, max_new_tokens: int) -> dict:
    from sacrebleu.metrics import CHRF

    from omni_cli.asr import load_asr
    from omni_cli.audio import load_audio
    from omni_cli.benches import load_bench
    from omni_cli.e2e.build_data import read_manifest
    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.events import collect
    from omni_cli.llm import GenerationOptions, answer_texts
    from omni_cli.metrics import wer

    pipeline = load_e2e_pipeline(model_spec, None, E2EOptions(generation=GenerationOptions(max_new_tokens=max_new_tokens)))
    model = pipeline.model
    asr = load_asr(None)
    chrf = CHRF()
    sets: dict[str, list[dict]] = {}
    if data_dir is not None:
        held = read_manifest(data_dir, split="heldout")
        answered = [r for r in held if r.get("response") is not None][:limit]
        sets["heldout-voices"] = [{"id": r["id"], "audio": r["audio"], "reference": r["instruction"], "answer": r["response"]}
                                  for r in answered]
    sets["real-speech"] = [{"id": i.id, "audio": i.audio, "reference": i.reference, "answer": None} for i in load_bench("real-speech")]
    alpaca = load_bench("instructs2s-eval")[:limit]
    refs = answer_texts(model.llm, [i.reference for i in alpaca], GenerationOptions(max_new_tokens=max_new_tokens))
    sets["alpacaeval-heldout-voice"] = [{"id": i.id, "audio": i.audio, "reference": i.reference, "answer": a}
                                        for i, a in zip(alpaca, refs)]
    report: dict = {"model": model_spec or "omni-e2e-tiny-en-smollm2 (default)", "max_new_tokens": max_new_tokens, "sets": {}}
    for name, items in sets.items():
        rows = []
        t0 = time.perf_counter()
        for n, item in enumerate(items):
            audio = load_audio(item["audio"])
            row = {"id": item["id"], "reference": item["reference"], "repeat": _repeat(model, audio)}
            if item["answer"] is not None:
                response = collect(pipeline.run(audio), pipeline.sample_rate)
                row.update(answer=response.text.strip(), text_answer=item["answer"],
                           heard=asr.transcribe(asr_input(response.audio, pipeline.sample_rate)).text.strip())
            rows.append(row)
            print(f"\r{name}: {n + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        summary = {"items": len(rows), "seconds": round(time.perf_counter() - t0, 1),
                   "repeat_wer": round(100 * wer([r["reference"] for r in rows], [r["repeat"] for r in rows]), 2)}
        answered_rows = [r for r in rows if "answer" in r]
        if answered_rows:
            summary["chrf"] = round(chrf.corpus_score([r["answer"] for r in answered_rows],
                                                      [[r["text_answer"] for r in answered_rows]]).score, 2)
            summary["asr_wer"] = round(100 * wer([r["answer"] for r in answered_rows], [r["heard"] for r in answered_rows]), 2)
        report["sets"][name] = {"summary": summary, "rows": rows}
    return report


def asr_input(audio, sample_rate: int):
    from omni_cli.audio import SAMPLE_RATE, resample

    return resample(audio, sample_rate, SAMPLE_RATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="e2e model folder (default: the shipped offline default)")
    parser.add_argument("--data", type=Path, help="a set built by `omni data build` (its held-out split is used)")
    parser.add_argument("--limit", type=int, default=60, help="items per set (held-out voices, AlpacaEval)")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="answer length, as in the training answers")
    parser.add_argument("--out", type=Path, help="write the full report (summaries and every item) as JSON here")
    args = parser.parse_args()
    report = evaluate(args.model, args.data, args.limit, args.max_new_tokens)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = ["| set | items | repeat WER % | chrF | ASR-WER % |", "|---|---|---|---|---|"]
    for name, s in report["sets"].items():
        m = s["summary"]
        lines.append(f"| {name} | {m['items']} | {m['repeat_wer']} | {m.get('chrf', '-')} | {m.get('asr_wer', '-')} |")
    print("\n".join(lines), file=sys.stderr)
    emit({"model": report["model"], **{name: s["summary"] for name, s in report["sets"].items()}}, None)


if __name__ == "__main__":
    main()
