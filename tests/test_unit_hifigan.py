"""The unit HiFi-GAN vocoder on tiny random configs: loading fairseq-style files (weight
norm folded), the duration rule, output lengths, strict keys and refused configs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from omni_cli.e2e.unit_hifigan import (
    UnitHiFiGAN,
    UnitHiFiGANCheckpointError,
    UnitHiFiGANConfig,
    UnitHiFiGANVocoder,
    durations_from_log,
)
from omni_cli.errors import ConfigError, ModelNotFoundError

# The published mHuBERT vocoder's config.json, shrunk; training-only fields kept so that
# the loader is shown to ignore them.
TINY_FAIRSEQ_CONFIG = {
    "resblock": "1",
    "num_gpus": 0,
    "batch_size": 16,
    "upsample_rates": [4, 2],
    "upsample_kernel_sizes": [8, 4],
    "upsample_initial_channel": 16,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 20,
    "embedding_dim": 8,
    "model_in_dim": 8,
    "segment_size": 8960,
    "code_hop_size": 320,
    "f0": False,
    "dur_prediction_weight": 1.0,
    "dur_predictor_params": {
        "encoder_embed_dim": 8,
        "var_pred_hidden_dim": 8,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": 16000,
    "fmax_for_loss": None,
    "dist_config": {"dist_backend": "nccl", "dist_url": "env://"},
}
HOP = 4 * 2


def _config(**changes) -> dict:
    cfg = copy.deepcopy(TINY_FAIRSEQ_CONFIG)
    cfg.update(changes)
    return cfg


def _weight_normed_reference(cfg: dict, seed: int = 0) -> UnitHiFiGAN:
    """The module with every generator conv weight-normed (as fairseq trains it), and the
    magnitudes g moved away from ||v|| so that folding them is really exercised."""
    torch.manual_seed(seed)
    ref = UnitHiFiGAN(UnitHiFiGANConfig.from_fairseq_json(cfg))
    convs = [ref.conv_pre, ref.conv_post, *ref.ups]
    for block in ref.resblocks:
        convs += [*block.convs1, *block.convs2]
    for conv in convs:
        weight_norm(conv)
        g = conv.parametrizations.weight.original0
        with torch.no_grad():
            g.mul_(torch.rand_like(g) + 0.5)
    return ref.eval()


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parametrization names -> the weight_g / weight_v names the published checkpoint uses."""
    out = {}
    for k, v in state.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        k = k.replace(".parametrizations.weight.original1", ".weight_v")
        out[k] = v.clone()
    return out


def _write(folder: Path, cfg: dict, generator_state: dict[str, torch.Tensor]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(cfg))
    ckpt_path = folder / "g_00000100"
    torch.save({"generator": generator_state}, ckpt_path)
    return ckpt_path, config_path


@pytest.fixture(scope="module")
def published_like(tmp_path_factory):
    ref = _weight_normed_reference(TINY_FAIRSEQ_CONFIG)
    state = _legacy_names(ref.state_dict())
    folder = tmp_path_factory.mktemp("vocoder")
    ckpt, cfg = _write(folder, TINY_FAIRSEQ_CONFIG, state)
    return ref, state, ckpt, cfg


def test_weight_normed_checkpoint_loads_and_matches(published_like):
    ref, state, ckpt, cfg = published_like
    assert any(k.endswith(".weight_g") for k in state) and "conv_pre.weight_v" in state
    assert "dur_predictor.conv1.0.weight" in state and "dict.weight" in state
    model = UnitHiFiGAN.from_files(ckpt, cfg)
    assert not any("parametrizations" in k or k.endswith("_g") for k in model.state_dict())

    code = torch.tensor([[3, 7, 7, 1, 19]])
    durations = torch.tensor([1, 3, 2, 1, 2])
    with torch.inference_mode():
        torch.testing.assert_close(model(code, durations=durations), ref(code, durations=durations))
        torch.testing.assert_close(model(code), ref(code))  # predicted durations
        torch.testing.assert_close(
            model.predict_durations(model.dict(code).transpose(1, 2)),
            ref.predict_durations(ref.dict(code).transpose(1, 2)),
        )


def test_folder_plain_weights_and_parametrization_names_load(published_like, tmp_path):
    ref, _, ckpt, cfg = published_like
    code = torch.tensor([[0, 5, 9]])
    with torch.inference_mode():
        expected = ref(code)
        assert torch.equal(UnitHiFiGAN.from_files(ckpt.parent)(code), UnitHiFiGAN.from_files(ckpt)(code))
        plain = copy.deepcopy(ref)
        for module in plain.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")
        for name, state in [("plain", plain.state_dict()), ("param", ref.state_dict())]:
            c, f = _write(tmp_path / name, TINY_FAIRSEQ_CONFIG, state)
            torch.testing.assert_close(UnitHiFiGAN.from_files(c, f)(code), expected)


def test_vocoder_wrapper(published_like):
    _, _, ckpt, cfg = published_like
    vocoder = UnitHiFiGANVocoder.from_files(ckpt, cfg)
    assert (vocoder.sample_rate, vocoder.num_units) == (16000, 20)
    wav = vocoder.units_to_audio([4, 2, -1, 11])  # negative ids dropped, as in fairseq
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) % HOP == 0 and len(wav) >= 3 * HOP
    assert np.abs(wav).max() <= 1.0
    np.testing.assert_array_equal(wav, vocoder.units_to_audio([4, 2, 11]))
    assert vocoder.units_to_audio([]).shape == (0,)
    with pytest.raises(ConfigError, match="it has 20"):
        vocoder.units_to_audio([1, 20])


def test_duration_rule_and_output_length():
    log = torch.log(torch.tensor([1.2, 1.0, 0.01, 2.4, 3.6, 4.0, 6.7, 11.0]))
    # exp(log) - 1 = 0.2, 0, -0.99, 1.4, 2.6, 3, 5.7, 10 -> round -> clamp(min=1)
    assert durations_from_log(log).tolist() == [1, 1, 1, 1, 3, 3, 6, 10]
    assert durations_from_log(log).dtype == torch.long

    torch.manual_seed(0)
    model = UnitHiFiGAN(UnitHiFiGANConfig.from_fairseq_json(TINY_FAIRSEQ_CONFIG)).eval()
    assert model.config.hop_length == math.prod(TINY_FAIRSEQ_CONFIG["upsample_rates"]) == HOP
    code = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        durations = torch.tensor([2, 1, 4, 3])
        assert model(code, durations=durations).shape == (1, int(durations.sum()) * HOP)
        assert model(code, dur_prediction=False).shape == (1, 4 * HOP)
        # hand-set predictor: every unit gets log duration log(4) -> exp - 1 = 3 frames
        model.dur_predictor.proj.weight.zero_()
        model.dur_predictor.proj.bias.fill_(math.log(4.0))
        assert model.predict_durations(model.dict(code).transpose(1, 2)).tolist() == [[3, 3, 3, 3]]
        assert model(code).shape == (1, 4 * 3 * HOP)
        # the predicted path is the explicit one with the rule's durations
        torch.testing.assert_close(model(code), model(code, durations=torch.full((4,), 3)))
        model.dur_predictor.proj.bias.fill_(-3.0)  # exp(-3) - 1 < 0 -> clamped to 1
        assert model(code).shape == (1, 4 * HOP)


def test_no_duration_predictor_config():
    cfg = _config()
    del cfg["dur_predictor_params"]
    model = UnitHiFiGAN(UnitHiFiGANConfig.from_fairseq_json(cfg)).eval()
    assert model.dur_predictor is None
    with torch.inference_mode():
        assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3 * HOP)


def test_resblock_2_builds_and_runs():
    cfg = _config(resblock="2", resblock_dilation_sizes=[[1, 2], [2, 6]])
    model = UnitHiFiGAN(UnitHiFiGANConfig.from_fairseq_json(cfg)).eval()
    assert "resblocks.3.convs.1.weight" in model.state_dict()
    with torch.inference_mode():
        assert model(torch.tensor([[1, 2]]), durations=torch.tensor([1, 2])).shape == (1, 3 * HOP)


def test_missing_and_unexpected_keys_are_named(published_like, tmp_path):
    _, state, _, _ = published_like
    missing = {k: v for k, v in state.items() if k != "ups.1.bias"}
    c, f = _write(tmp_path / "missing", TINY_FAIRSEQ_CONFIG, missing)
    with pytest.raises(UnitHiFiGANCheckpointError, match=r"missing keys: ups\.1\.bias") as err:
        UnitHiFiGAN.from_files(c, f)
    assert isinstance(err.value, ModelNotFoundError) and "\n" not in str(err.value)

    extra = dict(state, **{"spkr.weight": torch.zeros(3, 8)})
    c, f = _write(tmp_path / "extra", TINY_FAIRSEQ_CONFIG, extra)
    with pytest.raises(UnitHiFiGANCheckpointError, match=r"unexpected keys: spkr\.weight"):
        UnitHiFiGAN.from_files(c, f)

    orphan = {k: v for k, v in state.items() if k != "conv_post.weight_g"}
    c, f = _write(tmp_path / "orphan", TINY_FAIRSEQ_CONFIG, orphan)
    with pytest.raises(UnitHiFiGANCheckpointError, match=r"conv_post\.weight_v"):
        UnitHiFiGAN.from_files(c, f)

    other = _config(num_embeddings=21)
    c, f = _write(tmp_path / "shape", other, state)
    with pytest.raises(UnitHiFiGANCheckpointError, match=r"dict\.weight.*\(20, 8\)"):
        UnitHiFiGAN.from_files(c, f)

    with pytest.raises(ModelNotFoundError, match="not found"):
        UnitHiFiGAN.from_files(tmp_path / "nowhere" / "g_1", f)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"multispkr": True, "num_speakers": 4}, "multispkr"),
        ({"f0": True}, "f0"),
        ({"f0_quant_num_bin": 32}, "f0_quant_num_bin"),
        ({"embedder_params": {"embedder_dim": 256}}, "embedder_params"),
        ({"resblock": "3"}, "resblock"),
        ({"model_in_dim": 9}, "model_in_dim"),
        ({"upsample_kernel_sizes": [8]}, "upsample_kernel_sizes"),
        ({"resblock_dilation_sizes": [[1, 3], [1, 3]]}, "resblock_dilation_sizes"),
    ],
)
def test_unsupported_or_inconsistent_config_raises(changes, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        UnitHiFiGANConfig.from_fairseq_json(_config(**changes))


def test_missing_required_field_and_defaults():
    cfg = _config()
    del cfg["num_embeddings"]
    with pytest.raises(ValueError, match="'num_embeddings' is missing"):
        UnitHiFiGANConfig.from_fairseq_json(cfg)
    cfg = _config(f0=None, multispkr=None)
    del cfg["sampling_rate"]
    config = UnitHiFiGANConfig.from_fairseq_json(cfg)
    assert config.sampling_rate == 16000 and config.dur_predictor_params.var_pred_hidden_dim == 8
