"""How well the judge hears the end-to-end speech path from perfect units, against the cascade's
TTS, on the same answer texts: the floor a speech decoder's ASR-WER can reach with this vocoder.

For each answer text (the `text_answer`s of a quality report, `evals.e2e_quality`'s JSON):
- cascade: the cascade's TTS speaking it as the cascade does (`text.clean_for_speech`);
- whole: the e2e model's true units of it (`said_answer`: the tokens that reach its speech
  decoder, their text without markdown marks), vocoded at once (each sentence an utterance);
- chunked: the same units cut as the pipeline cuts them while it streams (`UnitChunker` with
  the vocoder's Omega, first chunk and word and phrase ends), each chunk vocoded alone.
All heard by the project's deterministic Whisper judge; corpus and per-item median ASR-WER, and
each path's ratio to the cascade's in the same run (the voice samples anew each time: `--reps`).

    python -m evals.vocoder_path [--quality omni_cli/e2e/weights/omni-e2e-base-smollm2/quality.json] [--limit 40] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from evals.report import emit, median_asr_wer_percent

err = Console(stderr=True)
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "omni_cli" / "e2e" / "weights" / "omni-e2e-base-smollm2"
PATHS = ("cascade", "whole", "chunked")


def chunked_units(units: list[int], vocoder) -> list[list[int]]:
    """`units` cut into the chunks the pipeline would hand the vocoder, pushed one at a time."""
    from omni_cli.e2e.unit_vocoder import UnitChunker

    chunker = UnitChunker.for_vocoder(vocoder, vocoder.default_omega)
    out = [c for u in units for c in chunker.push([u])]
    return out + list(chunker.flush())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m evals.vocoder_path --limit 40 --reps 2 --json vocoder_path.json")
    parser.add_argument("--quality", type=Path, default=DEFAULT_MODEL / "quality.json", help="an e2e_quality JSON: its answer texts")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the e2e model whose tokenizer decides what is said")
    parser.add_argument("--sets", default="alpacaeval-heldout-voice,heldout-voices")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from omni_cli.asr import load_judge
    from omni_cli.audio import SAMPLE_RATE, resample
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import said_answer
    from omni_cli.e2e.unit_vocoder import PiperUnitVocoder
    from omni_cli.metrics import asr_wer
    from omni_cli.text import clean_for_speech

    report = json.loads(args.quality.read_text())
    with err.status("loading ..."):
        model, vocoder, judge = load_omni(args.model), PiperUnitVocoder(), load_judge()

    def speak(path: str, text: str, units: list[int]) -> np.ndarray:
        if path == "cascade":
            return vocoder.tts.synthesize(clean_for_speech(text))
        if path == "whole":
            return vocoder.units_to_audio(units)
        parts = [vocoder.units_to_audio(c) for c in chunked_units(units, vocoder)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def hear(audio: np.ndarray) -> str:
        audio = resample(audio, vocoder.sample_rate, SAMPLE_RATE)
        return judge.transcribe(audio).text.strip() if audio.size else ""

    results: dict = {"quality": str(args.quality), "voice": vocoder.label, "sets": {}}
    for name in args.sets.split(","):
        texts = [r["text_answer"] for r in report["sets"][name]["rows"] if r.get("text_answer")][: args.limit]
        units = [vocoder.text_to_units(said_answer(model, t)[2]) for t in texts]
        runs: dict[str, list[dict]] = {p: [] for p in PATHS}
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task(name, total=len(PATHS) * args.reps * len(texts))
            for _ in range(args.reps):
                for path in PATHS:
                    heard = []
                    for t, u in zip(texts, units):
                        heard.append(hear(speak(path, t, u)))
                        bar.advance(task)
                    runs[path].append({"asr_wer": round(100 * asr_wer(texts, heard), 2),
                                       "asr_wer_median": median_asr_wer_percent(texts, heard)})
        summary = {p: {"asr_wer": [r["asr_wer"] for r in rs], "asr_wer_median": [r["asr_wer_median"] for r in rs]}
                   for p, rs in runs.items()}
        for p in PATHS[1:]:
            summary[p]["ratio_to_cascade"] = [round(a / c, 2) if c else None
                                              for a, c in zip(summary[p]["asr_wer"], summary["cascade"]["asr_wer"])]
        results["sets"][name] = {"items": len(texts), **summary}
        for p in PATHS:
            err.print(f"{name}: {p} ASR-WER {summary[p]['asr_wer']} % (median {summary[p]['asr_wer_median']})"
                      + (f", {summary[p]['ratio_to_cascade']}x the cascade's" if p != "cascade" else ""), markup=False)
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
