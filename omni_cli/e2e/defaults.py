"""The architecture of our offline default end-to-end model, and a fresh (untrained) instance.

Whisper tiny.en encoder (run on the real length of the audio), SmolLM2-135M-Instruct,
the Piper voice's phoneme ids as units. Everything else follows the published design
with sizes for a CPU: k = 5, a 1024-wide adaptor, a 2-layer 384-wide CTC decoder with
lambda = 8 (a text token of SmolLM2 spans about 3 phonemes) and an attention window of the
last 16 tokens' positions, which keeps the decoder's work per token constant.
"""

from __future__ import annotations

import torch

from omni_cli.e2e.config import EncoderConfig, OmniConfig, ProjectorConfig, SpeechDecoderConfig
from omni_cli.e2e.train import default_prompt

UPSAMPLE = 8


def default_config(encoder_dims, llm_width: int, num_units: int, rope_theta: float, rms_norm_eps: float) -> OmniConfig:
    return OmniConfig(
        encoder=EncoderConfig(encoder_dims.n_mels, encoder_dims.n_audio_ctx, encoder_dims.n_audio_state,
                              encoder_dims.n_audio_head, encoder_dims.n_audio_layer, padded=False),
        projector=ProjectorConfig(k=5, encoder_width=encoder_dims.n_audio_state, hidden=1024, llm_width=llm_width),
        speech_decoder=SpeechDecoderConfig(llm_width=llm_width, width=384, n_layers=2, n_heads=6, n_kv_heads=6, ffn=1024,
                                           num_units=num_units, upsample=UPSAMPLE, rms_norm_eps=rms_norm_eps,
                                           rope_theta=rope_theta, attention_window=16 * UPSAMPLE),
        prompt=default_prompt(),
        encoder_source="whisper-tiny.en",
        llm_source="smollm2-135m-instruct",
        vocoder="piper",
    )


def new_default_model(seed: int = 0, encoder: str = "whisper-tiny.en", llm: str = "smollm2-135m-instruct"):
    """The offline default architecture with random adaptor and speech decoder."""
    import dataclasses

    from omni_cli.e2e.checkpoint import build_encoder
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.speech_llm import SpeechLLM
    from omni_cli.e2e.speech_projector import SpeechProjector
    from omni_cli.e2e.unit_vocoder import PiperUnitVocoder
    from omni_cli.llm import ChatLLM
    from omni_cli.registry import resolve_whisper

    chat = ChatLLM.load(llm)
    ckpt = torch.load(resolve_whisper(encoder, need="openai").openai_checkpoint, map_location="cpu", weights_only=True)
    from whisper.model import ModelDimensions

    dims = ModelDimensions(**ckpt["dims"])
    cfg = chat.model.config
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    config = default_config(dims, cfg.hidden_size, PiperUnitVocoder().num_units, float(rope), float(cfg.rms_norm_eps))
    config = dataclasses.replace(config, encoder_source=encoder, llm_source=llm)
    torch.manual_seed(seed)
    return SpeechLLM(config, build_encoder(config.encoder, encoder), SpeechProjector(config.projector), chat,
                     SpeechGenerator(config.speech_decoder)).eval()
