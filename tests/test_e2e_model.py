"""The end-to-end model as a whole: save -> load, the published checkpoint format, and the
streaming pipeline's events."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from omni_cli.e2e.checkpoint import CheckpointError, load_omni, load_published
from omni_cli.e2e.pipeline import E2EOptions, E2EPipeline
from omni_cli.events import AudioChunk, Done, SpeechEnded, TextDelta, UnitChunk
from omni_cli.llm import GenerationOptions

OPTS = GenerationOptions(max_new_tokens=12)


def units_and_text(model, audio):
    steps = list(model.stream(audio, OPTS))
    text = "".join(s.text for s in steps)
    hidden = torch.stack([s.hidden for s in steps])
    return text, model.speech_generator.predict(hidden), steps


def test_save_then_load_gives_the_same_outputs(tiny_e2e_parts, question_audio):
    model = tiny_e2e_parts["model"]
    loaded = load_omni(tiny_e2e_parts["omni"])
    assert loaded.config == model.config
    text_a, units_a, _ = units_and_text(model, question_audio)
    text_b, units_b, _ = units_and_text(loaded, question_audio)
    assert text_a == text_b and units_a == units_b
    size = sum(p.stat().st_size for p in tiny_e2e_parts["omni"].iterdir())
    assert size < 1_000_000  # adaptor + decoder only; encoder and LLM are referred to


def test_own_format_reports_bad_keys(tiny_e2e_parts, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_e2e_parts["omni"], bad)
    state = load_file(str(bad / "model.safetensors"))
    state.pop("speech_projector.linear2.bias")
    state["speech_generator.extra.weight"] = torch.zeros(1)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"linear2\.bias|extra\.weight"):
        load_omni(bad)


def test_stream_yields_the_state_that_emitted_each_token(tiny_e2e_parts, question_audio):
    """The first state is the last prompt position's; each later one is the previous token's step."""
    model = tiny_e2e_parts["model"]
    _, _, steps = units_and_text(model, question_audio)
    features = model.speech_features(question_audio)
    embeds = model.prompt_embeds(features)
    ids = torch.tensor([[s.token_id for s in steps[:-1]]])
    full = torch.cat([embeds, model.llm.model.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        out = model.llm.model(inputs_embeds=full, output_hidden_states=True)
    start = embeds.shape[1] - 1
    torch.testing.assert_close(torch.stack([s.hidden for s in steps]), out.hidden_states[-1][0, start : start + len(steps)],
                               atol=1e-4, rtol=1e-4)


def test_prompt_places_speech_between_the_chat_turns(tiny_e2e_parts):
    model = tiny_e2e_parts["model"]
    features = torch.randn(7, 16)
    embeds = model.prompt_embeds(features)
    tok = model.llm.tokenizer
    text = tok.apply_chat_template([{"role": "system", "content": model.config.prompt.system},
                                    {"role": "user", "content": "<speech>\n" + model.config.prompt.instruction}],
                                   tokenize=False, add_generation_prompt=True)
    before, after = text.split("<speech>")
    n_before = len(tok(before, add_special_tokens=False).input_ids)
    n_after = len(tok(after, add_special_tokens=False).input_ids)
    assert embeds.shape == (1, n_before + 7 + n_after, 16)
    torch.testing.assert_close(embeds[0, n_before : n_before + 7], features)


# -- the published checkpoint format -------------------------------------------------------


@pytest.fixture(scope="module")
def published_replica(tmp_path_factory, tiny_e2e_parts):
    """A tiny model saved under exactly the published key names and config fields."""
    from safetensors.torch import save_file

    from tests.conftest import make_tiny_llm

    folder = tmp_path_factory.mktemp("omni_published")
    model = tiny_e2e_parts["model"]
    llm = make_tiny_llm(seed=5)
    state = {k: v for k, v in llm.model.state_dict().items()}
    state |= {f"model.speech_encoder.{k}": v for k, v in model.speech_encoder.whisper.state_dict().items()}
    state |= {f"model.speech_projector.{k}": v for k, v in model.speech_projector.state_dict().items()}
    state |= {f"speech_generator.{k}": v for k, v in model.speech_generator.state_dict().items()}
    if llm.model.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # tied weights are stored once
    half = len(state) // 2
    keys = sorted(state)
    save_file({k: state[k].contiguous() for k in keys[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: state[k].contiguous() for k in keys[half:]}, str(folder / "model-00002-of-00002.safetensors"))
    config = llm.model.config.to_dict()
    sd = model.config.speech_decoder
    config |= {
        "model_type": "omni_speech2s_llama",
        "architectures": ["OmniSpeech2SLlamaForCausalLM"],
        "speech_encoder": "models/speech_encoder/large-v3.pt",
        "speech_encoder_type": "whisper",
        "speech_encoder_ds_rate": model.config.projector.k,
        "speech_encoder_hidden_size": model.config.encoder.width,
        "speech_projector_type": "linear",
        "speech_generator_type": "ctc",
        "ctc_decoder_config": f"({sd.n_layers},{sd.width},{sd.n_heads},{sd.ffn})",
        "ctc_upsample_factor": sd.upsample,
        "ctc_loss_weight": 1.0,
        "unit_vocab_size": sd.num_units,
        "speech_normalize": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    llm.tokenizer.save_pretrained(folder)
    return folder, state


def test_published_names_load_and_run(published_replica, question_audio):
    folder, state = published_replica
    model = load_published(folder)
    assert model.config.prompt.template == "llama3-omni"
    assert model.config.encoder.padded and model.config.speech_decoder.upsample == 4
    torch.testing.assert_close(model.speech_projector.linear1.weight, state["model.speech_projector.linear1.weight"])
    torch.testing.assert_close(model.speech_generator.layers[1].mlp.gate_proj.weight,
                               state["speech_generator.layers.1.mlp.gate_proj.weight"])
    torch.testing.assert_close(model.speech_encoder.whisper.blocks[0].attn.query.weight,
                               state["model.speech_encoder.blocks.0.attn.query.weight"])
    torch.testing.assert_close(model.llm.model.model.layers[0].self_attn.q_proj.weight, state["model.layers.0.self_attn.q_proj.weight"])
    text, units, steps = units_and_text(model, question_audio)
    assert steps and all(0 <= u < 151 for u in units)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_published_load_reports_missing_or_unexpected_keys(published_replica, tmp_path, change):
    import shutil

    from safetensors.torch import load_file, save_file

    folder, _ = published_replica
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    shard = sorted(bad.glob("*.safetensors"))[-1]
    state = load_file(str(shard))
    if change == "missing":
        name = "speech_generator.output_proj.bias"
        state.pop(name)
    else:
        name = "model.speech_projector.linear3.weight"
        state[name] = torch.zeros(2)
    save_file(state, str(shard))
    with pytest.raises(CheckpointError, match=name.split(".", 2)[-1].replace(".", r"\.")):
        load_published(bad)


def test_published_prompt_is_the_published_llama3_string(published_replica):
    model = load_published(published_replica[0])
    tok = model.llm.tokenizer
    features = torch.randn(3, 16)
    embeds = model.prompt_embeds(features)
    before = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + model.config.prompt.system
              + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    after = "\n" + model.config.prompt.instruction + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    n = len(tok(before).input_ids) + 3 + len(tok(after, add_special_tokens=False).input_ids)
    assert embeds.shape[1] == n


# -- the streaming pipeline -----------------------------------------------------------------


class RecordingVocoder:
    """The real Piper unit vocoder, recording what it was asked to vocode."""

    def __init__(self, vocoder):
        self.inner = vocoder
        self.sample_rate, self.num_units = vocoder.sample_rate, vocoder.num_units
        self.boundary_units, self.phrase_units = vocoder.boundary_units, vocoder.phrase_units
        self.calls = []

    def units_to_audio(self, units):
        self.calls.append(list(units))
        return self.inner.units_to_audio(units)


@pytest.fixture(scope="module")
def piper_units():
    from omni_cli.e2e.unit_vocoder import PiperUnitVocoder

    return PiperUnitVocoder()


def test_the_piper_unit_vocoder_says_each_sentence_as_an_utterance_of_its_own(piper_units, monkeypatch):
    """Units of three sentences are vocoded as three utterances (each with the voice's begin and
    end ids), split after each sentence's end mark, as Piper says text; nothing dropped or added."""
    units = piper_units.text_to_units("It is late. Go home! Are you there?")
    calls = []
    real = piper_units.tts.ids_to_audio
    monkeypatch.setattr(piper_units.tts, "ids_to_audio", lambda ids: calls.append(list(ids)) or real(ids))
    audio = piper_units.units_to_audio(units)
    assert len(calls) == 3 and audio.size > 0
    bos, pad, eos = piper_units.bos, piper_units.pad, piper_units.eos
    said = []
    for ids in calls:
        assert ids[:2] == [bos, pad] and ids[-1] == eos and ids[3:-1:2] == [pad] * ((len(ids) - 3) // 2)
        said.append(ids[2:-1:2])
    assert [s[-1] for s in said] == [piper_units.tts.voice.config.phoneme_id_map[p][0] for p in ".!?"]
    assert [u for s in said for u in s] == units


def test_the_vocoder_path_eval_cuts_true_units_as_the_pipeline_does(piper_units):
    """`evals.vocoder_path`'s chunked path: every unit once, in order; the first chunk at least
    the vocoder's first size and ending at a word end, each later one ending at a phrase end."""
    from evals.vocoder_path import chunked_units

    units = piper_units.text_to_units("Well, the weather is fine today, and the sea is calm. Go out, take a walk by the shore,"
                                      " and come home before dark; the roads are icy at night.")
    chunks = chunked_units(units, piper_units)
    assert len(chunks) >= 3 and [u for c in chunks for u in c] == units
    assert len(chunks[0]) >= piper_units.default_first_chunk and chunks[0][-1] in piper_units.boundary_units
    assert all(c[-1] in piper_units.phrase_units for c in chunks[1:-1])


@pytest.mark.parametrize("omega", [3, 10, None])
def test_pipeline_streams_units_and_audio(tiny_e2e_parts, question_audio, piper_units, omega):
    model = tiny_e2e_parts["model"]
    vocoder = RecordingVocoder(piper_units)
    pipe = E2EPipeline(model, vocoder, E2EOptions(omega=omega, generation=OPTS))
    events = list(pipe.run(question_audio))
    assert isinstance(events[0], SpeechEnded) and isinstance(events[-1], Done)
    assert events[-1].transcript is None
    unit_chunks = [e for e in events if isinstance(e, UnitChunk)]
    audio_chunks = [e for e in events if isinstance(e, AudioChunk)]
    # every unit of the full pass is vocoded exactly once, in order
    _, full_units, _ = units_and_text(model, question_audio)
    assert [u for c in unit_chunks for u in c.units] == full_units
    assert vocoder.calls == [list(c.units) for c in unit_chunks]
    if omega is None:
        assert len(unit_chunks) <= 1
    assert events[-1].text == "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    # the streamed audio is exactly the concatenated chunks
    from omni_cli.events import collect

    response = collect(iter(events), pipe.sample_rate)
    if audio_chunks:
        np.testing.assert_array_equal(response.audio, np.concatenate([c.samples for c in audio_chunks]))


def test_pipeline_speaks_a_lookahead_decoders_last_token(tiny_e2e_parts, question_audio, piper_units):
    """A decoder with lookahead holds each token back until the next one: the pipeline flushes
    the last, so the streamed units are still exactly the full pass's."""
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.speech_llm import SpeechLLM

    base = tiny_e2e_parts["model"]
    cfg = dataclasses.replace(base.config.speech_decoder, token_input=True, lookahead=True, sub_positions=True)
    torch.manual_seed(5)
    gen = SpeechGenerator(cfg).eval()
    with torch.no_grad():
        gen.output_proj.bias[gen.blank] = -30.0  # never blank: every token, the last too, says units
    model = SpeechLLM(dataclasses.replace(base.config, speech_decoder=cfg), base.speech_encoder, base.speech_projector, base.llm, gen).eval()
    events = list(E2EPipeline(model, RecordingVocoder(piper_units), E2EOptions(omega=10, generation=OPTS)).run(question_audio))
    steps = list(model.stream(question_audio, OPTS))
    full = gen.predict(torch.stack([s.hidden for s in steps]), torch.stack([model.token_embedding(s.token_id) for s in steps]))
    streamed = [u for e in events if isinstance(e, UnitChunk) for u in e.units]
    assert streamed == full and len(full) >= len(steps)


def test_pipeline_does_not_speak_markdown_or_list_markers(tiny_e2e_parts, question_audio, piper_units, monkeypatch):
    """The LLM writes a list in markdown: its bullets, numbers and marks never reach the speech
    decoder (no voice says "asterisk"), its words and line breaks do, and the units are the full
    pass's over the said tokens alone."""
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.speech_llm import SpeechLLM
    from omni_cli.llm import TokenStep

    base = tiny_e2e_parts["model"]
    cfg = dataclasses.replace(base.config.speech_decoder, token_input=True, lookahead=True, sub_positions=True)
    torch.manual_seed(6)
    gen = SpeechGenerator(cfg).eval()
    with torch.no_grad():
        gen.output_proj.bias[gen.blank] = -30.0  # never blank: every token said has units
    model = SpeechLLM(dataclasses.replace(base.config, speech_decoder=cfg), base.speech_encoder, base.speech_projector, base.llm, gen).eval()
    texts = ["Two", ":", "\n", "1", ".", " **", "Tea", "**", "\n", "*", " Milk", ""]
    torch.manual_seed(7)
    steps = [TokenStep(token_id=10 + i, text=t, hidden=torch.randn(cfg.llm_width), end=i == len(texts) - 1) for i, t in enumerate(texts)]
    monkeypatch.setattr(model, "stream_features", lambda *a, **k: iter(steps))
    events = list(E2EPipeline(model, RecordingVocoder(piper_units), E2EOptions(omega=10, generation=OPTS)).run(question_audio))
    said = [s for s in steps if s.text in ("Two", ":", "\n", "Tea", " Milk", "")]
    full = gen.predict(torch.stack([s.hidden for s in said]), torch.stack([model.token_embedding(s.token_id) for s in said]))
    streamed = [u for e in events if isinstance(e, UnitChunk) for u in e.units]
    assert streamed == full
    assert events[-1].text == "Two:\n1. **Tea**\n* Milk"  # the text answer keeps them


def test_vocoder_unit_count_must_match(tiny_e2e_parts):
    from omni_cli.errors import ConfigError

    class Small:
        sample_rate, num_units = 16000, 10

    with pytest.raises(ConfigError, match="151 units"):
        E2EPipeline(tiny_e2e_parts["model"], Small())


def test_published_model_with_its_unit_hifigan_through_the_cli(published_replica, tmp_path):
    """The published layout end to end: replica checkpoint + fairseq-format unit vocoder, 16 kHz out."""
    import soundfile as sf
    from typer.testing import CliRunner

    from omni_cli.cli import app
    from tests.conftest import EXAMPLE_QUESTION
    from tests.test_unit_hifigan import _config, _legacy_names, _weight_normed_reference, _write

    cfg = _config(num_embeddings=151)
    _write(tmp_path / "vocoder", cfg, _legacy_names(_weight_normed_reference(cfg).state_dict()))
    out = tmp_path / "answer.wav"
    args = ["respond", str(EXAMPLE_QUESTION), "--mode", "e2e", "--e2e-model", str(published_replica[0]),
            "--omega", "4", "--max-new-tokens", "20", "--out", str(out), "--json"]
    missing_vocoder = CliRunner().invoke(app, args)
    assert missing_vocoder.exit_code == 2 and "--vocoder" in missing_vocoder.stderr
    result = CliRunner().invoke(app, args + ["--vocoder", str(tmp_path / "vocoder")])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["sample_rate"] == 16000 and payload["mode"] == "e2e"
    assert payload["metrics"]["audio_s"] > 0 and payload["metrics"]["first_audio_latency_s"] > 0
    assert sf.info(out).samplerate == 16000


def test_e2e_refuses_a_request_longer_than_the_encoder_hears(tiny_e2e_parts, question_audio):
    """The speech encoder's context is 30 s: a longer request is refused out loud, not cut."""
    import numpy as np

    from omni_cli.e2e.load import load_e2e_pipeline
    from omni_cli.e2e.pipeline import E2EOptions
    from omni_cli.errors import InputError

    pipe = load_e2e_pipeline(str(tiny_e2e_parts["omni"]), None, E2EOptions(omega=None, generation=OPTS))
    long = np.tile(question_audio, int(31 * 16000 / len(question_audio)) + 1)
    with pytest.raises(InputError, match="hears at most 30 s"):
        list(pipe.run(long))
