"""Reading the speech decoder's units: the unit n-gram LM, the CTC prefix beam search it is fused
into (streamed in pieces == one pass), and a model that carries both through export and load."""

import math

import numpy as np
import pytest
import torch

from omni_cli.e2e.config import SpeechDecoderConfig
from omni_cli.e2e.speech_generator import SpeechDecoderStream, SpeechGenerator
from omni_cli.e2e.state import CheckpointError
from omni_cli.e2e.unit_lm import BeamUnits, GreedyUnits, UnitNgram
from omni_cli.errors import ConfigError

K = 5  # units 0 .. 4, blank 5


def test_unit_ngram_is_a_distribution_that_follows_its_counts_and_backs_off(tmp_path):
    lm = UnitNgram.fit([[0, 1, 2, 3]] * 20 + [[0, 1, 4]] * 5 + [[2, 2]], order=3, num_units=K)
    for history in [(), (0,), (0, 1), (3, 3), (4, 4, 4, 4)]:
        assert np.exp(lm.logprobs(history)).sum() == pytest.approx(1.0)
    after = lm.logprobs((0, 1))
    assert after.argmax() == 2 and after[2] > after[4] > after[0]  # 20 times 2, 5 times 4, never 0
    assert lm.logprobs(())[:K].argmax() == 0  # every sequence starts with 0 (and 2 twice once)
    assert lm.logprobs((1, 2, 3)).argmax() == K  # ... 2 3 then the end
    unseen = lm.logprobs((4, 3))  # never seen: backs off to "after 3", then to the unigram
    assert unseen.argmax() == K and np.isfinite(unseen).all()
    lm.save(tmp_path / "lm.npz")
    again = UnitNgram.load(tmp_path / "lm.npz")
    for history in [(), (0, 1), (4, 3)]:
        np.testing.assert_allclose(again.logprobs(history), lm.logprobs(history))
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(CheckpointError):
        UnitNgram.load(tmp_path / "bad.npz")
    with pytest.raises(ConfigError):
        UnitNgram.fit([[0, 7]], order=2, num_units=K)


def logp_of(rows: list[dict[int, float]]) -> np.ndarray:
    """(T, K + 1) log-probabilities, each row's listed units given those probabilities, the rest the blank."""
    out = np.full((len(rows), K + 1), 1e-6)
    for t, row in enumerate(rows):
        for u, p in row.items():
            out[t, u] = p
        out[t, K] = max(0.0, 1.0 - sum(row.values()))
    return np.log(out / out.sum(-1, keepdims=True))


def test_the_lm_brings_back_a_unit_the_blank_outscored():
    """Greedy reading drops unit 2 where the blank scores a little higher; the beam search with a
    unit LM that has always seen 0 1 2 3 keeps it, and without the LM it does not."""
    logp = logp_of([{0: 0.9}, {}, {1: 0.9}, {}, {2: 0.4}, {}, {3: 0.9}, {}])
    greedy = GreedyUnits(K)
    assert greedy.push(logp) + greedy.flush() == [0, 1, 3]
    lm = UnitNgram.fit([[0, 1, 2, 3]] * 50 + [[0, 1, 4]], order=3, num_units=K)
    plain = BeamUnits(K, 8)
    assert plain.push(logp) + plain.flush() == [0, 1, 3]
    fused = BeamUnits(K, 8, lm, weight=1.0)
    assert fused.push(logp) + fused.flush() == [0, 1, 2, 3]


def test_beam_search_streamed_in_pieces_equals_one_pass_and_gives_out_only_what_is_settled():
    rng = np.random.default_rng(0)
    lm = UnitNgram.fit([rng.integers(0, K, 30).tolist() for _ in range(40)], order=4, num_units=K)
    logits = rng.normal(size=(120, K + 1)) * 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    whole = BeamUnits(K, 6, lm, weight=0.5, bonus=0.3)
    expected = whole.push(logp) + whole.flush()
    pieces = BeamUnits(K, 6, lm, weight=0.5, bonus=0.3)
    got, cut = [], 0
    for size in rng.integers(1, 15, 40):
        out = pieces.push(logp[cut : cut + size])
        got += out
        assert expected[: len(got)] == got  # what was given out is never taken back
        cut += size
        if cut >= len(logp):
            break
    assert got + pieces.flush() == expected
    assert len(got) > len(expected) // 2  # most units come out before the end


def test_beam_search_with_max_pending_speaks_the_best_hypothesis_but_its_last_units():
    """Kept hypotheses may disagree from early on for a long time; with max_pending the best
    one's units but its last few are given out after every push, the rest kept consistent."""
    rng = np.random.default_rng(1)
    lm = UnitNgram.fit([rng.integers(0, K, 30).tolist() for _ in range(40)], order=4, num_units=K)
    logits = rng.normal(size=(200, K + 1)) * 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    search = BeamUnits(K, 8, lm, weight=0.5, bonus=0.3, max_pending=3)
    waiting = BeamUnits(K, 8, lm, weight=0.5, bonus=0.3)
    got, agreed = [], []
    for i in range(0, len(logp), 4):
        got += search.push(logp[i : i + 4])
        agreed += waiting.push(logp[i : i + 4])
        assert len(next(iter(search.hyps))) <= 3  # the best hypothesis holds back at most 3 units
    final = got + search.flush()
    assert final[: len(got)] == got
    assert len(agreed) < len(got) - 3  # waiting for agreement gives out far less before the end
    full = waiting.flush()
    assert len(final) == pytest.approx(len(agreed + full), abs=len(final) // 10)  # and reads about as much
    with pytest.raises(ConfigError):
        BeamUnits(K, 8, max_pending=-1)


def test_greedy_reader_equals_ctc_collapse_across_pushes():
    from omni_cli.e2e.unit_lm import ctc_collapse

    raw = [1, 1, 5, 1, 2, 2, 5, 5, 3, 3]
    logp = np.log(np.eye(K + 1)[raw] * 0.9 + 0.1 / (K + 1))
    reader = GreedyUnits(K)
    assert reader.push(logp[:5]) + reader.push(logp[5:]) + reader.flush() == ctc_collapse(raw, K)


def lm_decoder(seed: int, beam: int, lm: UnitNgram | None) -> SpeechGenerator:
    torch.manual_seed(seed)
    gen = SpeechGenerator(SpeechDecoderConfig(llm_width=16, width=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn=64, num_units=K,
                                              upsample=4, sub_positions=True, token_input=True, lookahead=True, beam=beam,
                                              lm="unit_lm.npz" if lm else "", lm_weight=0.7, length_bonus=0.5)).eval()
    torch.nn.init.normal_(gen.next_proj.weight, std=1.0)
    torch.nn.init.normal_(gen.sub_position, std=3.0)
    gen.unit_lm = lm
    return gen


@pytest.mark.parametrize("length", [1, 9, 31])
def test_a_decoder_reading_with_the_lm_streams_exactly_its_full_pass(length):
    rng = np.random.default_rng(length)
    lm = UnitNgram.fit([rng.integers(0, K, 20).tolist() for _ in range(30)], order=5, num_units=K)
    gen = lm_decoder(length, beam=8, lm=lm)
    hidden, tokens = torch.randn(length, 16) * 3, torch.randn(length, 16) * 3
    stream = SpeechDecoderStream(gen)
    units = [u for h, t in zip(hidden, tokens) for u in stream.push(h, t)] + stream.flush()
    assert units == gen.predict(hidden, tokens)
    greedy = lm_decoder(length, beam=1, lm=None)
    if length == 31:  # the LM changes what is read
        assert greedy.predict(hidden, tokens) != units
    gen.unit_lm = None
    with pytest.raises(ConfigError):
        gen.predict(hidden, tokens)


def test_export_carries_the_unit_lm_and_its_settings_into_the_model(peaked_omni_unit, tmp_path):
    from typer.testing import CliRunner

    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni

    model_dir, num_units = peaked_omni_unit
    lm = UnitNgram.fit([list(range(num_units))] * 3, order=3, num_units=num_units)
    lm.save(tmp_path / "lm.npz")
    out = tmp_path / "shipped"
    args = ["train", "export", str(model_dir), str(out), "--unit-lm", str(tmp_path / "lm.npz"), "--unit-beam", "4",
            "--unit-lm-weight", "0.5", "--unit-length-bonus", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    model = load_omni(out)
    c = model.config.speech_decoder
    assert (c.beam, c.lm, c.lm_weight, c.length_bonus) == (4, "unit_lm.npz", 0.5, 1.0)
    np.testing.assert_allclose(model.speech_generator.unit_lm.logprobs((0, 1)), lm.logprobs((0, 1)))
    again = tmp_path / "again"  # a model with a unit LM exported again keeps it
    assert CliRunner().invoke(app, ["train", "export", str(out), str(again)]).exit_code == 0
    assert load_omni(again).speech_generator.unit_lm is not None
    (again / "unit_lm.npz").unlink()
    with pytest.raises(CheckpointError, match="unit LM"):
        load_omni(again)
    wrong = UnitNgram.fit([[0, 1]], order=2, num_units=num_units + 3)
    wrong.save(tmp_path / "wrong.npz")
    for bad in (["--unit-lm", str(tmp_path / "wrong.npz"), "--unit-beam", "4"], ["--unit-lm", str(tmp_path / "missing.npz")],
                ["--unit-beam", "4", "--unit-lm-weight", "0.5"]):
        result = CliRunner().invoke(app, ["train", "export", str(model_dir), str(tmp_path / "x"), *bad])
        assert result.exit_code == 2 and "Traceback" not in result.stderr, bad


@pytest.fixture()
def peaked_omni_unit(tiny_e2e_parts, tmp_path):
    from omni_cli.e2e.checkpoint import save_omni

    model = tiny_e2e_parts["model"]
    return save_omni(model, tmp_path / "omni"), model.config.speech_decoder.num_units


def test_one_probability_at_a_time_equals_the_distribution_over_any_vocabulary(tmp_path):
    """`logprob` (what the search asks) is `logprobs`' entry, for a few units and for a vocabulary
    of LLM tokens (over 65,535 symbols: stored wider, read back the same); an order too large to
    index is refused."""
    rng = np.random.default_rng(3)
    for n in (K, 70000):
        seqs = [rng.integers(0, min(n, 40), 12).tolist() for _ in range(30)] + [[n - 1, n - 2, n - 1]]
        lm = UnitNgram.fit(seqs, order=3, num_units=n)
        lm.save(tmp_path / "lm.npz")
        again = UnitNgram.load(tmp_path / "lm.npz")
        for history in [(), (seqs[0][0],), tuple(seqs[1][:2]), (n - 1, n - 2), (n - 2, n - 2)]:
            full = lm.logprobs(history)
            for symbol in {0, seqs[0][1], n - 1, n}:
                assert again.logprob(history, symbol) == pytest.approx(full[symbol], rel=1e-9)
    assert again.logprob((n - 1, n - 2), n - 1) > np.log(0.5)  # seen once, after a context seen once
    with pytest.raises(ConfigError, match="too large"):
        UnitNgram.fit([[0, 1]], order=5, num_units=70000)


def test_an_lm_over_symbols_steers_a_search_over_other_class_ids():
    """The adaptor's classes are LLM tokens by a table (class c is token symbols[c]): an n-gram
    over token ids that has always seen 7 -> 9 brings back class 1 (token 9) where the CTC alone
    prefers class 2 (token 4); a table naming tokens the n-gram does not know is refused."""
    symbols = [7, 9, 4]  # classes 0, 1, 2; the blank is class 3
    logp = np.log(np.array([[0.9, 0.02, 0.02, 0.06], [0.02, 0.4, 0.5, 0.08], [0.02, 0.02, 0.02, 0.94]]))
    plain = BeamUnits(3, 8, per_frame=3)
    assert plain.push(logp) + plain.flush() == [0, 2]
    lm = UnitNgram.fit([[7, 9]] * 30 + [[7, 4]], order=2, num_units=12)
    fused = BeamUnits(3, 8, lm, weight=1.0, per_frame=3, symbols=symbols)
    assert fused.push(logp) + fused.flush() == [0, 1]
    with pytest.raises(ConfigError):
        BeamUnits(3, 8, lm, weight=1.0, symbols=[7, 9, 40])


def test_a_search_over_many_classes_tries_each_positions_most_probable_ones_only():
    """With `per_frame` k, each position extends the hypotheses by its k most probable classes
    (and the blank): the same search as trying every class where all but those k are impossible."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(30, 41)).astype(np.float32)
    logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True)).astype(np.float32)
    blank, k = 40, 5
    masked = np.full_like(logp, -1e9)
    for t, row in enumerate(logp):
        top = [c for c in np.argsort(-row)[:k] if c != blank]
        masked[t, top], masked[t, blank] = row[top], row[blank]
    fast = BeamUnits(blank, 8, per_frame=k)
    fast.push(logp)
    every = BeamUnits(blank, 8, prune=math.inf)
    every.push(masked)
    (best, score), (expect, expect_score) = fast.nbest()[0], every.nbest()[0]
    assert best == expect and score == pytest.approx(expect_score, abs=1e-6)
    assert [h for h, _ in fast.nbest()[:4]] == [h for h, _ in every.nbest()[:4]]
