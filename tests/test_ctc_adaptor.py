"""Our own end-to-end variant on tiny random models: the ctc adaptor (CTC head over LLM
tokens, the LLM reads the collapsed tokens), LoRA adapters on the LLM (merged at load), the
speech decoder that reads the emitted token beside the hidden state, their training stages,
and the model as a transcription backend (`omni transcribe --asr-backend e2e`)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import EXAMPLE_QUESTION, TEST_DEVICE, make_tiny_llm, tiny_omni_config


@pytest.fixture(scope="module")
def ctc_omni(tmp_path_factory, tiny_e2e_parts):
    """A tiny model with a ctc adaptor over a few LLM tokens and a token-reading speech decoder, saved."""
    from omni_cli.e2e.checkpoint import build_encoder, save_omni
    from omni_cli.e2e.config import ProjectorConfig
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.speech_llm import SpeechLLM
    from omni_cli.e2e.speech_projector import build_projector, ctc_vocabulary
    from omni_cli.llm import ChatLLM

    root = tmp_path_factory.mktemp("ctc")
    peaked = make_tiny_llm(init_range=0.3)  # outputs peaked enough for adapters to steer
    peaked.model.save_pretrained(root / "llm")
    peaked.tokenizer.save_pretrained(root / "llm")
    llm = ChatLLM.load(str(root / "llm"))
    ids = ctc_vocabulary(llm.tokenizer, ["The moon is bright.", "Paris is the capital of France."])
    base = tiny_omni_config(16, 151, str(tiny_e2e_parts["whisper"]), str(root / "llm"))
    config = dataclasses.replace(
        base,
        projector=ProjectorConfig(k=4, encoder_width=64, hidden=32, llm_width=16, type="ctc", layers=1, heads=2, ffn=64,
                                  vocab=len(ids)),
        speech_decoder=dataclasses.replace(base.speech_decoder, token_input=True),
    )
    torch.manual_seed(5)
    projector = build_projector(config.projector)
    projector.token_ids.copy_(torch.tensor(ids))
    model = SpeechLLM(config, build_encoder(config.encoder, config.encoder_source), projector, llm,
                      SpeechGenerator(config.speech_decoder)).eval()
    return save_omni(model, root / "omni")


def test_ctc_adaptor_hands_the_llm_the_embeddings_of_the_collapsed_tokens(ctc_omni):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.unit_lm import ctc_collapse

    model = load_omni(ctc_omni)
    proj = model.speech_projector
    with torch.no_grad():  # a head that prefers a different class at every frame: nothing is blank
        proj.bias.copy_(torch.cat([torch.arange(proj.config.vocab, dtype=torch.float) * 0.0, torch.tensor([-1e4])]))
    states = torch.randn(1, 203, 64) * 5
    with torch.no_grad():
        logits = proj.logits(states)
        assert logits.shape == (1, 203 // 4, proj.config.vocab + 1)
        ids = proj.decode(states)
        features = proj(states)
    collapsed = ctc_collapse(logits[0].argmax(-1).tolist(), proj.blank)
    assert ids == proj.token_ids[collapsed].tolist() and len(ids) > 3
    tokenizer = model.llm.tokenizer
    heard = proj.heard(states)
    assert heard == tokenizer.decode(ids).strip()
    canonical = tokenizer(heard, add_special_tokens=False).input_ids  # what the LLM reads: its own tokens of the text
    table = model.llm.model.get_input_embeddings().weight
    assert features.shape == (1, len(canonical), 16)
    torch.testing.assert_close(features[0], table[canonical])


def test_a_chars_head_spells_lower_case_characters(ctc_omni):
    from omni_cli.e2e.speech_projector import CHARS, ctc_vocabulary, normalize_chars, spell

    from omni_cli.e2e.checkpoint import load_omni

    tokenizer = load_omni(ctc_omni).llm.tokenizer
    assert normalize_chars("Who’s  THE café owner? (Paris)") == "who's the cafe owner? paris"
    ids = spell(tokenizer, "Hi, Bob!", "chars")
    assert len(ids) == len("hi, bob!") and tokenizer.decode(ids) == "hi, bob!"
    assert len(ctc_vocabulary(tokenizer, [], "chars")) == len(CHARS)


def test_ctc_adaptor_is_masked_against_padding(ctc_omni):
    """In a padded batch, an item's logits are those it gets alone."""
    from omni_cli.e2e.checkpoint import load_omni

    proj = load_omni(ctc_omni).speech_projector
    a, b = torch.randn(1, 80, 64), torch.randn(1, 40, 64)
    batch = torch.nn.utils.rnn.pad_sequence([a[0], b[0]], batch_first=True)
    with torch.no_grad():
        together = proj.logits(batch, torch.tensor([80, 40]))
        alone = proj.logits(b)
    torch.testing.assert_close(together[1, :10], alone[0], atol=1e-5, rtol=1e-4)


def _spoken_rows(folder) -> list[dict]:
    """Two training rows: the example question's audio, copied, with two transcripts."""
    rows = []
    for i, text in enumerate(["The moon is bright.", "Paris is the capital of France."]):
        path = folder / f"{i}.wav"
        shutil.copy(EXAMPLE_QUESTION, path)
        rows.append({"audio": str(path), "instruction": text})
    return rows


def test_ctc_stage_learns_saves_and_resumes(ctc_omni, tmp_path):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import TrainOptions, train_adaptor

    rows = _spoken_rows(tmp_path)
    model = load_omni(ctc_omni, TEST_DEVICE)
    frozen = {k: v.clone() for k, v in model.llm.model.state_dict().items()}
    opts = TrainOptions(steps=40, batch_size=2, lr=2e-2, warmup=2, save_every=20)
    losses = [p.loss for p in train_adaptor(model, rows, tmp_path / "s1", opts, task="ctc")]
    assert len(losses) == 40 and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert all(torch.equal(v, model.llm.model.state_dict()[k]) for k, v in frozen.items())  # the LLM stays frozen
    again = load_omni(tmp_path / "s1" / "model", TEST_DEVICE)
    torch.testing.assert_close(again.speech_projector.state_dict()["token_ids"], model.speech_projector.token_ids)
    resumed = list(train_adaptor(again, rows, tmp_path / "s1", dataclasses.replace(opts, steps=45), task="ctc", resume=True))
    assert [p.step for p in resumed] == [41, 42, 43, 44, 45]


def test_a_trained_adaptor_learns_the_new_tokens_of_new_transcripts(ctc_omni, tmp_path):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import TrainOptions, train_adaptor

    model = load_omni(ctc_omni, TEST_DEVICE)
    proj = model.speech_projector
    old_ids, old_vocab = proj.token_ids.clone(), proj.config.vocab
    states = torch.randn(1, 64, 64)
    with torch.no_grad():
        before = proj.logits(states)
    rows = _spoken_rows(tmp_path)
    rows[1]["instruction"] = "Zebras graze quietly."  # words the head has no tokens for
    tokens = model.llm.tokenizer(rows[1]["instruction"], add_special_tokens=False).input_ids
    new = [t for t in tokens if t not in set(old_ids.tolist())]
    assert new and len(proj.targets(rows[1]["instruction"])) == len(tokens) - len(new)  # the head cannot spell them yet
    opts = TrainOptions(steps=2, batch_size=2, lr=1e-3, warmup=1, save_every=2)
    list(train_adaptor(model, rows, tmp_path / "grow", opts, task="ctc"))
    grown = load_omni(tmp_path / "grow" / "model", TEST_DEVICE)
    gp = grown.speech_projector
    assert grown.config.projector.vocab == gp.config.vocab == old_vocab + len(set(new))
    assert gp.token_ids[:old_vocab].tolist() == old_ids.tolist() and set(gp.token_ids[old_vocab:].tolist()) == set(new)
    assert gp.blank == gp.config.vocab and gp.bias.shape[0] == gp.config.vocab + 1
    assert len(gp.targets(rows[1]["instruction"])) == len(tokens)
    # before training, growing changes no old class's score (blank included) and scores the new ones
    fresh = load_omni(ctc_omni, TEST_DEVICE).speech_projector
    fresh.extend(new)
    with torch.no_grad():
        after = fresh.logits(states)
    torch.testing.assert_close(after[..., :old_vocab], before[..., :old_vocab])
    torch.testing.assert_close(after[..., -1], before[..., -1])
    assert after.shape[-1] == old_vocab + len(set(new)) + 1 and torch.isfinite(after).all()


def with_random_lora(folder):
    """The model in `folder` with LoRA adapters (rank 4) of random weights injected, named in its config."""
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.lora import LoraConfig, add_lora

    model = load_omni(folder)
    params = add_lora(model.llm.model, LoraConfig(rank=4, alpha=8.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.3)
    model.config = dataclasses.replace(model.config, llm_lora={"rank": 4, "alpha": 8.0, "targets": list(LoraConfig().targets)})
    return model


def test_lora_merged_at_load_gives_the_outputs_of_the_trained_adapters(ctc_omni, tmp_path):
    from omni_cli.e2e.checkpoint import load_omni, save_omni

    model = with_random_lora(ctc_omni)
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    with torch.no_grad():
        trained = model.llm.model(input_ids=ids).logits
    save_omni(model, tmp_path / "lora")
    loaded = load_omni(tmp_path / "lora")
    with torch.no_grad():
        merged = loaded.llm.model(input_ids=ids).logits
        plain = load_omni(ctc_omni).llm.model(input_ids=ids).logits
    torch.testing.assert_close(merged, trained, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain, trained, atol=1e-3)
    assert not any(".lora_" in n for n, _ in loaded.llm.model.named_parameters())  # plain layers at inference
    save_omni(loaded, tmp_path / "again")  # merged adapters are saved back as they were
    torch.testing.assert_close(load_omni(tmp_path / "again").llm.model(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-4)


def test_repeat_only_lora_leaves_answers_to_the_base_llm_and_repeats_as_merged(ctc_omni, tmp_path):
    from omni_cli.audio import load_audio
    from omni_cli.e2e.checkpoint import load_omni, save_omni
    from omni_cli.llm import GenerationOptions

    model = with_random_lora(ctc_omni)
    save_omni(model, tmp_path / "both")
    model.config = dataclasses.replace(model.config, lora_tasks=("repeat",))
    save_omni(model, tmp_path / "repeat")
    both, apart, plain = (load_omni(tmp_path / "both"), load_omni(tmp_path / "repeat"), load_omni(ctc_omni))
    assert apart.config.lora_tasks == ("repeat",) and apart.loaded_lora and not apart.lora_merged
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    weights = {k: v.clone() for k, v in apart.llm.model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(apart.llm.model(input_ids=ids).logits, plain.llm.model(input_ids=ids).logits)
        with apart.repeating():
            torch.testing.assert_close(apart.llm.model(input_ids=ids).logits, both.llm.model(input_ids=ids).logits)
    assert all(torch.equal(v, apart.llm.model.state_dict()[k]) for k, v in weights.items())  # exactly as it was after

    audio = load_audio(EXAMPLE_QUESTION)
    options = GenerationOptions(max_new_tokens=12)
    answer = lambda m: [s.token_id for s in m.stream(audio, options)]  # noqa: E731
    assert answer(apart) == answer(plain) and answer(both) != answer(plain)  # answers: the base LLM's
    assert apart.transcribe(audio) == both.transcribe(audio) != plain.transcribe(audio)  # repeating: with the adapters
    assert answer(apart) == answer(plain)  # the prompt cache kept from the repeat task is not reused
    save_omni(apart, tmp_path / "again")  # adapters kept apart are saved back as they were
    assert load_omni(tmp_path / "again").config.lora_tasks == ("repeat",)
    assert apart.transcribe(audio) == load_omni(tmp_path / "again").transcribe(audio)


@pytest.mark.parametrize("tasks", [("answer", "repeat"), ("repeat",)])
def test_an_adapter_that_does_not_fit_the_llm_is_refused_at_load(ctc_omni, tmp_path, tasks):
    from safetensors.torch import load_file, save_file

    from omni_cli.e2e.checkpoint import OMNI_WEIGHTS, load_omni, save_omni
    from omni_cli.e2e.state import CheckpointError

    model = with_random_lora(ctc_omni)
    model.config = dataclasses.replace(model.config, lora_tasks=tasks)
    save_omni(model, tmp_path / "m")
    state = load_file(tmp_path / "m" / OMNI_WEIGHTS)
    key = next(k for k in state if k.endswith("q_proj.lora_A.weight"))
    state[key] = state[key][:, :-1].contiguous()  # one input column short
    save_file(state, tmp_path / "m" / OMNI_WEIGHTS)
    with pytest.raises(CheckpointError, match="does not fit the LLM"):
        load_omni(tmp_path / "m")


def test_llm_stage_trains_only_adapters_and_learns_to_repeat(ctc_omni, tmp_path):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.lora import LoraConfig
    from omni_cli.e2e.train import TrainOptions, train_llm

    rows = []
    for i, (text, answer) in enumerate([("The moon is bright.", "Yes it is."), ("Paris is the capital of France.", None)]):
        path = tmp_path / f"{i}.wav"
        shutil.copy(EXAMPLE_QUESTION, path)
        rows.append({"audio": str(path), "instruction": text, "response": answer})
    model = load_omni(ctc_omni, TEST_DEVICE)
    before = {k: v.clone() for k, v in model.llm.model.state_dict().items()}
    opts = TrainOptions(steps=40, batch_size=2, lr=1e-2, warmup=2, save_every=20)
    losses = [p.loss for p in train_llm(model, rows, tmp_path / "llm", opts, lora=LoraConfig(rank=4, alpha=8.0))]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    base = {k.replace(".base_layer", ""): v for k, v in model.llm.model.state_dict().items() if ".lora_" not in k}
    assert all(torch.equal(v, base[k]) for k, v in before.items())  # only the adapters moved
    loaded = load_omni(tmp_path / "llm" / "model", TEST_DEVICE)
    assert loaded.config.llm_lora["rank"] == 4 and loaded.loaded_lora and loaded.lora_merged
    resumed = list(train_llm(loaded, rows, tmp_path / "llm", dataclasses.replace(opts, steps=42), resume=True,
                             lora=LoraConfig(rank=4, alpha=8.0)))
    assert [p.step for p in resumed] == [41, 42]


def test_token_reading_decoder_streams_exactly_its_full_pass(ctc_omni):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.speech_generator import SpeechDecoderStream

    gen = load_omni(ctc_omni).speech_generator
    torch.manual_seed(2)
    hidden, tokens = torch.randn(9, 16) * 3, torch.randn(9, 16) * 3
    stream = SpeechDecoderStream(gen)
    assert [u for h, t in zip(hidden, tokens) for u in stream.push(h, t)] == gen.predict(hidden, tokens)
    with pytest.raises(ValueError, match="emitted tokens"):
        gen.predict(hidden)
    other = tokens.clone()
    other[4] = torch.randn(16) * 3
    with torch.no_grad():
        a = gen.logits(gen.project(hidden[None], tokens[None]))[0]
        b = gen.logits(gen.project(hidden[None], other[None]))[0]
    assert not torch.allclose(a[16:20], b[16:20])  # the token is read


def test_stage2_from_typed_text_needs_no_audio(ctc_omni, tmp_path):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import TrainOptions, train_speech_decoder

    rows = [{"audio": "/nonexistent.wav", "instruction": "Tell me about the moon.", "response": text, "units": [5 + i, 9, 12, 30]}
            for i, text in enumerate(["the moon is bright", "cats like to sleep"])]
    model = load_omni(ctc_omni, TEST_DEVICE)
    opts = TrainOptions(steps=30, batch_size=2, lr=5e-3, warmup=2, save_every=30)
    losses = [p.loss for p in train_speech_decoder(model, rows, tmp_path / "s2", opts, from_text=True)]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def test_pipeline_runs_the_ctc_model_end_to_end(ctc_omni):
    from omni_cli.audio import load_audio
    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.llm import GenerationOptions

    pipeline = load_e2e_pipeline(str(ctc_omni), None, E2EOptions(omega=5, generation=GenerationOptions(max_new_tokens=6)), TEST_DEVICE)
    response = pipeline.respond(load_audio(EXAMPLE_QUESTION))
    # the transcript is the text of the tokens the adaptor handed the LLM
    assert response.transcript == pipeline.model.hear(load_audio(EXAMPLE_QUESTION))[1] and isinstance(response.text, str)


def test_warm_up_runs_every_model_and_keeps_the_prompt_prefix(ctc_omni):
    """After the warm-up the prompt's fixed beginning is kept, so the first turn computes
    only the speech and what follows it (and every model has run once)."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.llm import GenerationOptions

    pipeline = load_e2e_pipeline(str(ctc_omni), None, E2EOptions(omega=5, generation=GenerationOptions(max_new_tokens=4)))
    vocoded = []
    original = pipeline.vocoder.units_to_audio
    pipeline.vocoder.units_to_audio = lambda units: vocoded.append(units) or original(units)
    pipeline.warm_up()
    before, _ = pipeline.model.prompt_ids()
    assert pipeline.model.llm._kv_ids[: len(before)] == tuple(before) and vocoded
    first_call = []
    pipeline.model.llm.model.register_forward_pre_hook(
        lambda m, args, kwargs: first_call.append(int(kwargs["position_ids"][0, 0])) if not first_call else None, with_kwargs=True)
    audio = load_audio(EXAMPLE_QUESTION)
    pipeline.respond(audio)
    assert first_call[0] == len(before)  # it began after the kept beginning


def test_the_e2e_pipeline_answers_with_a_bfloat16_llm(ctc_omni):
    """The LLM in bfloat16 (as answering runs it on CPUs with native bfloat16), the rest in
    float32: every hand-over between them casts."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.llm import GenerationOptions

    pipeline = load_e2e_pipeline(str(ctc_omni), None, E2EOptions(omega=5, generation=GenerationOptions(max_new_tokens=6)))
    pipeline.model.llm.model.to(torch.bfloat16)
    pipeline.warm_up()
    response = pipeline.respond(load_audio(EXAMPLE_QUESTION))
    assert isinstance(response.text, str) and response.audio.dtype == np.float32
    assert isinstance(pipeline.model.transcribe(load_audio(EXAMPLE_QUESTION)), str)


def test_repeat_is_bounded_by_what_was_heard(ctc_omni):
    """A ctc model's repeat (its ASR task) may say at most a quarter more tokens than it heard (at
    least 4 more), however long the audio; the audio's own bound (6 tokens a second) still holds."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.checkpoint import load_omni

    model = load_omni(ctc_omni, TEST_DEVICE)
    audio = np.tile(load_audio(EXAMPLE_QUESTION), 3)
    full = model.speech_features(audio)
    stream, limits = model.stream_features, []

    def recording(features, options, *args, **kwargs):
        limits.append(options.max_new_tokens)
        steps = list(stream(features, options, *args, **kwargs))
        assert len(steps) <= options.max_new_tokens
        yield from steps

    model.stream_features = recording
    said = model.transcribe(audio)
    heard = model.hear(audio)[1]
    assert model.transcribe(audio, features=full, heard=heard) == said  # heard already: the same repeat
    model.listen = lambda _audio: (full[:3], None, [])  # three tokens heard in the same long audio
    model.transcribe(audio)
    model.listen = lambda _audio: (full[:24], None, [])
    model.transcribe(audio)
    bound = min(len(full) + max(4, len(full) // 4), 40)
    assert limits == [bound, bound, 3 + 4, 24 + 6]


def test_a_repeat_that_loops_gives_what_the_adaptor_heard(ctc_omni):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.speech_llm import loops
    from omni_cli.llm import TokenStep

    heard = "I like to host guests at my home, and I am gathering recipes to keep things interesting."
    looped = "I am gathering recipes to keep things interesting. I am gathering recipes to keep things interesting."
    assert loops(looped, heard) and not loops(heard, heard)
    assert not loops("five five five five five", "five five five five five")  # said as often as heard
    assert loops("no no no no no", "no no")

    model = load_omni(ctc_omni, TEST_DEVICE)
    features = model.speech_projector.embed_heard(model.llm.tokenizer(heard, add_special_tokens=False).input_ids)
    def says(*pieces):
        def stream(*a, **k):
            for n, piece in enumerate(pieces):
                said.append(piece)
                yield TokenStep(n, piece, None)
            yield TokenStep(len(pieces), "", None, end=True)
        return stream

    for pieces, expect in (((looped,), heard), (("I like to host guests at my home.",), "I like to host guests at my home."),
                           # a transcript is one line: what follows a line break is the prompt leaking, and is not asked for
                           (("Hey!", "\n", "Repeat", " what", " was"), "Hey!"), (("\n", " Six", "\n", "Repeat"), "Six")):
        said = []
        model.stream_features = says(*pieces)
        assert model.transcribe(np.zeros(16000 * 6, np.float32), features=features, heard=heard) == expect
        assert "Repeat" not in said  # generation stopped at the break


def test_a_repeat_after_a_beam_says_one_of_the_transcripts_the_llm_chose_among(ctc_omni):
    """Where the adaptor heard by beam search, the repeat picks token by token among its
    hypotheses: a random-weight LLM, free, says anything; constrained, it says one of them
    whole, and may stop where a shorter one ends inside a longer."""
    from omni_cli.e2e.checkpoint import load_omni

    model = load_omni(ctc_omni, TEST_DEVICE)
    tok = model.llm.tokenizer
    texts = ["hello world", "hello word", "yellow world again"]
    alternatives = [tok(t, add_special_tokens=False).input_ids for t in texts]
    heard = texts[0]
    features = model.speech_projector.embed_heard(alternatives[0])
    audio = np.zeros(16000 * 2, np.float32)
    free = model.transcribe(audio, features=features, heard=heard)
    said = model.transcribe(audio, features=features, heard=heard, alternatives=alternatives)
    assert said in texts and free not in texts
    allowed, longest = model._among(alternatives + [tok("hello", add_special_tokens=False).input_ids])
    assert longest == len(alternatives[2])
    hello = tok("hello", add_special_tokens=False).input_ids
    assert set(model.llm.eos_ids) <= allowed(hello)  # "hello" is one of them, and ends there
    assert allowed(hello) - set(model.llm.eos_ids) == {tok("hello world", add_special_tokens=False).input_ids[len(hello)],
                                                       tok("hello word", add_special_tokens=False).input_ids[len(hello)]}
    assert allowed(alternatives[2]) == set(model.llm.eos_ids)
    # one transcript alone (a greedy hearing) leaves nothing to choose: the repeat is free
    assert model.transcribe(audio, features=features, heard=heard, alternatives=alternatives[:1]) == free


def test_transcribe_with_the_e2e_backend(ctc_omni, tmp_path):
    """`omni transcribe --asr-backend e2e`: the model's repeat, with a reference WER like Whisper's."""
    import json

    from typer.testing import CliRunner

    from omni_cli.cli import app

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLE_QUESTION, folder / "q.wav")
    (folder / "q.txt").write_text("Tell me about the moon.")
    result = CliRunner().invoke(app, ["transcribe", str(folder), "--asr-backend", "e2e", "--e2e-model", str(ctc_omni),
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1 and rows[0]["reference"] == "Tell me about the moon." and rows[0]["wer"] is not None
    bad = CliRunner().invoke(app, ["transcribe", str(folder), "--e2e-model", str(ctc_omni)])
    assert bad.exit_code != 0 and "--asr-backend e2e" in bad.output


def test_two_processes_train_as_one(ctc_omni, tmp_path):
    """torchrun with two CPU processes (gloo), each computing half of every batch, ends where
    one process with the whole batch ends (up to bfloat16 rounding)."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    texts = ["The moon is bright.", "Paris is the capital of France.", "The moon is the capital.", "Paris is bright."]
    with open(data / "manifest.jsonl", "w") as f:
        for i, text in enumerate(texts):
            shutil.copy(EXAMPLE_QUESTION, data / "audio" / f"{i}.wav")
            f.write(json.dumps({"id": str(i), "audio": f"audio/{i}.wav", "instruction": text, "split": "train"}) + "\n")
    omni = os.path.join(os.path.dirname(sys.executable), "omni")
    args = ["train", "adaptor", "--task", "ctc", "--data", str(data), "--from", str(ctc_omni), "--steps", "3",
            "--batch-size", "4", "--lr", "1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([omni, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python",
                          omni, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    start = load_file(str(ctc_omni / "model.safetensors"))
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    keys = [k for k in a if k.startswith("speech_projector.") and a[k].is_floating_point()]
    moved = sum(float((a[k].float() - start[k].float()).norm()) for k in keys)
    apart = sum(float((a[k].float() - b[k].float()).norm()) for k in keys)
    assert moved > 0 and apart < 0.05 * moved
    losses_one = json.loads((tmp_path / "one" / "losses.json").read_text())
    losses_two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(losses_two) == 3 and abs(losses_one[0] - losses_two[0]) < 0.02 * losses_one[0]


def test_batched_decoding_equals_one_at_a_time(ctc_omni):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import speech_features_of

    model = load_omni(ctc_omni)
    proj = model.speech_projector
    with torch.no_grad():
        proj.bias.copy_(torch.cat([torch.zeros(proj.config.vocab), torch.tensor([-1e4])]))  # never blank
    torch.manual_seed(4)
    states = [torch.randn(n, 64) * 5 for n in (37, 120, 64, 9)]
    with torch.no_grad():
        alone = [proj.decode(x.unsqueeze(0)) for x in states]
        assert proj.decode_batch(states) == alone and any(alone)
        for f, x in zip(speech_features_of(model, [x.half() for x in states], batch=3), states):
            torch.testing.assert_close(f, proj(x.half().float().unsqueeze(0))[0])


def test_batched_emitting_states_equal_one_item_at_a_time(ctc_omni):
    """Right padding, length order and the attention mask change nothing (float32 on this path:
    bfloat16 autocast is compared loosely)."""
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import emitting_states, emitting_states_batch

    model = load_omni(ctc_omni)
    questions = ["Tell me about the moon.", "Why?", "Paris is the capital of France, is it not?"]
    answers = ["The moon is bright.", "Because it is, and that is all there is to say.", "Yes."]
    together = emitting_states_batch(model, answers, instructions=questions, batch=2)
    for q, a, (h, t) in zip(questions, answers, together):
        h1, t1 = emitting_states(model, a, instruction=q)
        assert h.shape == h1.shape and h.shape[0] == len(model.llm.tokenizer(a, add_special_tokens=False).input_ids) + 1
        torch.testing.assert_close(h, h1, atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(t, t1)


def test_kept_class_embeddings_follow_the_weights(ctc_omni):
    """The class matrix kept between inference passes is rebuilt when a weight behind it moves."""
    from omni_cli.e2e.checkpoint import load_omni

    proj = load_omni(ctc_omni).speech_projector
    x = torch.randn(1, 40, 64)
    with torch.no_grad():
        before = proj.logits(x)
        assert torch.equal(proj.logits(x), before)
        proj.blank_embedding.add_(1.0)
        after = proj.logits(x)
    assert not torch.allclose(after[..., -1], before[..., -1])
    torch.testing.assert_close(after, proj.logits(x).detach())  # the same as computed afresh with gradients on


def test_a_later_e2e_turn_reads_the_earlier_speech_and_the_kept_cache_changes_nothing(ctc_omni):
    """With a ctc adaptor the history holds the text of the tokens the LLM read from the
    earlier speech (the same embeddings), and a turn computed on the kept prefix cache gives
    the tokens of a fresh pass over the whole conversation."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.llm import GenerationOptions, stream_generate

    model = load_omni(ctc_omni)
    audio = load_audio(EXAMPLE_QUESTION)
    with torch.no_grad():
        proj = model.speech_projector
        proj.bias.copy_(torch.cat([torch.zeros(proj.config.vocab), torch.tensor([-1e4])]))  # never blank: it hears tokens
        features, heard = model.hear(audio)
    assert heard and torch.equal(features, model.llm.model.get_input_embeddings()(
        torch.tensor(model.llm.tokenizer(heard, add_special_tokens=False).input_ids)))
    history = [{"role": "user", "content": heard}, {"role": "assistant", "content": "The moon is bright."}]
    opts = GenerationOptions(max_new_tokens=8)
    kept = [s.token_id for s in model.stream_features(features, opts, history)]  # the prefix from the cache
    assert kept == [s.token_id for s in model.stream_features(features, opts, history)]  # the cache, reused
    fresh = [s.token_id for s in stream_generate(model.llm, inputs_embeds=model.prompt_embeds(features, history), options=opts)]
    assert kept == fresh


def test_batched_encoder_equals_one_utterance_at_a_time(ctc_omni):
    """Padding stays out of attention and the convolutions' edges: each item's states in a
    padded batch equal the encoder run on it alone."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import augmented_mels

    model = load_omni(ctc_omni, TEST_DEVICE)
    audio = load_audio(EXAMPLE_QUESTION)
    clips = [audio, audio[: len(audio) // 3], audio[5000 : len(audio) // 2]]
    enc = model.speech_encoder
    with torch.no_grad():
        mels = augmented_mels([torch.as_tensor(a).to(model.device) for a in clips], enc.config.n_mels, None, None,
                              enc.config.n_ctx)
        batch, lengths = enc.encode_batch(mels)
        for i, clip in enumerate(clips):
            alone = enc.encode(clip)
            assert int(lengths[i]) == alone.shape[0]
            torch.testing.assert_close(batch[i, : alone.shape[0]], alone, atol=2e-4, rtol=1e-3)


def test_augmentation_changes_speed_and_masks_the_mel(ctc_omni):
    import random

    from omni_cli.e2e.speech_encoder import speed_perturb
    from omni_cli.e2e.train import Augment, augmented_mels

    audio = torch.sin(torch.arange(16000) / 10.0)
    assert speed_perturb(audio, 1.25).shape[0] == 12800 and speed_perturb(audio, 0.8).shape[0] == 20000
    plain = augmented_mels([audio], 80, None, None)[0]
    fast = augmented_mels([audio], 80, Augment(speed=(1.25, 1.25), freq_masks=0, time_masks=0), random.Random(0))[0]
    assert plain.shape[1] == 100 and fast.shape[1] == 80
    masked = augmented_mels([audio], 80, Augment(speed=(1.0, 1.0), freq_masks=1, freq_width=79, time_masks=0),
                            random.Random(1))[0]
    assert masked.shape == plain.shape and (masked == 0).all(dim=1).sum() >= 1 and not torch.equal(masked, plain)


def test_noise_and_vocal_tract_warp():
    """White noise lands at the SNR asked for; the frequency warp moves a formant up the mel
    bins by its factor (a shorter vocal tract) and leaves the frames as they are."""
    import random

    from omni_cli.e2e.train import Augment, add_noise, augmented_mels, warp_frequencies

    audio = torch.sin(torch.arange(16000) / 10.0)
    noisy = add_noise(audio, 20.0, torch.Generator().manual_seed(0))
    snr = 10 * torch.log10(audio.pow(2).mean() / (noisy - audio).pow(2).mean())
    assert abs(float(snr) - 20.0) < 0.5
    mel = torch.zeros(80, 10)
    mel[30] = 1.0
    up = warp_frequencies(mel, 1.2)
    assert up.shape == mel.shape and int(up[:, 0].argmax()) == 36
    assert torch.equal(warp_frequencies(mel, 1.0), mel)
    both = Augment(speed=(1.0, 1.0), freq_masks=0, time_masks=0, warp=(1.1, 1.1), noise_snr=(10, 10), noise_p=1.0)
    plain = augmented_mels([audio], 80, None, None)[0]
    changed = augmented_mels([audio], 80, both, random.Random(0))[0]
    assert changed.shape == plain.shape and not torch.allclose(changed, plain, atol=0.05)


def test_reverb_is_a_decaying_echo_at_the_ratio_asked():
    """A click in the synthetic room: the direct sound first, silence for 2 ms, then a tail whose
    energy is the asked ratio below the direct sound's and falls 60 dB in RT60; speech keeps its
    length and power, and the augmentation applies it."""
    import random

    from omni_cli.e2e.train import Augment, add_reverb, augmented_mels

    click = torch.zeros(16000)
    click[100] = 1.0
    energy = add_reverb(click, 0.4, 6.0, torch.Generator().manual_seed(0)).pow(2)
    assert int(energy.argmax()) == 100 and float(energy[:100].sum()) < 1e-9 and float(energy[101:132].sum()) < 1e-9
    assert abs(10 * torch.log10(energy[100] / energy[132:].sum()).item() - 6.0) < 0.1
    decay = 10 * torch.log10(energy[100 + 1600 : 100 + 3200].sum() / energy[100 + 4800 : 100 + 6400].sum()).item()
    assert 27 < decay < 33  # 0.2 s apart at RT60 0.4 s: 30 dB
    audio = torch.sin(torch.arange(16000) / 10.0)
    wet = add_reverb(audio, 0.6, 0.0, torch.Generator().manual_seed(1))
    assert wet.shape == audio.shape and torch.allclose(wet.pow(2).mean(), audio.pow(2).mean(), rtol=1e-3)
    plain = augmented_mels([audio], 80, None, None)[0]
    room = Augment(speed=(1.0, 1.0), freq_masks=0, time_masks=0, reverb=(0.6, 0.6), reverb_drr=(0.0, 0.0), reverb_p=1.0)
    changed = augmented_mels([audio], 80, room, random.Random(0))[0]
    assert changed.shape == plain.shape and not torch.allclose(changed, plain, atol=0.05)


def test_a_microphone_keeps_its_band_and_noise_comes_at_the_ratio_and_colour_asked():
    from omni_cli.e2e.rooms import coloured_noise, microphone

    t = torch.arange(16000) / 16000
    low, mid, high = (torch.sin(2 * torch.pi * f * t) for f in (100.0, 1000.0, 7000.0))
    heard = [microphone(x, 300.0, 3400.0, 0.0).pow(2).mean() / x.pow(2).mean() for x in (low, mid, high)]
    assert heard[0] < 0.02 and 0.95 < heard[1] < 1.05 and heard[2] < 0.01  # below and above the band: gone
    tilted = microphone(high, 60.0, 8000.0, 6.0).pow(2).mean() / microphone(high, 60.0, 8000.0, 0.0).pow(2).mean()
    assert 1.5 < float(tilted) < 8  # +6 dB per two octaves: brighter at 7 kHz
    for slope in (0.0, 2.0):
        noisy = coloured_noise(mid, 10.0, slope, torch.Generator().manual_seed(0))
        noise = noisy - mid
        assert abs(10 * torch.log10(mid.pow(2).mean() / noise.pow(2).mean()).item() - 10.0) < 0.01
        spectrum = torch.fft.rfft(noise).abs().pow(2)
        ratio = spectrum[100:200].mean() / spectrum[4000:5000].mean()  # 100-200 Hz against 4-5 kHz
        assert (ratio < 3) if slope == 0 else (ratio > 100)  # white is flat, brown falls steeply


def test_a_room_copy_is_the_same_length_at_a_new_level_and_the_same_draws_make_the_same_copy():
    import random

    from omni_cli.e2e.rooms import room_copy

    audio = torch.sin(torch.arange(32000) / 7.0) * torch.linspace(0, 1, 32000)
    copies = [room_copy(audio, random.Random(f"0:{i}")) for i in range(12)]
    for copy, how in copies:
        assert copy.shape == audio.shape and torch.isfinite(copy).all() and 0.2 <= float(copy.abs().max()) <= 0.9
    assert {"reverb" in how for _, how in copies} == {True, False}  # a share, not every one
    again, how = room_copy(audio, random.Random("0:3"))
    assert torch.equal(again, copies[3][0]) and how == copies[3][1]
    assert not torch.allclose(copies[0][0], copies[1][0])


def test_ctc_stage_learns_from_augmented_audio(ctc_omni, tmp_path):
    """Training from audio (the encoder run on every batch, augmented) learns and leaves the
    encoder and the LLM as they were."""
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.train import Augment, TrainOptions, train_ctc_adaptor

    rows = _spoken_rows(tmp_path)
    model = load_omni(ctc_omni, TEST_DEVICE)
    encoder = {k: v.clone() for k, v in model.speech_encoder.state_dict().items()}
    opts = TrainOptions(steps=40, batch_size=2, lr=2e-2, warmup=2, save_every=40)
    losses = [p.loss for p in train_ctc_adaptor(model, rows, tmp_path / "aug", opts, augment=Augment(speed=(0.95, 1.05)))]
    assert len(losses) == 40 and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert all(torch.equal(v, model.speech_encoder.state_dict()[k]) for k, v in encoder.items())
    assert (tmp_path / "aug" / "model").is_dir()


def test_ctc_prefix_beams_sum_every_alignment():
    """Two frames, each 0.4 'a' and 0.6 blank: the greedy path says nothing (0.36), but 'a'
    has three alignments (aa, a-, -a: 0.64) and comes first; repeats merge unless a blank
    separates them; the width caps the hypotheses."""
    import math

    from omni_cli.e2e.speech_projector import ctc_prefix_beams

    a, b, blank = 0, 1, 2
    two = torch.tensor([[0.4, 1e-9, 0.6]] * 2).log()
    found = ctc_prefix_beams(two, blank, width=4)
    assert [h for h, _ in found][:2] == [[a], []]
    assert math.isclose(math.exp(found[0][1]), 0.64, rel_tol=1e-4) and math.isclose(math.exp(found[1][1]), 0.36, rel_tol=1e-4)
    sure = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]).clamp_min(1e-9).log()
    assert ctc_prefix_beams(sure, blank, width=3)[0][0] == [a, a, b]
    assert len(ctc_prefix_beams(torch.randn(30, 3).log_softmax(-1), blank, width=2)) == 2


def test_beam_hearing_lets_the_llm_choose_among_hypotheses(ctc_omni, tmp_path):
    """The LLM's scores of padded hypotheses in one batch are each one's alone; lm_weight 0 keeps
    the CTC's best; the choice and the settings survive export and load."""
    from typer.testing import CliRunner

    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni

    out = tmp_path / "beamed"
    result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(out), "--beam", "4", "--lm-weight", "1",
                                      "--length-bonus", "0"])
    assert result.exit_code == 0, result.output
    model = load_omni(out)
    p = model.speech_projector.config
    assert (p.beam, p.lm_weight, p.length_bonus) == (4, 1.0, 0.0) and model.config.projector == p
    tok = model.llm.tokenizer
    texts = ["The moon is bright.", "Paris is the capital of France.", "The moon"]
    hyps = [(tok(t, add_special_tokens=False).input_ids, 0.0) for t in texts]
    before, after = model.prompt_ids()
    end = after[:1]

    def alone(text):  # the LLM's log-probability of one hypothesis in the prompt, no tree, no cache
        seq = before + tok(text, add_special_tokens=False).input_ids + end
        with torch.no_grad():
            logp = model.llm.model(input_ids=torch.tensor([seq])).logits[0].float().log_softmax(-1)
        return sum(logp[i - 1, seq[i]].item() for i in range(len(before), len(seq)))

    lm = [alone(t) for t in texts]
    scored = [(-1.0, 2.0, 0.5)[i] + 1.0 * lm[i] for i in range(3)]
    got = model.plausibility([(ids, (-1.0, 2.0, 0.5)[i]) for i, (ids, _) in enumerate(hyps)])
    assert got == pytest.approx(scored, abs=1e-3)
    alike = ["The moon is bright.", "The moon", "The moon is"]  # shared beginnings, each run once
    got = model.plausibility([(tok(t, add_special_tokens=False).input_ids, 0.0) for t in alike])
    assert got == pytest.approx([alone(t) for t in alike], abs=1e-3)
    assert model.most_plausible(hyps) == hyps[max(range(3), key=lm.__getitem__)][0]
    # the LLM keeps the prompt with the chosen one: the keys and values a plain pass computes
    best = before + tok(texts[max(range(3), key=lm.__getitem__)], add_special_tokens=False).input_ids + end
    assert model.llm._kv_ids == tuple(best)
    with torch.no_grad():
        fresh = model.llm.model(input_ids=torch.tensor([best]), use_cache=True).past_key_values
    for kept, plain in zip(model.llm._kv.layers, fresh.layers):
        assert kept.keys[..., : len(best), :].shape == plain.keys.shape
        assert torch.allclose(kept.keys[..., : len(best), :], plain.keys, atol=1e-4)
        assert torch.allclose(kept.values[..., : len(best), :], plain.values, atol=1e-4)
    worst = min(range(3), key=lm.__getitem__)  # a CTC margin larger than the LLM's gap wins
    boosted = [(ids, 2 * (max(lm) - min(lm)) + 1 if i == worst else 0.0) for i, (ids, _) in enumerate(hyps)]
    assert model.most_plausible(boosted) == hyps[worst][0]
    model.speech_projector.config = dataclasses.replace(p, lm_weight=0.0)
    assert model.most_plausible(hyps[::-1]) == hyps[-1][0]
    model.speech_projector.config = p
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    with torch.no_grad():
        embeds, heard = model.hear(audio)
    assert embeds.shape[-1] == model.config.projector.llm_width and isinstance(heard, str)


def test_a_token_ngram_steers_what_the_adaptor_hears_and_travels_with_the_model(ctc_omni, tmp_path):
    """`omni train export --token-lm`: the n-gram over LLM token ids is fused into the hearing
    beam search (the best hypothesis is a likelier token sequence to it than the plain search's),
    saved beside the weights, kept by a second export; a missing file, a weight without an
    n-gram, or one counted for a smaller vocabulary is one clear error."""
    from typer.testing import CliRunner

    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.state import CheckpointError
    from omni_cli.e2e.unit_lm import UnitNgram

    plain = load_omni(ctc_omni)
    tok = plain.llm.tokenizer
    moon = tok("The moon is bright.", add_special_tokens=False).input_ids
    lm = UnitNgram.fit([moon] * 20, order=3, num_units=len(tok))
    lm.save(tmp_path / "token.npz")
    out = tmp_path / "fused"
    args = ["train", "export", str(ctc_omni), str(out), "--beam", "4", "--token-lm", str(tmp_path / "token.npz"),
            "--token-lm-weight", "3", "--token-lm-bonus", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    model = load_omni(out)
    p = model.speech_projector.config
    assert (p.ngram, p.ngram_weight, p.ngram_bonus) == ("token_lm.npz", 3.0, 0.5) and model.config.projector == p
    assert model.speech_projector.token_lm.logprob(tuple(moon[:2]), moon[2]) == pytest.approx(lm.logprob(tuple(moon[:2]), moon[2]))
    audio = torch.tensor(np.random.default_rng(1).standard_normal(48000).astype(np.float32) * 0.1)
    with torch.no_grad():
        x = model.speech_encoder.encode(audio.numpy()).unsqueeze(0)
        fused = model.speech_projector.hypotheses(x, 4)
        unfused = plain.speech_projector.hypotheses(x, 4)

    def likelihood(ids):  # the n-gram's log-probability of a token sequence, end included
        return sum(lm.logprob(tuple(ids[max(0, i - 2):i]), t) for i, t in enumerate(ids + [lm.num_units]))

    assert fused[0][0] != unfused[0][0] and likelihood(fused[0][0]) > likelihood(unfused[0][0])
    again = tmp_path / "again"
    assert CliRunner().invoke(app, ["train", "export", str(out), str(again)]).exit_code == 0
    assert load_omni(again).speech_projector.token_lm is not None
    (again / "token_lm.npz").unlink()
    with pytest.raises(CheckpointError, match="token n-gram"):
        load_omni(again)
    UnitNgram.fit([[0, 1]], order=2, num_units=3).save(tmp_path / "small.npz")
    for bad in (["--token-lm", str(tmp_path / "missing.npz")], ["--beam", "4", "--token-lm-weight", "0.5"],
                ["--token-lm", str(tmp_path / "small.npz"), "--token-lm-weight", "0.5"]):
        result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(tmp_path / "x"), *bad])
        assert result.exit_code == 2 and "Traceback" not in result.stderr, bad


def test_gpu_stage1_adopt_swaps_only_the_adaptor_and_keeps_the_ngram_files(ctc_omni, tmp_path):
    """`evals.gpu_stage1 --adopt`: the base's adaptor replaced by the trained one, every other
    weight and the n-gram LMs its config names (token and unit) carried over, so it loads."""
    from safetensors.torch import load_file

    from evals.gpu_stage1 import adopt
    from omni_cli.e2e.checkpoint import load_omni, save_omni
    from omni_cli.e2e.unit_lm import UnitNgram

    base = load_omni(ctc_omni)
    tok, k = base.llm.tokenizer, base.config.speech_decoder.num_units
    base.set_hearing("test", UnitNgram.fit([[1, 2, 3]], order=2, num_units=len(tok)), beam=4, ngram="token_lm.npz", ngram_weight=0.2)
    base.set_unit_reading(UnitNgram.fit([list(range(k))], order=2, num_units=k), beam=4, lm="unit_lm.npz", lm_weight=0.5)
    save_omni(base, tmp_path / "base")
    trained = {n: v + 0.5 for n, v in base.speech_projector.state_dict().items() if n != "token_ids"}
    torch.save(trained, tmp_path / "adaptor.pt")
    adopt(tmp_path / "adaptor.pt", tmp_path / "base", tmp_path / "adopted")
    model = load_omni(tmp_path / "adopted")
    assert model.speech_projector.token_lm is not None and model.speech_generator.unit_lm is not None
    before, after = load_file(str(tmp_path / "base" / "model.safetensors")), load_file(str(tmp_path / "adopted" / "model.safetensors"))
    for name in before:
        if name.startswith("speech_projector.") and name != "speech_projector.token_ids":
            torch.testing.assert_close(after[name], trained[name.split(".", 1)[1]].to(after[name].dtype))
        else:
            assert torch.equal(after[name], before[name]), name


def test_gpu_stage1_kit_hears_as_its_base_model(ctc_omni, tmp_path):
    """`evals.gpu_stage1 --make-kit --base M`: the kit's files rebuild M's encoder and adaptor
    as the GPU run trains them (the LLM's rows and its adaptor to start from), so on the same
    audio they give M's CTC logits, up to the kit's float16; an adaptor state of another shape is
    refused rather than partly loaded."""
    from transformers import AutoTokenizer

    from evals.gpu_stage1 import KIT_FILES, Stage1, load_kit, make_kit, start_from
    from omni_cli.e2e.checkpoint import load_omni

    sizes = make_kit(tmp_path / "kit", ctc_omni)
    assert set(sizes) == set(KIT_FILES) and all(sizes.values())
    model = load_omni(ctc_omni)
    kit = Stage1(load_kit(tmp_path / "kit"), AutoTokenizer.from_pretrained(tmp_path / "kit" / "tokenizer")).eval()
    audio = np.random.default_rng(3).normal(0, 0.1, 16000).astype(np.float32)
    with torch.no_grad():
        fresh = kit.speech_projector.utterance_logits(kit.speech_encoder.encode(audio).unsqueeze(0))
        start_from(kit, tmp_path / "kit" / "adaptor.pt")
        ours = kit.speech_projector.utterance_logits(kit.speech_encoder.encode(audio).unsqueeze(0))
        theirs = model.speech_projector.utterance_logits(model.speech_encoder.encode(audio).unsqueeze(0))
    torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=2e-2)
    assert not torch.allclose(fresh, theirs, atol=2e-2, rtol=2e-2)  # a fresh adaptor until the kit's is loaded
    bad = torch.load(tmp_path / "kit" / "adaptor.pt")
    bad.pop(sorted(bad)[0])
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="Missing"):
        start_from(kit, tmp_path / "bad.pt")


def test_pack_audio_packs_sets_as_training_takes_them_into_parts_of_a_size(tmp_path, monkeypatch):
    """`evals.pack_audio` with two sets: their training items as `omni train adaptor --data A
    --data B` takes them (B's item whose text A holds out is left out) and the held-out items,
    each once, in parts of at most --part-mb, read back by the GPU script as the same audio."""
    import io
    import json
    import sys

    import soundfile as sf

    from evals import pack_audio
    from evals.gpu_stage1 import read_packed

    rng = np.random.default_rng(0)
    texts = {"A": [("a1", "Why is the sky blue?", "heldout"), ("a2", "How do birds fly?", "train")],
             "B": [("b1", "Why is the sky blue?", "train"), ("b2", "What is rain?", "train"), ("a2", "How do birds fly?", "train")]}
    audio = {}
    for name, rows in texts.items():
        (tmp_path / name / "audio").mkdir(parents=True)
        lines = []
        for key, text, split in rows:
            wave = (0.3 * np.sin(np.arange(16000 * 2) * (0.05 + 0.01 * len(audio))) + rng.normal(0, 0.01, 32000)).astype(np.float32)
            audio.setdefault(key, wave)
            sf.write(tmp_path / name / "audio" / f"{key}.wav", audio[key], 16000)
            lines.append(json.dumps({"id": key, "instruction": text, "audio": f"audio/{key}.wav", "split": split, "voice": "v"}))
        (tmp_path / name / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    one = len(pack_audio._encode(str(tmp_path / "A" / "audio" / "a1.wav")))
    monkeypatch.setattr(sys, "argv", ["pack_audio", "--data", str(tmp_path / "A"), "--data", str(tmp_path / "B"),
                                      "--out", str(tmp_path / "out"), "--part-mb", str(1.5 * one / 2**20), "--workers", "1"])
    pack_audio.main()
    rows, blobs = read_packed(tmp_path / "out")
    assert [(r["id"], r["split"]) for r in rows.values()] == [("a2", "train"), ("b2", "train"), ("a1", "heldout")]
    assert set(blobs) == set(rows) and len(list((tmp_path / "out").glob("p*"))) == 3  # one item a part at this size
    for key, blob in blobs.items():
        back, sr = sf.read(io.BytesIO(blob), dtype="float32")
        assert sr == 16000 and abs(len(back) - len(audio[key])) < 1000
        assert np.corrcoef(back[: len(audio[key])][2000:30000], audio[key][2000:30000])[0, 1] > 0.8  # its own audio


def test_e2e_beam_overrides_how_the_model_hears(ctc_omni, tiny_e2e_parts, tmp_path):
    """--e2e-beam reaches the model through the pipeline and the e2e transcriber; a model whose
    adaptor is not ctc refuses it; transcribe takes it only with the e2e backend."""
    from typer.testing import CliRunner

    from omni_cli.asr import load_asr
    from omni_cli.audio import load_audio
    from omni_cli.cli import app
    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.errors import ConfigError
    from omni_cli.llm import GenerationOptions

    pipeline = load_e2e_pipeline(str(ctc_omni), None, E2EOptions(omega=5, generation=GenerationOptions(max_new_tokens=4), beam=3))
    assert pipeline.model.speech_projector.config.beam == 3 and pipeline.model.config.projector.beam == 3
    assert isinstance(pipeline.respond(load_audio(EXAMPLE_QUESTION)).text, str)
    assert load_asr(str(ctc_omni), "e2e", e2e_beam=2).model.speech_projector.config.beam == 2
    assert load_asr(str(ctc_omni), "e2e").model.speech_projector.config.beam == 1  # the model's own
    with pytest.raises(ConfigError, match="ctc adaptor"):
        load_e2e_pipeline(str(tiny_e2e_parts["omni"]), None, E2EOptions(beam=2))
    bad = CliRunner().invoke(app, ["transcribe", str(EXAMPLE_QUESTION), "--e2e-beam", "2"])
    assert bad.exit_code != 0 and "--asr-backend e2e" in bad.output


def test_warm_up_runs_the_llm_choice_of_a_beam(ctc_omni):
    """Quiet noise is heard as nothing, so the warm-up runs the LLM's choice among hypotheses itself."""
    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.llm import GenerationOptions

    pipeline = load_e2e_pipeline(str(ctc_omni), None, E2EOptions(omega=5, generation=GenerationOptions(max_new_tokens=3), beam=4))
    model = pipeline.model
    model.speech_projector.config = dataclasses.replace(model.speech_projector.config, lm_weight=0.3)
    scored = []
    plausibility = model.plausibility
    model.plausibility = lambda hyps: scored.append(len(hyps)) or plausibility(hyps)
    model.warm_hearing()
    assert scored == [4]
    warmed = []
    warm_hearing = model.warm_hearing
    model.warm_hearing = lambda: warmed.append(1) or warm_hearing()
    pipeline.warm_up()
    assert warmed == [1] and scored[1] == 4


def test_answering_from_the_cache_hearing_kept_is_answering_from_scratch(ctc_omni):
    """The answer read from the KV cache the LLM's choice kept (the prompt as token ids) has the
    tokens and hidden states of the same prompt computed afresh from embeddings."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.llm import GenerationOptions

    model = load_omni(ctc_omni)
    model.set_hearing("test", beam=3, lm_weight=0.3)
    options = GenerationOptions(max_new_tokens=6)
    audio = load_audio(EXAMPLE_QUESTION)
    features, heard = model.hear(audio)
    assert heard and model._embedded_ids(features, heard) is not None
    calls = []
    hook = model.llm.model.register_forward_pre_hook(lambda m, a, k: calls.append(k.get("input_ids")), with_kwargs=True)
    kept = list(model.stream_features(features, options, heard=heard))
    hook.remove()
    before, after = model.prompt_ids()
    assert calls[0].shape[1] == len(after) - 1  # the prompt and what was heard came from the cache: one pass over the rest
    model.llm.forget()
    afresh = list(model.stream_features(features, options))
    assert [s.token_id for s in kept] == [s.token_id for s in afresh]
    assert all(torch.allclose(a.hidden, b.hidden, atol=1e-4) for a, b in zip(kept, afresh))
    assert model._embedded_ids(features[:-1], heard) is None and model._embedded_ids(features, heard + " extra") is None


def test_a_speech_margin_hears_only_the_speech_found_once(ctc_omni, tmp_path, monkeypatch):
    """With `speech_margin` (export --speech-margin) the encoder hears the speech and the margin
    only; the pipeline's silence check finds the spans once for both; --whole-input drops it."""
    from typer.testing import CliRunner

    import omni_cli.vad as vad
    from omni_cli.audio import SAMPLE_RATE, load_audio
    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.errors import ConfigError
    from omni_cli.llm import GenerationOptions

    out = tmp_path / "trimmed"
    result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(out), "--speech-margin", "0.25"])
    assert result.exit_code == 0, result.output
    assert load_omni(out).config.encoder.speech_margin == 0.25 and load_omni(ctc_omni).config.encoder.speech_margin is None
    both = CliRunner().invoke(app, ["train", "export", str(out), str(tmp_path / "x"), "--speech-margin", "0.5", "--whole-input"])
    assert both.exit_code != 0 and "not both" in both.output
    assert CliRunner().invoke(app, ["train", "export", str(out), str(tmp_path / "w"), "--whole-input"]).exit_code == 0
    assert load_omni(tmp_path / "w").config.encoder.speech_margin is None
    with pytest.raises(ConfigError, match="speech_margin"):
        dataclasses.replace(load_omni(out).config.encoder, speech_margin=-1.0)

    speech = load_audio(EXAMPLE_QUESTION)
    padded = np.concatenate([np.zeros(2 * SAMPLE_RATE, np.float32), speech, np.zeros(2 * SAMPLE_RATE, np.float32)])
    pipeline = load_e2e_pipeline(str(out), None, E2EOptions(omega=5, generation=GenerationOptions(max_new_tokens=2)))
    heard_lengths, vad_runs = [], []
    encode = pipeline.model.speech_encoder.encode
    pipeline.model.speech_encoder.encode = lambda a: heard_lengths.append(len(a)) or encode(a)
    original = vad.speech_segments
    monkeypatch.setattr(vad, "speech_segments", lambda *a, **k: vad_runs.append(1) or original(*a, **k))
    pipeline.respond(padded)
    assert len(vad_runs) == 1 and len(speech) * 0.8 < heard_lengths[0] < len(speech) + 0.5 * SAMPLE_RATE
    pipeline.model.hear(padded)  # alone, it finds the speech itself
    assert heard_lengths[1] == heard_lengths[0]


def test_long_speech_is_heard_in_windows_each_kept_in_its_middle(ctc_omni):
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.speech_projector import ctc_prefix_beams
    from omni_cli.errors import ConfigError

    model = load_omni(ctc_omni)
    proj = model.speech_projector
    torch.manual_seed(6)
    x = torch.randn(1, 4 * 250 + 3, 64) * 5  # 250 positions of k = 4 frames (and 3 frames over)
    with torch.no_grad():
        whole = proj.logits(x)[0]
        assert torch.equal(proj.utterance_logits(x), whole)  # no window: all at once, as before
        model.set_hearing("--window", window=100, window_context=20)
        got = proj.utterance_logits(x)
        assert torch.equal(proj.utterance_logits(x[:, : 4 * 100]), proj.logits(x[:, : 4 * 100])[0])  # short: unchanged
        # windows [0, 100) gives 0-79, [60, 160) gives 80-139, [120, 220) 140-199, [150, 250) 200-249
        expect = torch.cat([proj.logits(x[:, :400])[0, :80], proj.logits(x[:, 240:640])[0, 20:80],
                            proj.logits(x[:, 480:880])[0, 20:80], proj.logits(x[:, 600:1000])[0, 50:]])
        torch.testing.assert_close(got, expect)
        assert got.shape == whole.shape and not torch.allclose(got, whole, atol=1e-3)  # attention sees less
        heard = proj.read(x)[1]  # the greedy reading takes the windows too
        assert heard == model.llm.tokenizer.decode(proj._collapsed(got.argmax(-1).tolist())).strip()
        ids = proj.token_ids.tolist()  # and so does the beam search
        assert [h for h, _ in proj.hypotheses(x, 4)] == [[ids[c] for c in h] for h, _ in ctc_prefix_beams(got.float().log_softmax(-1), proj.blank, 4)]
    with pytest.raises(ConfigError, match="window"):
        model.set_hearing("--window", window=40, window_context=20)


def test_ctc_logprobs_sum_every_alignment_and_rule_out_what_cannot_fit():
    """Two frames, each 0.4 'a' and 0.6 blank: 'a' has three alignments (0.64), nothing one
    (0.36), 'aa' none (two a's need a blank between: three frames)."""
    import math

    from omni_cli.e2e.speech_projector import ctc_logprobs, ctc_prefix_beams

    a, blank = 0, 2
    two = torch.tensor([[0.4, 1e-9, 0.6]] * 2).log()
    got = ctc_logprobs(two, [[a], [], [a, a]], blank)
    assert math.isclose(math.exp(got[0]), 0.64, rel_tol=1e-4) and math.isclose(math.exp(got[1]), 0.36, rel_tol=1e-4)
    assert got[2] == -math.inf
    logp = torch.randn(6, 3).log_softmax(-1)  # a search too wide to prune anything gives these sums too
    found = ctc_prefix_beams(logp, blank, width=1000)[:8]
    assert ctc_logprobs(logp, [h for h, _ in found], blank) == pytest.approx([s for _, s in found], abs=1e-4)


def test_hearing_at_several_speeds_pools_the_hypotheses_of_every_copy(ctc_omni, tmp_path):
    """`--speeds`: the hypotheses of the speech played at each speed are pooled, each scored by
    its CTC log-probability averaged over the copies; a copy identical to the speech only rescores
    the search's hypotheses exactly; the setting travels with the model; a bad list is one clear error."""
    from typer.testing import CliRunner

    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.speech_projector import ctc_logprobs

    out = tmp_path / "speeds"
    result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(out), "--beam", "4", "--speeds", "0.9,1.1"])
    assert result.exit_code == 0, result.stderr
    model = load_omni(out)
    proj = model.speech_projector
    assert proj.config.speeds == (0.9, 1.1) and model.config.projector.speeds == (0.9, 1.1)
    audio = np.random.default_rng(2).standard_normal(32000).astype(np.float32) * 0.1
    with torch.no_grad():
        x = model.speech_encoder.encode(audio).unsqueeze(0)
        copies = model._played_at(audio, proj.config.speeds, x.dtype)
        assert x.shape[1] == 100 and [c.shape[1] for c in copies] == [111, 90]  # 2 s played as 2.22 s and 1.82 s
        once = proj.hypotheses(x, 4)
        same = proj.hypotheses(x, 4, also=[x])
        pooled = proj.hypotheses(x, 4, also=copies)
        logps = [proj.utterance_logits(s).float().log_softmax(-1) for s in (x, *copies)]
    # the same hypotheses, each scored by all of its alignments (the search's pruned score is at most that)
    assert sorted(h for h, _ in same) == sorted(h for h, _ in once)
    assert all(dict((tuple(h), s) for h, s in same)[tuple(h)] >= s - 1e-4 for h, s in once)
    index = {t: c for c, t in enumerate(proj.token_ids.tolist())}
    for ids, score in pooled:
        classes = [index[t] for t in ids]
        mean = sum(ctc_logprobs(lp, [classes], proj.blank)[0] for lp in logps) / 3
        assert score == pytest.approx(mean, abs=1e-3)
    assert [s for _, s in pooled] == sorted((s for _, s in pooled), reverse=True)
    with torch.no_grad():
        assert isinstance(model.hear(audio)[1], str)
    again = tmp_path / "once"
    assert CliRunner().invoke(app, ["train", "export", str(out), str(again), "--speeds", "none"]).exit_code == 0
    assert load_omni(again).speech_projector.config.speeds == ()
    for bad in (["--beam", "4", "--speeds", "0.9,fast"], ["--beam", "4", "--speeds", "0.9,3"], ["--beam", "1", "--speeds", "0.9"]):
        result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(tmp_path / "x"), *bad])
        assert result.exit_code == 2 and "Traceback" not in result.stderr and "speeds" in result.stderr, bad


def test_a_blank_penalty_is_taken_from_every_frames_blank_before_the_search(ctc_omni, tmp_path):
    """`--blank-penalty B`: the search scores each hypothesis on log-probabilities whose blank is
    B lower on every frame (each hypothesis's exact score, read through a copy identical to the
    speech, is its CTC log-probability on them); the setting travels with the model, and a search
    without it scores on the log-probabilities as they are."""
    from typer.testing import CliRunner

    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.speech_projector import ctc_logprobs

    out = tmp_path / "penalized"
    result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(out), "--beam", "4", "--blank-penalty", "1.5"])
    assert result.exit_code == 0, result.stderr
    model = load_omni(out)
    proj = model.speech_projector
    assert proj.config.blank_penalty == 1.5 == model.config.projector.blank_penalty
    audio = np.random.default_rng(3).standard_normal(32000).astype(np.float32) * 0.1
    index = {t: c for c, t in enumerate(proj.token_ids.tolist())}
    with torch.no_grad():
        x = model.speech_encoder.encode(audio).unsqueeze(0)
        logp = proj.utterance_logits(x).float().log_softmax(-1)
        exact = proj.hypotheses(x, 4, also=[x])
        proj.config = dataclasses.replace(proj.config, blank_penalty=0.0)
        plain = proj.hypotheses(x, 4, also=[x])
    penalized = logp.clone()
    penalized[:, proj.blank] -= 1.5
    for found, table in ((exact, penalized), (plain, logp)):
        for ids, score in found:
            assert score == pytest.approx(ctc_logprobs(table, [[index[t] for t in ids]], proj.blank)[0], abs=1e-3)
    # never a model that hears or speaks garbage ("Tellelelll me a about to the moonoo.")
    for bad, named in ((["--blank-penalty", "nan"], "blank_penalty"), (["--length-bonus", "inf"], "length_bonus"),
                       (["--unit-beam", "4", "--unit-length-bonus", "nan"], "length_bonus")):
        result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(tmp_path / "bad"), "--beam", "4", *bad])
        assert result.exit_code == 2 and "Traceback" not in result.stderr and named in result.stderr, bad
        assert not (tmp_path / "bad").exists()


def test_a_ctc_adaptor_moves_onto_another_whisper(ctc_omni, tmp_path):
    """`omni train adaptor --from M --encoder W`: the adaptor's first layer fitted anew, so that
    on the new encoder's outputs it gives what it gave on the old one's; every other weight kept."""
    import json

    from whisper.model import ModelDimensions, Whisper

    from omni_cli.e2e.checkpoint import load_omni, read_omni_config
    from omni_cli.e2e.train import TrainOptions, encode_rows, start_stage, stitch_encoder

    torch.manual_seed(1)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=48, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=8, n_text_state=16, n_text_head=2, n_text_layer=1)
    other = tmp_path / "other-whisper.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, other)
    (tmp_path / "set" / "audio").mkdir(parents=True)
    rows = []
    for i, seconds in enumerate((1.0, 1.5)):
        path = tmp_path / "set" / "audio" / f"{i}.wav"
        shutil.copy(EXAMPLE_QUESTION, path)
        rows.append({"id": str(i), "audio": str(path), "instruction": "The moon is bright.", "split": "train"})
    model = load_omni(ctc_omni)
    old_proj = model.speech_projector
    kept = {k: v.clone() for k, v in old_proj.state_dict().items() if not k.startswith("linear1.")}
    old = encode_rows(model, rows)
    stitch_encoder(model, str(other), rows, ridge=1e-9)
    assert model.config.encoder.width == 48 and model.config.projector.encoder_width == 48
    assert model.config.encoder_source == str(other) and model.speech_encoder.whisper.conv1.out_channels == 48
    moved = model.speech_projector
    assert moved.linear1.in_features == 48 * moved.k
    assert all(torch.equal(v, kept[k]) for k, v in moved.state_dict().items() if not k.startswith("linear1."))
    new = encode_rows(model, rows)
    with torch.no_grad():
        for a, b in zip(old, new):
            m = min(len(a), len(b)) // 4 * 4
            want = old_proj.logits(a[None, :m].float())
            got = moved.logits(b[None, :m].float())
            assert (got - want).abs().max() < 1e-2 * want.abs().max()
    # from the CLI's stage: moved, then trained, and saved with the new encoder
    (tmp_path / "set" / "manifest.jsonl").write_text(
        "".join(json.dumps({**r, "audio": f"audio/{i}.wav"}) + "\n" for i, r in enumerate(rows)))
    _, steps = start_stage("adaptor", tmp_path / "set", tmp_path / "run", start=ctc_omni, encoder=str(other),
                           options=TrainOptions(steps=1, batch_size=2), device=TEST_DEVICE)
    list(steps)
    saved = read_omni_config(tmp_path / "run" / "model")
    assert saved.encoder_source == str(other) and saved.projector.encoder_width == 48


def test_a_partner_hears_beside_the_adaptor_and_travels_with_the_model(ctc_omni, tmp_path):
    """`omni train export --partner`: a second encoder + ctc adaptor whose CTC log-probabilities
    are blended with the model's own before its search, classes matched by LLM token (the
    model's classes the partner lacks keep the model's own log-probability); saved with the model
    (`partner_projector.*`), kept by a later export, dropped by `--partner none`; a bad weight, a
    weight without a partner or a missing partner is one clear error. `evals.adaptor_blend` hears through it."""
    from typer.testing import CliRunner

    from evals.adaptor_blend import blend
    from omni_cli.audio import load_audio
    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni, save_omni

    audio = load_audio(EXAMPLE_QUESTION)
    other = load_omni(ctc_omni)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in other.speech_projector.parameters():
            p.add_(0.5 * torch.randn_like(p))
    tok = other.llm.tokenizer
    other.speech_projector.extend([int(tok.eos_token_id)])  # a class the model lacks: left out
    other.config = dataclasses.replace(other.config, projector=other.speech_projector.config)
    partner_dir = save_omni(other, tmp_path / "other")
    model = load_omni(ctc_omni)
    lacks = next(t for t in range(len(tok)) if t not in set(other.speech_projector.token_ids.tolist()))
    model.speech_projector.extend([lacks])  # a class the partner lacks
    model.config = dataclasses.replace(model.config, projector=model.speech_projector.config)
    model.hear_with(4)
    alone = model.listen(audio)[1]
    model.set_partner(other.speech_encoder, other.speech_projector, other.config.encoder_source, 0.3)
    n = model.speech_projector.config.vocab
    with torch.no_grad():
        states = model.speech_encoder.encode(audio).unsqueeze(0)
        own = model.speech_projector.utterance_logits(states).float().log_softmax(-1)
        raw = other.speech_projector.utterance_logits(other.speech_encoder.encode(audio).unsqueeze(0)).float()
        assert raw.shape[-1] == n + 1  # its extra class and the blank; ours has one it lacks
        theirs = torch.cat([raw[:, : n - 1], raw[:, -1:]], -1).log_softmax(-1)
        want = 0.7 * own.clone()
        want[:, : n - 1] += 0.3 * theirs[:, :-1]
        want[:, n - 1] += 0.3 * own[:, n - 1]
        want[:, n] += 0.3 * theirs[:, -1]
        assert torch.allclose(model._partner_mix(audio)(own), want, atol=1e-5)
        # classes matched by token, not by position: the partner's head in another order hears the same
        order = torch.randperm(other.speech_projector.config.vocab)
        shuffled = load_omni(partner_dir)
        sp = shuffled.speech_projector
        sp.token_ids.copy_(sp.token_ids[order])
        sp.bias.data[:-1] = sp.bias.data[:-1][order]
        model.set_partner(shuffled.speech_encoder, sp, shuffled.config.encoder_source, 0.3)
        assert torch.allclose(model._partner_mix(audio)(own), want, atol=1e-5)
        blended = model.listen(audio)[1]
        greedy_mix = model.speech_projector.read(states, model._partner_mix(audio))[1]
    assert model.config.partner.weight == 0.3 and model.config.partner.projector.beam == 1
    saved = save_omni(model, tmp_path / "with-partner")
    again = load_omni(saved)
    assert again.config.partner == model.config.partner
    with torch.no_grad():
        assert again.listen(audio)[1] == blended
        again.hear_with(1)
        assert again.listen(audio)[1] == greedy_mix  # greedy reading hears the blend too
    # evals.adaptor_blend: weight 1 hears as the model alone
    blend(again, load_omni(partner_dir), 1.0)
    assert again.config.partner is None and again.partner_projector is None
    # the CLI
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(out), "--partner", str(partner_dir),
                                      "--partner-weight", "0.4"])
    assert result.exit_code == 0, result.stderr
    assert load_omni(out).config.partner.weight == 0.4
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    assert CliRunner().invoke(app, ["train", "export", str(out), str(kept), "--partner-weight", "0.2"]).exit_code == 0
    assert load_omni(kept).config.partner.weight == 0.2 and load_omni(kept).partner_projector is not None
    assert CliRunner().invoke(app, ["train", "export", str(out), str(dropped), "--partner", "none"]).exit_code == 0
    assert load_omni(dropped).config.partner is None
    for bad, code in ((["--partner", str(partner_dir), "--partner-weight", "1"], 2), (["--partner-weight", "0.5"], 2),
                      (["--partner", str(tmp_path / "missing")], 3)):  # 3: a model not found
        result = CliRunner().invoke(app, ["train", "export", str(ctc_omni), str(tmp_path / "x"), *bad])
        assert result.exit_code == code and "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, bad


def test_audio_samples_reads_the_length_a_decode_gives(tmp_path):
    """Training from audio reads each batch's files as it comes; the lengths it batches by come
    from the files' headers, and are the lengths decoding gives at 16 kHz (another rate too)."""
    import numpy as np
    import soundfile

    from omni_cli.audio import load_audio
    from omni_cli.e2e.train import audio_samples

    assert audio_samples(EXAMPLE_QUESTION) == len(load_audio(EXAMPLE_QUESTION))
    tone = np.sin(np.arange(22050 * 3 // 2) / 7).astype(np.float32) * 0.3
    soundfile.write(tmp_path / "a.wav", tone, 22050)
    soundfile.write(tmp_path / "a.flac", tone, 22050)
    for path in (tmp_path / "a.wav", tmp_path / "a.flac"):
        assert audio_samples(path) == len(load_audio(path)) == 24000


def test_reverb_option_needs_augment_and_a_range(tmp_path):
    from typer.testing import CliRunner

    from omni_cli.cli import app

    runner = CliRunner()
    for args, message in ((["--reverb", "0.2,0.8"], "--reverb is an augmentation: add --augment"),
                          (["--augment", "--reverb", "0.8"], "--reverb takes MIN,MAX"),
                          (["--augment", "--reverb", "0.8,0.2"], "needs 0 <= MIN <= MAX")):
        result = runner.invoke(app, ["train", "adaptor", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()
