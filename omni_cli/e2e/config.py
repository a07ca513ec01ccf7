"""Architecture of an end-to-end speech LLM, as frozen dataclasses saved with its checkpoint.

Every size a module needs comes from here; modules hold no numbers of their own. The
published LLaMA-Omni model maps onto these from its HF config (see `checkpoint.py`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from omni_cli.errors import ConfigError

PUBLISHED_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
PUBLISHED_INSTRUCTION = "Please directly answer the questions in the user's speech."
SPEECH_PLACEHOLDER = "<speech>"


@dataclass(frozen=True)
class EncoderConfig:
    """openai-whisper AudioEncoder dimensions."""

    n_mels: int
    n_ctx: int  # positional embeddings (1500 = 30 s)
    width: int
    n_heads: int
    n_layers: int
    padded: bool = True  # pad/trim input to 30 s (what the published weights expect); False: real length
    speech_margin: float | None = None  # hear only the speech (Silero VAD) and this many seconds around it:
    # leading and trailing breaths and room noise, which synthetic training speech lacks, are not heard as
    # words; None: the whole input

    def __post_init__(self):
        if self.speech_margin is not None and self.speech_margin < 0:
            raise ConfigError(f"speech_margin is seconds around the speech (>= 0) or none, not {self.speech_margin}")


@dataclass(frozen=True)
class ProjectorConfig:
    """speech_projector. "linear" (published): concatenate k frames -> Linear -> ReLU -> Linear.
    "ctc" (ours): concatenate k frames -> Linear -> transformer layers -> a CTC head over
    `vocab` LLM tokens scored with the LLM's input embeddings; the LLM reads the collapsed tokens."""

    k: int  # downsampling rate (frames concatenated)
    encoder_width: int
    hidden: int  # width of linear1's output (ctc: of the transformer layers)
    llm_width: int
    type: str = "linear"  # linear | ctc
    layers: int = 0  # ctc: transformer layers
    heads: int = 0  # ctc: attention heads
    ffn: int = 0  # ctc: feed-forward width
    vocab: int = 0  # ctc: how many LLM tokens the head can emit (the blank comes on top)
    dropout: float = 0.0  # ctc: dropout inside the transformer layers (training only)
    units: str = "tokens"  # ctc: what the head spells: "tokens" (the LLM's tokens of the transcript) or
    # "chars" (lower-case characters, each one of the LLM's single-character tokens)
    beam: int = 1  # ctc: hypotheses kept by the CTC prefix beam search (1: greedy, as trained)
    lm_weight: float = 0.0  # ctc, beam > 1: weight of the LLM's log-probability of each hypothesis as the
    # user's message, added to its CTC log-probability (the LLM picks the most plausible of what it may have heard)
    length_bonus: float = 0.0  # ctc, beam > 1: added per LLM token of a hypothesis (offsets the LLM's bias to short ones)
    ngram: str = ""  # ctc, beam > 1: a token n-gram (`unit_lm.UnitNgram` over LLM token ids) file in the model folder,
    # fused into the beam search itself, so the hypotheses the LLM chooses among are likelier sentences
    ngram_weight: float = 0.0  # ctc, beam > 1: weight of the token n-gram's log-probability in the search
    ngram_bonus: float = 0.0  # ctc, beam > 1: added per token in the search (offsets the n-gram's pull to short ones)
    window: int = 0  # ctc, hearing: the adaptor reads at most this many positions (k frames each) at once, longer
    # speech in overlapping windows, each kept but for `window_context` positions at either inner edge (0: all at once)
    window_context: int = 0
    speeds: tuple[float, ...] = ()  # ctc, beam > 1: the speech is also heard played this many times as fast (as
    # stage 1's speed augmentation plays it); the beam's hypotheses of every copy are pooled, each scored by its
    # CTC log-probability averaged over the copies (test-time augmentation; () hears it once)
    blank_penalty: float = 0.0  # ctc, beam > 1: subtracted from the blank's log-probability on every frame before the
    # search (after a partner's blend): more of what was said kept as tokens, where the blend hears each less surely

    def __post_init__(self) -> None:
        object.__setattr__(self, "speeds", tuple(float(f) for f in self.speeds))
        if any(not 0.5 <= f <= 2.0 for f in self.speeds):
            raise ConfigError(f"projector speeds are factors from 0.5 to 2.0, got {list(self.speeds)}")
        if self.speeds and self.beam < 2:
            raise ConfigError("projector speeds pool the hypotheses of a beam search: they need a beam over 1")
        if self.beam < 1 or self.lm_weight < 0 or self.ngram_weight < 0:
            raise ConfigError("projector beam must be >= 1, and lm_weight and ngram_weight >= 0")
        _numbers("projector", lm_weight=self.lm_weight, length_bonus=self.length_bonus, ngram_weight=self.ngram_weight,
                 ngram_bonus=self.ngram_bonus, blank_penalty=self.blank_penalty)
        if self.window < 0 or self.window_context < 0 or (self.window and 2 * self.window_context >= self.window):
            raise ConfigError("projector window must be >= 0, and window_context >= 0 and under half the window")


def _numbers(owner: str, **weights: float) -> None:
    """A search's weights must be numbers: with NaN or infinity in its scores it hears or speaks garbage."""
    bad = [f"{name} {value}" for name, value in weights.items() if not math.isfinite(value)]
    if bad:
        raise ConfigError(f"{owner} {', '.join(bad)}: its search's weights must be numbers")


@dataclass(frozen=True)
class PartnerConfig:
    """A second ear (ctc adaptors only): another Whisper's encoder and a ctc adaptor trained on it,
    which hear the same speech; their CTC log-probabilities, frame by frame, are blended with the
    model's own before its beam search (or greedy reading), `weight` x theirs + (1 - weight) x its
    own (both encoders give 50 frames a second; both adaptors must stack the same `k`). Classes are
    matched by LLM token; where the partner lacks one of the model's, the model's own
    log-probability stands in. Its weights are stored as `partner_projector.*`."""

    encoder_source: str  # registry name or path of the partner's Whisper
    encoder: EncoderConfig
    projector: ProjectorConfig
    weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.weight < 1:
            raise ConfigError(f"a partner's weight is its share of the blend, between 0 and 1, not {self.weight}")
        if self.projector.type != "ctc":
            raise ConfigError(f"a partner's adaptor must be a ctc adaptor, not {self.projector.type!r}")

    @classmethod
    def from_dict(cls, d: dict) -> PartnerConfig:
        return cls(encoder_source=d["encoder_source"], encoder=EncoderConfig(**d["encoder"]),
                   projector=ProjectorConfig(**d["projector"]), weight=float(d.get("weight", 0.5)))


@dataclass(frozen=True)
class SpeechDecoderConfig:
    """speech_generator: Linear in -> N causal Llama layers -> Linear out to K + 1 (blank = K)."""

    llm_width: int
    width: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    num_units: int  # K; the CTC blank is index K
    upsample: int  # lambda: each LLM hidden state repeated this many times
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # the LLM's rope scaling (the published decoder copies it)
    max_positions: int = 1 << 16
    attention_window: int | None = None  # attend to at most this many upsampled positions back
    # (None: the whole prefix, as published; a window keeps the work per text token constant)
    token_input: bool = False  # also read the emitted token's LLM input embedding (token_proj), added to
    # input_proj of the hidden state (LLaMA-Omni2 feeds the token beside the state; the published model does not)
    sub_positions: bool = False  # add a learned vector per copy (0 .. lambda - 1) to the upsampled inputs: without
    # it the first token's lambda copies are identical and attend to identical positions, so they all predict the same
    # unit and its word loses all but one phoneme (the published model does not)
    lookahead: bool = False  # with token_input, also read the next token's input embedding (next_proj; zeros after the
    # last): a token's units wait one LLM step for the token after it, so a word split into pieces ("Tok" "yo") is
    # pronounced knowing how it goes on
    beam: int = 1  # hypotheses of the CTC prefix beam search that reads the units (1: greedy, as trained)
    lm: str = ""  # beam > 1: a unit n-gram (`unit_lm.UnitNgram`) file in the model folder, fused into the search
    lm_weight: float = 0.0  # beam > 1: weight of the unit LM's log-probability of a hypothesis's units
    length_bonus: float = 0.0  # beam > 1: added per unit of a hypothesis (offsets the LM's pull to short ones)
    max_pending: int = 4  # beam > 1: after each token, the best hypothesis's units but its last this many are
    # spoken (0: only what every hypothesis agrees on, which can wait for many tokens)

    def __post_init__(self) -> None:
        if self.beam < 1 or self.max_pending < 0 or self.lm_weight < 0:
            raise ConfigError(f"speech decoder beam must be >= 1 (got {self.beam}), max_pending >= 0 ({self.max_pending}) "
                              f"and lm_weight >= 0 ({self.lm_weight})")
        _numbers("speech decoder", lm_weight=self.lm_weight, length_bonus=self.length_bonus)


@dataclass(frozen=True)
class PromptConfig:
    system: str = PUBLISHED_SYSTEM_PROMPT
    instruction: str = PUBLISHED_INSTRUCTION  # text after the speech in the user turn
    template: str = "chat"  # "chat": the LLM tokenizer's chat template; "llama3-omni": the published literal
    repeat: str = "Repeat exactly what was said."  # the instruction (in `instruction`'s place) that asks the
    # model to say what it heard: the ASR task, used as a transcription backend


LORA_TASKS = ("answer", "repeat")  # the LLM's tasks: answer what was said; repeat it (the ASR task)


def lora_tasks(names) -> tuple[str, ...]:
    """The tasks LoRA adapters serve, checked: both, or only 'repeat' (answers by the base LLM)."""
    tasks = tuple(sorted({str(n).strip() for n in names if str(n).strip()}))
    if tasks not in (LORA_TASKS, ("repeat",)):
        raise ConfigError(f"lora_tasks is 'answer,repeat' or 'repeat', not {','.join(tasks) or 'nothing'!r}")
    return tasks


@dataclass(frozen=True)
class OmniConfig:
    encoder: EncoderConfig
    projector: ProjectorConfig
    speech_decoder: SpeechDecoderConfig
    prompt: PromptConfig = field(default_factory=PromptConfig)
    encoder_source: str = ""  # registry name or path of the Whisper model whose encoder is used
    llm_source: str = ""  # registry name, path or hub id of the LLM
    vocoder: str = ""  # registry name or path of the unit vocoder
    llm_lora: dict | None = None  # our models: LoRA adapters trained on the LLM (lora.LoraConfig fields),
    # stored with the checkpoint
    lora_tasks: tuple[str, ...] = LORA_TASKS  # what the adapters serve: both tasks (merged into the LLM at
    # load), or ("repeat",) only: merged for the repeat task (ASR) alone, so the answers are the base LLM's,
    # as it answers typed text
    partner: PartnerConfig | None = None  # a second ear beside the encoder and ctc adaptor (see PartnerConfig)

    def __post_init__(self) -> None:
        if self.partner is not None and (self.projector.type != "ctc" or self.partner.projector.k != self.projector.k):
            raise ConfigError("a partner hears beside a ctc adaptor that stacks as many frames as its own")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OmniConfig:
        return cls(
            encoder=EncoderConfig(**d["encoder"]),
            projector=ProjectorConfig(**d["projector"]),
            speech_decoder=SpeechDecoderConfig(**d["speech_decoder"]),
            prompt=PromptConfig(**d.get("prompt", {})),
            encoder_source=d.get("encoder_source", ""),
            llm_source=d.get("llm_source", ""),
            vocoder=d.get("vocoder", ""),
            llm_lora=d.get("llm_lora"),
            lora_tasks=lora_tasks(d.get("lora_tasks", LORA_TASKS)),
            partner=PartnerConfig.from_dict(d["partner"]) if d.get("partner") else None,
        )
