"""End-to-end model components on tiny random configs: encoder modes, adaptor, CTC speech
decoder (incremental == full pass), CTC rules, unit chunking."""

import numpy as np
import pytest
import torch

from omni_cli.e2e.config import EncoderConfig, ProjectorConfig, SpeechDecoderConfig
from omni_cli.e2e.speech_encoder import SpeechEncoder
from omni_cli.e2e.speech_generator import SpeechDecoderStream, SpeechGenerator
from omni_cli.e2e.unit_lm import ctc_collapse
from omni_cli.e2e.speech_projector import SpeechProjector
from omni_cli.e2e.unit_vocoder import UnitChunker
from omni_cli.errors import ConfigError


@pytest.fixture(scope="module")
def whisper_model(tmp_path_factory):
    import whisper

    from tests.conftest import save_tiny_whisper

    return whisper.load_model(str(save_tiny_whisper(tmp_path_factory.mktemp("w") / "w.pt")), device="cpu").eval()


def encoder_from(whisper_model, padded: bool) -> SpeechEncoder:
    d = whisper_model.dims
    enc = SpeechEncoder(EncoderConfig(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, padded=padded))
    enc.whisper.load_state_dict(whisper_model.encoder.state_dict())
    assert all(type(m) is torch.nn.LayerNorm for m in enc.modules() if isinstance(m, torch.nn.LayerNorm))
    return enc.eval()


def test_padded_encoder_equals_whisper_on_30_seconds(whisper_model):
    enc = encoder_from(whisper_model, padded=True)
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    mel, n_frames = enc.mel(audio)
    assert mel.shape == (80, 3000) and n_frames == 300
    with torch.no_grad():
        torch.testing.assert_close(enc(mel[None]), whisper_model.encoder(mel[None]), atol=1e-5, rtol=1e-5)
        assert enc.encode(audio).shape == (1500, 64)


def test_real_length_encoder_slices_positions(whisper_model):
    real = encoder_from(whisper_model, padded=False)
    padded = encoder_from(whisper_model, padded=True)
    audio = np.random.default_rng(1).normal(0, 0.1, 16000 * 2).astype(np.float32)
    with torch.no_grad():
        assert real.encode(audio).shape == (100, 64)  # 2 s -> 200 mel frames -> 100 states
        full = np.random.default_rng(2).normal(0, 0.1, 16000 * 30).astype(np.float32)
        torch.testing.assert_close(real.encode(full), padded.encode(full), atol=1e-5, rtol=1e-5)


def test_projector_concatenates_k_frames_and_drops_the_rest():
    proj = SpeechProjector(ProjectorConfig(k=5, encoder_width=4, hidden=8, llm_width=6))
    x = torch.randn(2, 23, 4)
    y = proj(x)
    assert y.shape == (2, 4, 6)
    manual = proj.linear2(torch.relu(proj.linear1(x[:, :20].reshape(2, 4, 20))))
    torch.testing.assert_close(y, manual)
    # frame order: output 1 sees frames 5..9 concatenated in order
    torch.testing.assert_close(proj.linear1(torch.cat(list(x[0, 5:10]))), proj.linear1(x[:, :20].reshape(2, 4, 20))[0, 1])


@pytest.mark.parametrize("blank_previous", [None, 3])
def test_ctc_collapse_rules(blank_previous):
    blank = 9
    assert ctc_collapse([1, 1, 9, 1, 2, 2, 9, 9, 3], blank) == [1, 1, 2, 3]
    assert ctc_collapse([9, 9, 9], blank) == []
    # a repeat across a chunk boundary is collapsed, a blank in between separates
    assert ctc_collapse([3, 3, 4], blank, previous=3) == [4]
    assert ctc_collapse([9, 3], blank, previous=3) == [3]


def decoder(seed=0, upsample=4, sub_positions=False):
    torch.manual_seed(seed)
    gen = SpeechGenerator(SpeechDecoderConfig(llm_width=16, width=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn=64,
                                              num_units=7, upsample=upsample, sub_positions=sub_positions)).eval()
    if sub_positions:
        torch.nn.init.normal_(gen.sub_position, std=3.0)
    return gen


@pytest.mark.parametrize("length,sub_positions", [(1, False), (5, False), (37, False), (1, True), (37, True)])
def test_incremental_decoding_equals_the_full_pass(length, sub_positions):
    gen = decoder(seed=length, sub_positions=sub_positions)
    hidden = torch.randn(length, 16) * 3
    stream = SpeechDecoderStream(gen)
    units = [u for h in hidden for u in stream.push(h)]
    assert units == gen.predict(hidden)
    # and the logits themselves, position by position
    with torch.no_grad():
        full = gen.logits(gen.project(hidden[None]))[0]
        s = SpeechDecoderStream(gen)
        parts = []
        for h in hidden:
            up = gen.project(h.reshape(1, 1, -1))
            parts.append(gen.logits(up, past=s.past, cache=s.cache)[0])
            s.past += up.shape[1]
    torch.testing.assert_close(torch.cat(parts), full, atol=1e-5, rtol=1e-4)


def lookahead_decoder(seed=0):
    torch.manual_seed(seed)
    gen = SpeechGenerator(SpeechDecoderConfig(llm_width=16, width=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn=64, num_units=7,
                                              upsample=4, sub_positions=True, token_input=True, lookahead=True)).eval()
    torch.nn.init.normal_(gen.next_proj.weight, std=1.0)
    return gen


@pytest.mark.parametrize("length", [1, 2, 23])
def test_lookahead_decoder_streams_exactly_one_token_behind(length):
    """Each token's units wait for the next token (the last one's for flush), and the stream
    equals the full pass, in which the last token sees zeros for its next."""
    gen = lookahead_decoder(seed=length)
    hidden, tokens = torch.randn(length, 16) * 3, torch.randn(length, 16) * 3
    stream = SpeechDecoderStream(gen)
    pushed = [stream.push(h, t) for h, t in zip(hidden, tokens)]
    assert pushed[0] == []  # the first token is held back until the second arrives
    units = [u for part in pushed for u in part] + stream.flush()
    assert units == gen.predict(hidden, tokens) and stream.flush() == []
    if length > 1:  # a token's logits change with the token after it
        other = tokens.clone()
        other[1] = torch.randn(16) * 3
        with torch.no_grad():
            a = gen.logits(gen.project(hidden[None], tokens[None], gen.following(tokens[None])))[0]
            b = gen.logits(gen.project(hidden[None], other[None], gen.following(other[None])))[0]
        assert not torch.allclose(a[:4], b[:4])


def test_lookahead_needs_the_token_input_and_keeps_padding_out():
    with pytest.raises(ConfigError, match="token_input"):
        SpeechGenerator(SpeechDecoderConfig(llm_width=16, width=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn=64, num_units=7,
                                            upsample=4, lookahead=True))
    gen = lookahead_decoder()
    hidden, tokens = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    targets = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 1, 0, 0]])
    with torch.no_grad():
        both = gen.ctc_loss(hidden, torch.tensor([6, 4]), targets, torch.tensor([5, 3]), tokens)
        alone = [gen.ctc_loss(hidden[i : i + 1, :n], torch.tensor([n]), targets[i : i + 1, :m], torch.tensor([m]), tokens[i : i + 1, :n])
                 for i, (n, m) in enumerate([(6, 5), (4, 3)])]
    # the loss is a sum over items / total target length: the padded item's last token saw zeros, not padding
    torch.testing.assert_close(both, (alone[0] * 5 + alone[1] * 3) / 8)


def test_sub_positions_let_the_first_tokens_copies_say_different_units():
    """Without them the lambda copies of the first state see identical inputs at every position,
    so all predict the same unit (a word keeps one phoneme); with them the copies differ."""
    h = torch.randn(1, 1, 16)
    for sub_positions, distinct in ((False, 1), (True, 4)):
        gen = decoder(sub_positions=sub_positions)
        with torch.no_grad():
            logits = gen.logits(gen.project(h))[0]
        assert len({tuple(row.round(decimals=4).tolist()) for row in logits}) == distinct


def test_decoder_is_causal():
    """Changing a later hidden state never changes earlier units' logits."""
    gen = decoder()
    h = torch.randn(6, 16)
    h2 = h.clone()
    h2[4:] = torch.randn(2, 16)
    with torch.no_grad():
        a = gen.logits(gen.project(h[None]))[0]
        b = gen.logits(gen.project(h2[None]))[0]
    torch.testing.assert_close(a[: 4 * 4], b[: 4 * 4])
    assert not torch.allclose(a[4 * 4 :], b[4 * 4 :])


def test_upsampling_repeats_each_state_lambda_times():
    gen = decoder(upsample=3)
    assert gen.upsample(torch.tensor([[[1.0], [2.0]]])).flatten().tolist() == [1, 1, 1, 2, 2, 2]


def test_ctc_loss_goes_down_when_training_the_decoder():
    gen = decoder()
    gen.train()
    hidden = torch.randn(2, 6, 16)
    targets = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 1, 0, 0]])
    opt = torch.optim.Adam(gen.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = gen.ctc_loss(hidden, torch.tensor([6, 4]), targets, torch.tensor([5, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unit_chunker_hands_out_every_unit_once_at_boundaries():
    units = [5, 6, 3, 7, 8, 9, 3, 4, 4, 5, 3, 6, 7]
    chunker = UnitChunker(4, boundaries=frozenset({3}))
    chunks = [c for u in units for c in chunker.push([u])] + list(chunker.flush())
    assert sum(chunks, []) == units
    assert all(c[-1] == 3 for c in chunks[:-1])
    plain = UnitChunker(4)
    chunks = [c for u in units for c in plain.push([u])] + list(plain.flush())
    assert [len(c) for c in chunks] == [4, 4, 4, 1]
    offline = UnitChunker(None)
    assert [c for u in units for c in offline.push([u])] == [] and list(offline.flush()) == [units]


def test_unit_chunker_schedule_starts_small_and_doubles_up_to_omega():
    units = list(range(40))
    growing = UnitChunker(16, first=2)
    chunks = [c for u in units for c in growing.push([u])] + list(growing.flush())
    assert [len(c) for c in chunks] == [2, 4, 8, 16, 10] and sum(chunks, []) == units
    at_words = UnitChunker(8, boundaries=frozenset({0}), first=2)  # unit 0 ends a word
    words = [5, 0, 6, 7, 0, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 0, 9]
    chunks = [c for u in words for c in at_words.push([u])] + list(at_words.flush())
    # each chunk at least its size (2, 4, 8) and ending at a word end: 3 units were too few for 4
    assert [len(c) for c in chunks] == [2, 8, 8, 1] and sum(chunks, []) == words
    with pytest.raises(ValueError):
        UnitChunker(8, first=0)


def test_unit_chunker_never_hands_out_a_lone_short_word_first():
    # units as an LLM's tokens bring them: "the" (2 units), then " official" (a space first)
    the, official, approval = [41, 59], [3, 59, 19, 120, 74, 96, 59], [3, 50, 28, 88, 120]
    chunker = UnitChunker(40, boundaries=frozenset({3}), first=6)
    assert list(chunker.push(the)) == [] and list(chunker.push(official)) == []  # 9 units, but "the" alone is 3
    assert list(chunker.push(approval)) == [the + official + [3]]


def test_unit_chunker_ends_later_chunks_at_phrase_ends_and_waits_at_most_four_sizes():
    space, comma, period = 0, 1, 2
    chunker = UnitChunker(4, boundaries=frozenset({space, comma, period}), first=2, phrase_ends=frozenset({comma, period}))
    words = [[5, space], [6, 7, space], [8, 9, space], [5, comma], [6, space], [7, period]]
    chunks = [c for w in words for c in chunker.push(w)] + list(chunker.flush())
    # the first at a word end; the second waits past two word ends for the comma
    assert chunks == [[5, space], [6, 7, space, 8, 9, space, 5, comma], [6, space, 7, period]]
    no_phrase = UnitChunker(2, boundaries=frozenset({space, comma}), first=2, phrase_ends=frozenset({comma}))
    units = [5, space] + [6, space] * 6
    chunks = [c for u in units for c in no_phrase.push([u])] + list(no_phrase.flush())
    assert chunks[0] == [5, space] and len(chunks[1]) == 8 and chunks[1][-1] == space  # 4 x 2 units: a word end will do
    assert sum(chunks, []) == units


def test_unit_chunker_for_a_vocoder_takes_its_word_ends_and_first_chunk():
    class WithEnds:  # a unit vocoder that knows its word and phrase ends (Piper's phonemes)
        boundary_units, phrase_units, default_first_chunk = frozenset({0, 1}), frozenset({1}), 2

    class Plain:  # one that does not (HuBERT units)
        pass

    chunker = UnitChunker.for_vocoder(WithEnds(), 8)
    assert (chunker.size, chunker.boundaries, chunker.phrase_ends) == (2, frozenset({0, 1}), frozenset({1}))
    assert UnitChunker.for_vocoder(WithEnds(), 8, first=0).size == 8  # 0: omega from the start
    assert UnitChunker.for_vocoder(WithEnds(), 8, first=4).size == 4
    plain = UnitChunker.for_vocoder(Plain(), 8)
    assert (plain.size, plain.boundaries, plain.phrase_ends) == (8, None, None)
    assert UnitChunker.for_vocoder(WithEnds(), None).size is None  # no streaming


@pytest.mark.parametrize("window", [7, 30])
def test_windowed_decoder_streams_exactly_and_forgets_beyond_the_window(window):
    torch.manual_seed(0)
    gen = SpeechGenerator(SpeechDecoderConfig(llm_width=16, width=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn=64,
                                              num_units=7, upsample=4, attention_window=window)).eval()
    hidden = torch.randn(25, 16) * 3
    stream = SpeechDecoderStream(gen)
    assert [u for h in hidden for u in stream.push(h)] == gen.predict(hidden)
    assert stream.cache.layers[0].keys.shape[-2] == window - 1  # the cache holds the window only
    # a change far in the past does not reach the present (2 layers: 2 windows of reach)
    h2 = hidden.clone()
    h2[0] = torch.randn(16)
    with torch.no_grad():
        a = gen.logits(gen.project(hidden[None]))[0]
        b = gen.logits(gen.project(h2[None]))[0]
    reach = 4 + 2 * (window - 1)
    torch.testing.assert_close(a[reach:], b[reach:])
    assert not torch.allclose(a[:4], b[:4])


def test_a_resampled_decoder_keeps_its_weights_and_streams_at_the_new_lambda():
    """`resampled` (omni train speech-decoder --upsample): the same lambda changes nothing; a new
    one keeps every weight but the sub-positions, which run from the old first to the old last
    vector, scales the attention window, and streams exactly as its full pass."""
    torch.manual_seed(3)
    gen = SpeechGenerator(SpeechDecoderConfig(llm_width=16, width=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn=64, num_units=7,
                                              upsample=4, sub_positions=True, token_input=True, lookahead=True,
                                              attention_window=10)).eval()
    torch.nn.init.normal_(gen.next_proj.weight, std=1.0)
    torch.nn.init.normal_(gen.sub_position, std=1.0)
    hidden, tokens = torch.randn(9, 16) * 3, torch.randn(9, 16) * 3
    assert gen.resampled(4).predict(hidden, tokens) == gen.predict(hidden, tokens)
    wide = gen.resampled(7).eval()
    assert (wide.config.upsample, wide.config.attention_window) == (7, 18)
    assert wide.sub_position.shape == (7, 32)
    torch.testing.assert_close(wide.sub_position[[0, -1]], gen.sub_position[[0, -1]])
    torch.testing.assert_close(wide.sub_position[3], (gen.sub_position[1] + gen.sub_position[2]) / 2)
    for name, value in gen.state_dict().items():
        if name != "sub_position":
            assert torch.equal(wide.state_dict()[name], value), name
    with torch.no_grad():
        assert wide.logits(wide.project(hidden[None], tokens[None], wide.following(tokens[None]))).shape[1] == 9 * 7
    stream = SpeechDecoderStream(wide)
    units = [u for h, t in zip(hidden, tokens) for u in stream.push(h, t)] + stream.flush()
    assert units == wide.predict(hidden, tokens)
