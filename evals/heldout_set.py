"""The model card's evaluation items without the 19k training items: only the held-out items of
`omni data build --out runs/v2/data --size 20000 --answered 4000 --heldout-fraction 0.05 --seed 0`
(1,033 spoken by the held-out voices, the 197 among the first 4,000 answered by the LLM), in
the order the full build writes them, so `evals.adaptor_wer`, `evals.e2e_quality` and
`evals.unit_error` score the same items on a fresh machine (about 5 minutes here; the item ids,
voices and noise come from the seed, so the audio is the same).

    python -m evals.heldout_set [runs/v2/data]
"""
import random
import sys
from pathlib import Path

from omni_cli import data
from omni_cli.e2e import build_data as bd
from omni_cli.e2e.unit_vocoder import PiperUnitVocoder
from omni_cli.llm import ChatLLM, GenerationOptions, answer_texts

def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/v2/data")
    opts = bd.BuildOptions(size=20000, answered=4000, heldout_fraction=0.05, seed=0)
    items = [it for name in bd.DEFAULT_SOURCES for it in data.load(name)]
    chosen = bd.select_instructions(items, opts)
    held, n_ans = [], 0
    for i, it in enumerate(chosen):
        if random.Random(f"{opts.seed}:{bd.item_id(it)}").random() < opts.heldout_fraction:
            held.append(it)
            n_ans += i < opts.answered
    print(len(chosen), "chosen;", len(held), "held out;", n_ans, "of them answered", flush=True)
    chat = ChatLLM.load(None)
    units = PiperUnitVocoder()
    gen = GenerationOptions(max_new_tokens=opts.max_answer_tokens)
    sub = bd.BuildOptions(size=len(held), answered=n_ans, heldout_fraction=opts.heldout_fraction, seed=opts.seed)
    n = 0
    for row in bd.build(held, out, lambda t: answer_texts(chat, t, gen, batch=len(t)), units.text_to_units, sub, workers=2):
        n += 1
        if n % 100 == 0:
            print(n, flush=True)
    print("done", n)


if __name__ == "__main__":
    main()
