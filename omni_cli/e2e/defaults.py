"""The architecture of our offline default end-to-end model, and a fresh (untrained) instance.

Whisper tiny.en encoder (run on the real length of the audio), SmolLM2-135M-Instruct,
the Piper voice's phoneme ids as units. The adaptor is the "ctc" variant: 4 frames
concatenated (12.5 Hz), 4 transformer layers 384 wide, and a CTC head over the LLM tokens of
the training transcripts, scored with the LLM's own input embeddings; the LLM reads the
collapsed tokens (see `speech_projector.py`). The speech decoder follows the published
design at CPU size: 2 causal layers 384 wide, lambda = 8 (a text token of SmolLM2 spans
about 3 phonemes), an attention window of the last 16 tokens' positions (constant work per
token), and the emitted token's embedding fed beside the hidden state (as LLaMA-Omni2 does).
"""

from __future__ import annotations

import torch

from omni_cli.e2e.config import EncoderConfig, OmniConfig, ProjectorConfig, PromptConfig, SpeechDecoderConfig

UPSAMPLE = 8


def default_prompt() -> PromptConfig:
    """Our models' prompt: the cascade's spoken-style system prompt, the speech as the user turn
    (so the adaptor learns to make speech act as the typed instruction would)."""
    from omni_cli.llm import SPOKEN_SYSTEM_PROMPT

    return PromptConfig(system=SPOKEN_SYSTEM_PROMPT, instruction="", template="chat")


def whisper_dims(spec: str):
    """A Whisper's `ModelDimensions`: a registry name, a local CTranslate2 folder or
    openai-whisper .pt, or a name the backend fetches where a network is."""
    from whisper.model import ModelDimensions

    from omni_cli.registry import resolve_whisper

    checkpoint = resolve_whisper(spec, need="openai").openai_checkpoint
    if checkpoint is None:  # a name the backend fetches
        import whisper

        return whisper.load_model(spec, device="cpu").dims
    return ModelDimensions(**torch.load(checkpoint, map_location="cpu", weights_only=True)["dims"])


def encoder_config(dims, speech_margin: float | None = None) -> EncoderConfig:
    """Our encoder config of a Whisper of these dimensions (run on the real length of the audio)."""
    return EncoderConfig(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer,
                         padded=False, speech_margin=speech_margin)


def default_config(encoder_dims, llm_width: int, num_units: int, rope_theta: float, rms_norm_eps: float,
                   vocab: int, adaptor: str = "ctc", units: str = "tokens") -> OmniConfig:
    """`adaptor` "ctc" (the default; `units` "tokens" at 12.5 Hz or "chars" at 25 Hz), or
    "linear": the published adaptor (k = 5, 1024 wide), as the first default used it."""
    if adaptor == "ctc":
        projector = ProjectorConfig(k=4 if units == "tokens" else 2, encoder_width=encoder_dims.n_audio_state, hidden=384,
                                    llm_width=llm_width, type="ctc", layers=4, heads=6, ffn=1536, vocab=vocab, dropout=0.1,
                                    units=units)
    else:
        projector = ProjectorConfig(k=5, encoder_width=encoder_dims.n_audio_state, hidden=1024, llm_width=llm_width)
    return OmniConfig(
        encoder=encoder_config(encoder_dims),
        projector=projector,
        speech_decoder=SpeechDecoderConfig(llm_width=llm_width, width=384, n_layers=2, n_heads=6, n_kv_heads=6, ffn=1024,
                                           num_units=num_units, upsample=UPSAMPLE, rms_norm_eps=rms_norm_eps,
                                           rope_theta=rope_theta, attention_window=16 * UPSAMPLE, token_input=True,
                                           sub_positions=True, lookahead=True),
        prompt=default_prompt(),
        encoder_source="whisper-tiny.en",
        llm_source="smollm2-135m-instruct",
        vocoder="piper",
    )


def new_default_model(transcripts: list[str], seed: int = 0, encoder: str = "whisper-tiny.en",
                      llm: str = "smollm2-135m-instruct", adaptor: str = "ctc", units: str = "tokens"):
    """The offline default architecture with a random adaptor and speech decoder; a ctc
    adaptor's head can emit the LLM tokens of `transcripts` (the training set's)."""
    import dataclasses

    from omni_cli.e2e.checkpoint import build_encoder
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.speech_llm import SpeechLLM
    from omni_cli.e2e.speech_projector import build_projector, ctc_vocabulary
    from omni_cli.e2e.unit_vocoder import PiperUnitVocoder
    from omni_cli.llm import ChatLLM

    chat = ChatLLM.load(llm)
    token_ids = ctc_vocabulary(chat.tokenizer, transcripts, units)
    dims = whisper_dims(encoder)
    cfg = chat.model.config
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    config = default_config(dims, cfg.hidden_size, PiperUnitVocoder().num_units, float(rope), float(cfg.rms_norm_eps),
                            vocab=len(token_ids), adaptor=adaptor, units=units)
    config = dataclasses.replace(config, encoder_source=encoder, llm_source=llm)
    torch.manual_seed(seed)
    projector = build_projector(config.projector)
    if adaptor == "ctc":
        projector.token_ids.copy_(torch.tensor(token_ids, dtype=torch.long))
    return SpeechLLM(config, build_encoder(config.encoder, encoder), projector, chat,
                     SpeechGenerator(config.speech_decoder)).eval()
