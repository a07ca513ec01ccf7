"""Latency of cascade and end-to-end, stage by stage, on the same real speech in one run.

Both pipelines are loaded once (as `omni talk` and `omni eval` load them), then every item is
answered by each, the order alternating from item to item so machine noise hits both. From
each answer's events, seconds after the end of the question:

- input: the ASR (cascade) or the speech encoder and adaptor (e2e)
- first token: the answer's first text
- LLM to first token: the part of it after the input stage (prompt prefill, first step)
- to first piece: first token -> the first text piece sent to TTS (cascade) or the first
  unit chunk sent to the vocoder (e2e)
- first vocoder chunk: the TTS / vocoder time of that first piece
- first audio: the first reply audio ready to play

Each is given as median and p90 per mode, with the e2e / cascade ratio of the medians. The
first turn of each pipeline in the process is also compared with the same item answered three
times more at the end (the median), each time after another item (a model that is not warmed at
load pays its cold start there).

`--talk N` also plays the first N items into `omni talk`'s conversation engine in real time
(the file as the microphone) and times the first audio from the VAD's end-of-speech decision,
with the answer begun in the silence that may end the turn (the default) and without.

    python -m evals.latency [--bench real-speech] [--limit 20] [--talk 10] [--json latency.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from evals.report import emit

err = Console(stderr=True)
STAGES = ("input_s", "first_token_s", "llm_to_first_token_s", "to_first_piece_s", "first_vocoder_chunk_s", "first_audio_s")
LABELS = {
    "input_s": "input (ASR / encoder + adaptor)",
    "first_token_s": "first token",
    "llm_to_first_token_s": "LLM to first token",
    "to_first_piece_s": "first token -> first piece",
    "first_vocoder_chunk_s": "first TTS / vocoder chunk",
    "first_audio_s": "first audio",
}


def stage_times(events: list) -> dict[str, float | None]:
    """The figures above, from one answer's events."""
    from omni_cli.events import AudioChunk, SpeechEnded, StageTiming, TextDelta, TextSegment, UnitChunk

    t0 = next(e.t for e in events if isinstance(e, SpeechEnded))
    first = {}
    input_s = None
    for e in events:
        if isinstance(e, StageTiming) and e.stage in ("asr", "encoder") and input_s is None:
            input_s = e.seconds
        elif isinstance(e, TextDelta) and e.text.strip():
            first.setdefault("token", e.t)
        elif isinstance(e, (TextSegment, UnitChunk)):
            first.setdefault("piece", e.t)
        elif isinstance(e, StageTiming) and e.stage in ("tts", "vocoder"):
            first.setdefault("vocoder", e.seconds)
        elif isinstance(e, AudioChunk):
            first.setdefault("audio", e.t)

    def since(key: str) -> float | None:
        return first[key] - t0 if key in first else None

    token = since("token")
    piece = since("piece")
    return {
        "input_s": input_s,
        "first_token_s": token,
        "llm_to_first_token_s": None if token is None or input_s is None else token - input_s,
        "to_first_piece_s": None if piece is None or token is None else max(0.0, piece - token),
        "first_vocoder_chunk_s": first.get("vocoder"),
        "first_audio_s": since("audio"),
    }


def talk_first_audio(pipeline, audio, early: bool) -> float | None:
    """`omni talk`'s first-audio latency for one question played in real time (the file as the
    microphone), counted from the VAD's end-of-speech decision; `early`: the answer may begin in
    the silence before that decision (TalkOptions.early_start)."""
    from omni_cli.events import AudioChunk
    from omni_cli.talk import Conversation, NullSink, TalkOptions
    from omni_cli.talk_audio import FileSource

    pad = np.zeros(int(0.3 * 16000), dtype=np.float32)
    conversation = Conversation(pipeline, NullSink(), TalkOptions(early_start=early), record=False)
    stream = conversation.run(FileSource(np.concatenate([pad, audio, np.zeros(3 * 16000, dtype=np.float32)]), speed=1.0))
    for e in stream:
        if isinstance(e, AudioChunk):
            break
    stream.close()  # the turn ends there (its run is cancelled)
    if conversation._last_run is not None:
        conversation._last_run.thread.join()
    return conversation.turns[0].metrics.get("first_audio_latency_s") if conversation.turns else None


def summary(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    out = {}
    for stage in STAGES:
        values = [r[stage] for r in rows if r.get(stage) is not None]
        out[stage] = {"median": round(float(np.median(values)), 4) if values else None,
                      "p90": round(float(np.percentile(values, 90)), 4) if values else None}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m evals.latency --limit 20 --json latency.json")
    parser.add_argument("--bench", default="real-speech", help="a bench of `omni eval --bench` (real human speech by default)")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--omega", default="auto", help="e2e units per vocoder chunk (auto: the vocoder's default)")
    parser.add_argument("--max-new-tokens", type=int, default=60, help="answers are cut here (latency is at their start)")
    parser.add_argument("--talk", type=int, default=10, metavar="N",
                        help="also time `omni talk` on the first N items in real time, with and without the early start (0: skip)")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-up at load (to see the cold start)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from omni_cli.audio import load_audio
    from omni_cli.benches import load_bench
    from omni_cli.e2e.load import parse_omega
    from omni_cli.pipelines import PipelineConfig, load_pipeline

    items = load_bench(args.bench)[: args.limit]
    config = PipelineConfig(omega=parse_omega(args.omega), max_new_tokens=args.max_new_tokens)
    pipelines, load_s = {}, {}
    for mode in ("cascade", "e2e"):
        with err.status(f"loading {mode} ..."):
            t = time.perf_counter()
            pipelines[mode] = load_pipeline(mode, config, warm=not args.no_warm)
            load_s[mode] = round(time.perf_counter() - t, 2)
    rows: dict[str, list[dict]] = {m: [] for m in pipelines}
    with err.status("answering ...") as status:
        for i, item in enumerate(items):
            audio = load_audio(item.audio)
            for mode in (("cascade", "e2e") if i % 2 == 0 else ("e2e", "cascade")):
                status.update(f"item {i + 1}/{len(items)}: {mode}")
                rows[mode].append(stage_times(list(pipelines[mode].run(audio))))
        # the first item 3 times more, warm: against its first answer; each time after another item, so that
        # what a pipeline keeps of its last turn (the LLM's KV cache, caches keyed by content) is not the same item's
        again: dict[str, list] = {m: [] for m in pipelines}
        audio = load_audio(items[0].audio)
        between = [load_audio(item.audio) for item in (items[1:4] or items[:1])]
        for n in range(3):
            for mode in pipelines:
                status.update(f"item 1 again: {mode}")
                list(pipelines[mode].run(between[n % len(between)]))
                again[mode].append(stage_times(list(pipelines[mode].run(audio)))["first_audio_s"])
        talk: dict[str, list] = {f"{m} {k}": [] for m in pipelines for k in ("early", "late")}
        for i, item in enumerate(items[: args.talk]):
            audio = load_audio(item.audio)
            for mode in pipelines:
                for early in (True, False):
                    status.update(f"talk, item {i + 1}/{min(args.talk, len(items))}: {mode}")
                    talk[f"{mode} {'early' if early else 'late'}"].append(talk_first_audio(pipelines[mode], audio, early))
    result: dict = {"bench": args.bench, "items": len(items), "omega": config.omega, "load_s": load_s}
    if args.talk:
        result["talk_first_audio_s"] = {k: {"median": round(float(np.median([x for x in v if x is not None])), 4),
                                            "p90": round(float(np.percentile([x for x in v if x is not None], 90)), 4),
                                            "n": len([x for x in v if x is not None])}
                                        for k, v in talk.items() if any(x is not None for x in v)}
    for mode, mode_rows in rows.items():
        result[mode] = summary(mode_rows)
        first_turn, later = mode_rows[0]["first_audio_s"], float(np.median([x for x in again[mode] if x is not None] or [0]))
        result[mode]["first_turn_vs_later"] = round(first_turn / later, 3) if first_turn and later else None
    result["ratio_e2e_to_cascade"] = {
        s: (round(result["e2e"][s]["median"] / result["cascade"][s]["median"], 3)
            if result["e2e"][s]["median"] and result["cascade"][s]["median"] else None) for s in STAGES}

    table = Table(title=Text(f"latency, seconds after the question ({len(items)} items of {args.bench}; median [p90])"),
                  title_justify="left")
    for col in ("stage", "cascade", "e2e", "e2e / cascade"):
        table.add_column(col, justify="left" if col == "stage" else "right")

    def cell(mode: str, stage: str) -> str:
        s = result[mode][stage]
        return Text("-" if s["median"] is None else f"{s['median']:.3f} [{s['p90']:.3f}]")

    for stage in STAGES:
        ratio = result["ratio_e2e_to_cascade"][stage]
        table.add_row(LABELS[stage], cell("cascade", stage), cell("e2e", stage), "-" if ratio is None else f"{ratio:.2f}")
    table.add_row("first turn / same item later (first audio)", str(result["cascade"]["first_turn_vs_later"]),
                  str(result["e2e"]["first_turn_vs_later"]), "")
    err.print(table)
    if args.talk:
        talk_table = Table(title=Text("omni talk, first audio after the VAD's end-of-speech decision (median [p90])"),
                           title_justify="left")
        for col in ("mode", "answer begun in the silence (default)", "answer begun at the decision"):
            talk_table.add_column(col, justify="left" if col == "mode" else "right")
        t = result["talk_first_audio_s"]
        for mode in pipelines:
            cells = [t.get(f"{mode} {k}") for k in ("early", "late")]
            talk_table.add_row(mode, *[Text("-" if c is None else f"{c['median']:.3f} [{c['p90']:.3f}]") for c in cells])
        err.print(talk_table)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
