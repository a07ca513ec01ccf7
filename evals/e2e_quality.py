"""Quality of an end-to-end model (the model card's figures), in one command:

    python -m evals.e2e_quality --data runs/v2/data [--model PATH] [--limit 40] [--out quality.json]

Three sets: held-out voices (the built set's `heldout` split: eSpeak's British voices, which
no training item uses), real human speech (`real-speech` bench), and the AlpacaEval
`helpful_base` + `vicuna` instructions spoken by held-out voices (`instructs2s-eval`).
Measures:
- repeat WER: what the model hears, the model asked to repeat what was said (exactly what
  `omni transcribe --asr-backend e2e` runs), against the transcript;
- adaptor WER (ctc adaptors only): the text the adaptor hands the LLM (`SpeechLLM.hear`: with
  the model's beam search and speech margin, as an answer hears it);
- chrF: the model's text answer to the speech against the same base LLM's answer to the
  instruction typed as text, under the same system prompt (response fidelity); beside it, the
  cascade's: the same LLM's answer to what the cascade's Whisper heard, against the same typed
  answer, so the figure is read against what the cascade's hearing allows on the same items;
- ASR-WER: the answer text against the project's deterministic Whisper judge's transcript of
  the answer's speech; beside it, the cascade's: the same judge on the cascade's TTS (Piper)
  speaking the typed answer as the cascade does (`text.clean_for_speech`), so "<= 1.5x the
  cascade's" is read on the same items. Both are scored as spoken (`metrics.as_spoken`): what
  neither pipeline says (markdown, list numbers) left out, the words between brackets kept.
Real speech gets the repeat WERs only (its utterances are not instructions).

Every answer compared (the e2e model's, the typed and the cascade's) comes from the LLM in one
dtype, float32 unless `--llm-dtype` says otherwise: in float32 the same text gets the same answer
on every path (the e2e model answering the typed text in place of what it heard: 40 of 40
AlpacaEval answers identical to the typed ones), so chrF measures what hearing changes. On a CPU
with bfloat16 arithmetic `omni respond` answers in bfloat16, where the path alone changes answers
(the same 40 typed instructions: the e2e path against a plain generation, chrF 66; one at a time
against batched, 84; bfloat16 against float32, 74), a ceiling far under 100 for the e2e answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evals.report import emit, median_asr_wer_percent


def evaluate(model_spec: str | None, data_dir: Path | None, limit: int, max_new_tokens: int, sets: tuple[str, ...],
             llm_dtype: str = "float32") -> dict:
    import torch

    from omni_cli.asr import load_asr, load_judge
    from omni_cli.audio import SAMPLE_RATE, load_audio, resample
    from omni_cli.benches import load_bench
    from omni_cli.e2e.build_data import read_manifest
    from omni_cli.events import collect
    from omni_cli.llm import ChatLLM, GenerationOptions, answer_texts, inference_dtype
    from omni_cli.pipelines import PipelineConfig, load_pipeline
    from omni_cli.text import clean_for_speech
    from omni_cli.tts import PiperTTS

    generation = GenerationOptions(max_new_tokens=max_new_tokens)
    # every answer compared (the e2e model's, the typed and the cascade's) from the LLM in one dtype
    dtype = inference_dtype(choice=None if llm_dtype == "auto" else llm_dtype) or torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    # no sentence budget: the answer is compared with the base LLM's whole typed answer
    pipeline = load_pipeline("e2e", PipelineConfig(e2e_model=model_spec, max_new_tokens=max_new_tokens, max_sentences=0,
                                                   llm_dtype=dtype_name))
    model = pipeline.model
    base_llm = ChatLLM.load(model.config.llm_source or None, dtype=dtype)  # the LLM as the cascade runs it (no adapters)
    judge = load_judge()
    cascade_asr = load_asr(None)  # the cascade's own Whisper (the offline default), for its answers' chrF
    tts = PiperTTS()
    reads_text = model.config.projector.type == "ctc"  # the LLM reads text: what it heard can be scored
    items: dict[str, list[dict]] = {}
    if data_dir is not None and "heldout-voices" in sets:
        held = [r for r in read_manifest(data_dir, split="heldout") if r.get("response") is not None][:limit]
        typed = answer_texts(base_llm, [r["instruction"] for r in held], generation)  # in this dtype (the set's: float32)
        items["heldout-voices"] = [{"id": r["id"], "audio": r["audio"], "reference": r["instruction"], "answer": a}
                                   for r, a in zip(held, typed)]
    if "real-speech" in sets:
        items["real-speech"] = [{"id": i.id, "audio": i.audio, "reference": i.reference, "answer": None}
                                for i in load_bench("real-speech")]
    if "alpacaeval" in sets:
        alpaca = load_bench("instructs2s-eval")[:limit]
        refs = answer_texts(base_llm, [i.reference for i in alpaca], generation)
        items["alpacaeval-heldout-voice"] = [{"id": i.id, "audio": i.audio, "reference": i.reference, "answer": a}
                                             for i, a in zip(alpaca, refs)]

    def heard(audio, sample_rate: int) -> str:
        audio = resample(audio, sample_rate, SAMPLE_RATE)
        return judge.transcribe(audio).text.strip() if audio.size else ""

    report: dict = {"model": model_spec or "omni-e2e-base-smollm2 (default)", "max_new_tokens": max_new_tokens,
                    "llm_dtype": dtype_name, "sets": {}}
    for name, rows_in in items.items():
        rows = []
        t0 = time.perf_counter()
        for n, item in enumerate(rows_in):
            audio = load_audio(item["audio"])
            with torch.inference_mode():  # heard once: the repeat starts from it, and so does an unanswered item's adaptor text
                features, said, alternatives = model.listen(audio)
            row = {"id": item["id"], "reference": item["reference"],
                   "repeat": model.transcribe(audio, features=features, heard=said, alternatives=alternatives)}
            response = None
            if item["answer"] is not None:
                response = collect(pipeline.run(audio), pipeline.sample_rate)
                row.update(answer=response.text.strip(), text_answer=item["answer"],
                           heard=heard(response.audio, pipeline.sample_rate),
                           cascade_heard=heard(tts.synthesize(clean_for_speech(item["answer"])), tts.sample_rate),
                           cascade_transcript=cascade_asr.transcribe(audio).text.strip())
            if reads_text:  # answered: the pipeline's own hearing (its Transcript event)
                row["adaptor"] = response.transcript if response is not None else said
            rows.append(row)
            print(f"\r{name}: {n + 1}/{len(rows_in)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        answered = [r for r in rows if "answer" in r]
        # the cascade's text answers: the same LLM, options and prompt, reading Whisper's transcript
        for r, a in zip(answered, answer_texts(base_llm, [r["cascade_transcript"] for r in answered], generation)):
            r["cascade_answer"] = a
        report["sets"][name] = {"summary": {"items": len(rows), "seconds": round(time.perf_counter() - t0, 1),
                                            **summarize(rows)}, "rows": rows}
    return report


def summarize(rows: list[dict]) -> dict:
    """A set's figures from its rows (what each item heard, answered and was heard to say)."""
    from sacrebleu.metrics import CHRF

    from omni_cli.metrics import asr_wer, wer

    refs = [r["reference"] for r in rows]
    summary = {"repeat_wer": round(100 * wer(refs, [r["repeat"] for r in rows]), 2)}
    if rows and all("adaptor" in r for r in rows):  # a ctc adaptor's text, as the LLM read it
        summary["adaptor_wer"] = round(100 * wer(refs, [r["adaptor"] for r in rows]), 2)
    answered = [r for r in rows if "answer" in r]
    if answered:
        chrf, typed = CHRF(), [[r["text_answer"] for r in answered]]
        summary["chrf"] = round(chrf.corpus_score([r["answer"] for r in answered], typed).score, 2)
        summary["cascade_chrf"] = round(chrf.corpus_score([r["cascade_answer"] for r in answered], typed).score, 2)
        summary["asr_wer"] = round(100 * asr_wer([r["answer"] for r in answered], [r["heard"] for r in answered]), 2)
        summary["cascade_asr_wer"] = round(100 * asr_wer([r["text_answer"] for r in answered], [r["cascade_heard"] for r in answered]), 2)
        summary.update(median_asr_wer(answered))
    return summary


def rescore(report: dict) -> dict:
    """The figures of a saved report computed again from its rows (after a change to how they
    are scored; nothing is run again)."""
    for part in report["sets"].values():
        part["summary"] = {k: v for k, v in part["summary"].items() if k in ("items", "seconds")} | summarize(part["rows"])
    return report


def median_asr_wer(answered: list[dict]) -> dict:
    """The per-item median ASR-WER of the e2e and the cascade answers: unlike the corpus figure,
    not swayed by the one item whose Whisper transcript loops ("be-be-be-..." is WER 590 %)."""
    return {"asr_wer_median": median_asr_wer_percent([r["answer"] for r in answered], [r["heard"] for r in answered]),
            "cascade_asr_wer_median": median_asr_wer_percent([r["text_answer"] for r in answered],
                                                             [r["cascade_heard"] for r in answered])}


SETS = ("heldout-voices", "real-speech", "alpacaeval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="e2e model folder (default: the shipped offline default)")
    parser.add_argument("--data", type=Path, help="a set built by `omni data build` (its held-out split is used)")
    parser.add_argument("--limit", type=int, default=40, help="items per set (held-out voices, AlpacaEval)")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="answer length, as in the training answers")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    parser.add_argument("--llm-dtype", choices=("float32", "bfloat16", "auto"), default="float32",
                        help="the LLM's weights for every answer compared (the e2e model's, the typed and the cascade's): "
                             "float32 answers the same text the same way on every path; auto: as `omni respond` answers")
    parser.add_argument("--out", type=Path, help="write the full report (summaries and every item) as JSON here")
    parser.add_argument("--rescore", type=Path, metavar="REPORT",
                        help="run nothing: score a saved report's rows again (written back to --out, or to it)")
    args = parser.parse_args()
    sets = tuple(s.strip() for s in args.sets.split(",") if s.strip())
    unknown = set(sets) - set(SETS)
    if unknown:
        parser.error(f"unknown set(s): {', '.join(sorted(unknown))}")
    if args.rescore:
        report = rescore(json.loads(args.rescore.read_text(encoding="utf-8")))
        args.out = args.out or args.rescore
    else:
        report = evaluate(args.model, args.data, args.limit, args.max_new_tokens, sets, args.llm_dtype)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = ["| set | items | repeat WER % | adaptor WER % | chrF (cascade's) | ASR-WER % (corpus / median) | cascade ASR-WER % |",
             "|---|---|---|---|---|---|---|"]
    for name, s in report["sets"].items():
        m = s["summary"]
        lines.append(f"| {name} | {m['items']} | {m['repeat_wer']} | {m.get('adaptor_wer', '-')} | {m.get('chrf', '-')} ({m.get('cascade_chrf', '-')}) | "
                     f"{m.get('asr_wer', '-')} / {m.get('asr_wer_median', '-')} | "
                     f"{m.get('cascade_asr_wer', '-')} / {m.get('cascade_asr_wer_median', '-')} |")
    print("\n".join(lines), file=sys.stderr)
    emit({"model": report["model"], **{name: s["summary"] for name, s in report["sets"].items()}}, None)


if __name__ == "__main__":
    main()
