"""A scripted 20-turn spoken conversation through `omni talk`'s engine, in both modes.

Twenty questions, spoken by the Piper voice with 15 s pauses between them (room for each
answer to be played) except one, whose answer the next question cuts off (a barge-in), are
played into the conversation engine from a file (as `omni talk --input FILE --fast`: the file
holds while the models compute). Several questions lean on an earlier one ("How many people live
there?" after "What is the capital of France?"). Reported per mode: the answers' length in
words and sentences (the brevity budget), the first-audio latency of each turn (from the
VAD's end-of-speech decision) and its trend over the turns (slope per turn, and the last five
turns against the first five: flat means the history's cache is extended, not recomputed),
the history's size, the answers to the follow-up questions, and whether the history after the
barge-in holds only the part of the answer that was played, marked as cut off.

    python -m evals.conversation [--turns 20] [--modes cascade,e2e] [--json conversation.json] [--script-wav script.wav]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from evals.report import emit

err = Console(stderr=True)
QUESTIONS = [
    "What is the capital of France?",
    "How many people live there?",
    "What is the most famous tower in that city?",
    "Who built it?",
    "What is the tallest mountain in the world?",
    "Which country is it in?",
    "How long does it take to climb it?",
    "What do plants need to grow?",
    "Why are their leaves green?",
    "What happens to them in winter?",
    "Who wrote Romeo and Juliet?",
    "What else did he write?",
    "When did he live?",
    "What is the largest ocean on Earth?",
    "How deep is it?",
    "What animals live there?",
    "How does a rainbow form?",
    "Why does it have many colors?",
    "What is the speed of light?",
    "Thank you, what was my first question?",
]
FOLLOW_UPS = {1: "paris|franc", 5: "everest|nepal|china|tibet", 11: "shakespeare", 19: "capital|france"}  # turn -> what it leans on
BARGE_IN = 13  # the next question starts 2.5 s after this one, while its answer plays: a barge-in


def script(turns: int) -> tuple[np.ndarray, list[str]]:
    from omni_cli.audio import SAMPLE_RATE, resample
    from omni_cli.tts import PiperTTS

    tts = PiperTTS()
    parts, said = [np.zeros(SAMPLE_RATE // 2, dtype=np.float32)], []
    for n, q in enumerate(QUESTIONS[:turns]):
        pause = 2.5 if n == BARGE_IN and n + 1 < turns else 15
        parts += [resample(tts.synthesize(q), tts.sample_rate, SAMPLE_RATE), np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)]
        said.append(q)
    return np.concatenate(parts), said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m evals.conversation --turns 20 --json conversation.json")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--modes", default="cascade,e2e")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--script-wav", type=Path, help="The spoken script: read if it exists, else written (Piper's voice "
                                                         "varies run to run; one file makes two runs comparable)")
    args = parser.parse_args(argv)

    from omni_cli.e2e.load import parse_omega
    from omni_cli.pipelines import PipelineConfig, load_pipeline
    from omni_cli.talk import Conversation
    from omni_cli.talk_audio import FileSource

    audio, said = script(min(args.turns, len(QUESTIONS)))
    if args.script_wav is not None:
        from omni_cli.audio import SAMPLE_RATE, load_audio, write_wav

        if not args.script_wav.is_file():
            write_wav(args.script_wav, audio, SAMPLE_RATE)
        audio = load_audio(args.script_wav)
    result: dict = {"turns": len(said), "modes": {}}
    for mode in args.modes.split(","):
        with err.status(f"{mode}: loading ..."):
            pipeline = load_pipeline(mode, PipelineConfig(omega=parse_omega("auto")))
        conversation = Conversation(pipeline, record=False)
        with err.status(f"{mode}: talking ...") as status:
            for e in conversation.run(FileSource(audio, speed=None, holds_for_answers=True)):
                status.update(f"{mode}: turn {len(conversation.turns) + 1}/{len(said)}")
        turns = conversation.turns
        latency = [t.metrics.get("first_audio_latency_s") for t in turns]
        words = [len(t.text.split()) for t in turns]
        sentences = [len(re.findall(r"[.!?](?:\s|$)", t.text.strip())) for t in turns]
        ok = [x for x in latency if x is not None]
        slope = float(np.polyfit(np.arange(len(ok)), ok, 1)[0]) if len(ok) > 2 else None
        follow = {said[i]: turns[i].text for i in FOLLOW_UPS if i < len(turns)}
        leans = {said[i]: bool(re.search(FOLLOW_UPS[i], turns[i].text.lower())) for i in FOLLOW_UPS if i < len(turns)}
        barge = None
        if BARGE_IN + 1 < len(turns):
            cut, after = turns[BARGE_IN], turns[BARGE_IN + 1]
            entry = after.history[-1] if after.history else None
            barge = {"question": said[BARGE_IN], "answer": cut.text, "heard": cut.heard, "interrupted": cut.interrupted,
                     "next_turn_history_entry": entry,
                     # the history holds what was played, marked as cut off, and it is the beginning of the answer
                     "history_matches_what_was_heard": bool(
                         cut.interrupted and entry is not None and entry.get("interrupted") and entry["content"] == cut.heard
                         and cut.text.split()[: len(cut.heard.split())] == cut.heard.split() and cut.heard != cut.text)}
        result["modes"][mode] = {
            "turns": len(turns),
            "heard": [t.transcript for t in turns],
            "answers": [t.text for t in turns],
            "answer_words_median": float(np.median(words)) if words else None,
            "answer_words_max": max(words) if words else None,
            "answer_sentences_max": max(sentences) if sentences else None,
            "first_audio_s": [None if x is None else round(x, 3) for x in latency],
            "first_audio_slope_s_per_turn": None if slope is None else round(slope, 4),
            "first_five_vs_last_five": (round(float(np.median(ok[-5:])) / float(np.median(ok[:5])), 3) if len(ok) >= 10 else None),
            "history_len_last": turns[-1].history_len if turns else None,
            "trimmed_turns": conversation.trimmed,
            "follow_up_answers": follow,
            "follow_up_mentions_the_earlier_subject": leans,
            "barge_in": barge,
        }
    table = Table(title=Text(f"scripted conversation, {len(said)} spoken turns"), title_justify="left")
    for col in ("mode", "turns", "words (median / max)", "first audio, turns 1-5 -> 16-20", "slope (ms/turn)", "follow-ups on topic",
                "history after barge-in"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, m in result["modes"].items():
        ok = [x for x in m["first_audio_s"] if x is not None]
        table.add_row(mode, str(m["turns"]), f"{m['answer_words_median']:.0f} / {m['answer_words_max']}",
                      f"{np.median(ok[:5]):.3f} -> {np.median(ok[-5:]):.3f} s" if len(ok) >= 10 else "-",
                      "-" if m["first_audio_slope_s_per_turn"] is None else f"{1000 * m['first_audio_slope_s_per_turn']:.1f}",
                      f"{sum(m['follow_up_mentions_the_earlier_subject'].values())}/{len(m['follow_up_mentions_the_earlier_subject'])}",
                      "-" if m["barge_in"] is None else ("played part" if m["barge_in"]["history_matches_what_was_heard"] else "WRONG"))
    err.print(table)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
