"""The shipped offline end-to-end default: it loads from the repository, hears a spoken
question (asked to repeat it, as `omni transcribe --asr-backend e2e` does), answers it without
any transcript, and its speech says what its text says (a trained speech decoder; random
weights would babble). How well it understands in general is measured by
`evals/e2e_quality.py` and reported in its model card."""

import json

import pytest
import soundfile as sf
from typer.testing import CliRunner

from omni_cli.cli import app
from tests.conftest import EXAMPLE_QUESTION

pytestmark = pytest.mark.real


def test_the_default_is_shipped_small_and_half_precision():
    from safetensors import safe_open

    from omni_cli.registry import OMNI_E2E_DEFAULT

    folder = OMNI_E2E_DEFAULT.installed_path()
    assert folder is not None and (folder / "MODEL_CARD.md").is_file()
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 50e6  # two adaptors (v4.1's second ear), LoRA adapters, speech decoder
    with safe_open(str(weights), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes - {"torch.int64"} == {"torch.float16"}  # weights in half precision; the adaptor's token ids stay integers


def test_respond_e2e_answers_offline_by_default(tmp_path, real_asr):
    from omni_cli.audio import load_audio
    from omni_cli.metrics import wer

    out = tmp_path / "answer.wav"
    result = CliRunner().invoke(app, ["respond", str(EXAMPLE_QUESTION), "--mode", "e2e", "--out", str(out), "--json",
                                      "--max-new-tokens", "40"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    # no ASR in the end-to-end mode: the transcript is the text of the tokens the LLM read from the speech
    assert wer(["Tell me about the moon."], [payload["transcript"]]) <= 0.4, payload["transcript"]
    assert len(payload["text"].split()) >= 3
    assert sf.info(out).duration > 1.0
    heard = real_asr.transcribe(load_audio(out)).text  # load_audio resamples the 22.05 kHz answer
    # the model card's ASR-WER is about 50 %; here 0.32-0.50 across CPU instruction sets and thread
    # counts; random decoder weights make Piper babble (WER near 1)
    assert wer([payload["text"]], [heard]) < 0.7, (payload["text"], heard)


def test_the_default_hears_the_question():
    from omni_cli.metrics import wer

    result = CliRunner().invoke(app, ["transcribe", str(EXAMPLE_QUESTION), "--asr-backend", "e2e"])
    assert result.exit_code == 0, result.stderr
    heard = result.stdout.strip()
    assert wer(["Tell me about the moon."], [heard]) <= 0.4, heard  # v1 heard another question entirely


def test_the_default_reads_its_units_with_a_unit_lm_that_knows_english():
    """v3.12 reads the speech decoder's units by a beam search with a unit n-gram: the LM finds
    English phoneme sequences far likelier than chance, and on answers the decoder never trained
    on the beam reading's unit error rate is below the greedy one's (5.4 -> 3.6 % on the model
    card's 197 held-out answers)."""
    import dataclasses

    import numpy as np

    from evals.unit_error import predicted_units, unit_error_rate
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.unit_vocoder import load_unit_vocoder
    from omni_cli.registry import OMNI_E2E_DEFAULT

    model = load_omni(OMNI_E2E_DEFAULT.installed_path())
    config, lm = model.config.speech_decoder, model.speech_generator.unit_lm
    assert config.beam > 1 and config.lm_weight > 0 and lm is not None
    vocoder = load_unit_vocoder(model.config.vocoder)
    pairs = [("What is the capital of Madagascar?", "The capital of Madagascar is Antananarivo, a city in the central highlands."),
             ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen and published in 1813."),
             ("How do plants make food?", "Plants make their food through photosynthesis, using sunlight, water and carbon dioxide."),
             ("Tell me something about whales.", "Blue whales are the largest animals ever known, longer than two buses."),
             ("What should I pack for a hike?", "Pack water, snacks, a map, sunscreen, a light jacket and a small first aid kit.")]
    truth = [vocoder.text_to_units(a) for _, a in pairs]
    bits = np.mean([lm.logprobs(tuple(u[:i]))[u[i]] for u in truth for i in range(len(u))]) / np.log(2)
    assert bits > -3.0, bits  # chance over 152 symbols is -7.2 bits a unit
    beam = unit_error_rate(truth, predicted_units(model, [q for q, _ in pairs], [a for _, a in pairs]))
    model.speech_generator.config = dataclasses.replace(config, beam=1)
    greedy = unit_error_rate(truth, predicted_units(model, [q for q, _ in pairs], [a for _, a in pairs]))
    assert beam <= greedy, (beam, greedy)  # 7.4 against 9.8 % here (AVX-512)


def test_the_default_hears_with_a_token_ngram_that_knows_how_questions_go():
    """v3.13 fuses a token 3-gram into its hearing beam search: it finds spoken-style questions
    far likelier than chance and than the same tokens out of order, so it pulls the hypotheses
    towards sentences (held-out voices 29.2 -> 27.8 % WER on the model card's 300 items)."""
    import random

    import numpy as np

    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.registry import OMNI_E2E_DEFAULT

    model = load_omni(OMNI_E2E_DEFAULT.installed_path())
    p, lm, tok = model.config.projector, model.speech_projector.token_lm, model.llm.tokenizer
    assert p.beam > 1 and p.ngram and p.ngram_weight > 0 and lm is not None and lm.num_units == len(tok)
    questions = ["What is the tallest mountain in the world?", "How do I make a cup of tea?",
                 "Can you tell me a joke about cats?", "Who painted the Mona Lisa?", "Why is the sky blue?"]

    def bits(ids):
        ids = ids + [lm.num_units]
        return np.mean([lm.logprob(tuple(ids[max(0, i - 2):i]), t) for i, t in enumerate(ids)]) / np.log(2)

    seqs = [tok(q, add_special_tokens=False).input_ids for q in questions]
    ordered = np.mean([bits(s) for s in seqs])
    shuffled = np.mean([bits(random.Random(n).sample(s, len(s))) for n, s in enumerate(seqs)])
    assert ordered > -6.0, ordered  # chance over 49,152 tokens is -15.6 bits a token
    assert ordered > shuffled + 3, (ordered, shuffled)


def test_the_speech_decoder_reads_a_marked_token_as_the_token_it_says():
    """SmolLM2 writes bold headings as "**Baked Goods:** ...", ":**" one token, kept for its colon:
    the speech decoder reads the embedding of ":" for it (`said_token_id`), whose sound it is; fed
    ":**"'s own it said something ("cool"), more unit errors on such answers."""
    import torch

    from evals.unit_error import predicted_units, unit_error_rate
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import said_answer
    from omni_cli.e2e.unit_vocoder import load_unit_vocoder
    from omni_cli.registry import OMNI_E2E_DEFAULT

    model = load_omni(OMNI_E2E_DEFAULT.installed_path())
    tok = model.llm.tokenizer

    def one(text: str) -> int:
        ids = tok(text, add_special_tokens=False).input_ids
        assert len(ids) == 1, (text, ids)
        return ids[0]

    for marked, said in ((":**", ":"), ("**,", ","), (".**", "."), (" bake", " bake"), ("**", "**")):
        assert model.said_token_id(one(marked)) == one(said), marked
    assert all(model.said_token_id(i) == i for i in tok.all_special_ids)  # "<|im_end|>": no marks to leave out
    assert torch.equal(model.token_embedding(one(":**")), model.token_embedding(one(":")))
    pairs = [("What should I eat when I am sick?", "Here are some foods that help:\n\n**Soup:** Warm soup keeps you fed.\n"
              "**Tea:** Tea with honey soothes a sore throat.\n**Toast:** Plain toast is easy on the stomach."),
             ("How can I sleep better?", "Try these tips:\n\n**Routine:** Go to bed at the same time every night.\n"
              "**Light:** Keep your bedroom dark and cool.\n**Screens:** Put your phone away an hour before bed.")]
    vocoder = load_unit_vocoder(model.config.vocoder)
    truth = [vocoder.text_to_units(said_answer(model, a)[2]) for _, a in pairs]
    assert all("*" not in said_answer(model, a)[2] for _, a in pairs)
    mapped = unit_error_rate(truth, predicted_units(model, [q for q, _ in pairs], [a for _, a in pairs]))
    model.said_token_ids = lambda ids: [int(i) for i in ids]  # the embeddings of the tokens as written
    plain = unit_error_rate(truth, predicted_units(model, [q for q, _ in pairs], [a for _, a in pairs]))
    print(f"unit error rate {100 * mapped:.2f} % (the tokens as written: {100 * plain:.2f} %)")
    assert mapped < plain, (mapped, plain)
