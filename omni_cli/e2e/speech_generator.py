"""The non-autoregressive CTC speech decoder (`speech_generator`) and its streaming state.

Each LLM hidden state that emitted a text token is projected (`input_proj`), repeated
lambda times (`upsample`), run through N causal Llama decoder layers (transformers'
`LlamaDecoderLayer`), and classified (`output_proj`) into K units + blank (index K).
Its units are read by `reader()`: greedy CTC (argmax, consecutive repeats collapsed, blanks
dropped), or a CTC prefix beam search with a unit n-gram LM (`unit_lm`).

`SpeechDecoderStream` runs the same layers incrementally with a KV cache: for each new
text token only its lambda new positions are computed, so the work per token does not
grow with the answer's length (the published code re-runs the whole prefix after every
token), and the units equal a full pass over all hidden states. Knows nothing about text.
"""

from __future__ import annotations

import torch
from torch import nn

from omni_cli.e2e.config import SpeechDecoderConfig
from omni_cli.e2e.unit_lm import BeamUnits, GreedyUnits, UnitNgram
from omni_cli.errors import ConfigError


def llama_config(config: SpeechDecoderConfig):
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling:
        rope = {**config.rope_scaling, "rope_theta": config.rope_theta}
        rope.setdefault("rope_type", rope.pop("type", "default"))
    cfg = LlamaConfig(
        hidden_size=config.width,
        intermediate_size=config.ffn,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_positions,
        rope_parameters=rope,
        vocab_size=1,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation="sdpa",
    )
    if config.attention_window is not None:
        # a rolling KV cache of the last window - 1 positions per layer
        cfg.sliding_window = config.attention_window
        cfg.layer_types = ["sliding_attention"] * config.n_layers
    return cfg


class SpeechGenerator(nn.Module):
    def __init__(self, config: SpeechDecoderConfig):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        self.config = config
        self.blank = config.num_units
        lcfg = llama_config(config)
        self.input_proj = nn.Linear(config.llm_width, config.width)
        self.token_proj = nn.Linear(config.llm_width, config.width, bias=False) if config.token_input else None
        if config.lookahead and not config.token_input:
            raise ConfigError("a speech decoder with lookahead reads the tokens' embeddings: it needs token_input")
        self.next_proj = nn.Linear(config.llm_width, config.width, bias=False) if config.lookahead else None
        self.sub_position = nn.Parameter(torch.zeros(config.upsample, config.width)) if config.sub_positions else None
        self.layers = nn.ModuleList([LlamaDecoderLayer(lcfg, i) for i in range(config.n_layers)])
        self.output_proj = nn.Linear(config.width, config.num_units + 1)
        self.rotary = LlamaRotaryEmbedding(lcfg)
        self.llama_config = lcfg
        self.unit_lm: UnitNgram | None = None  # config.lm, loaded beside the weights (not a parameter)

    def reader(self) -> GreedyUnits | BeamUnits:
        """How units are read from the decoder's log-probabilities: greedy CTC, or (config.beam > 1)
        the CTC prefix beam search with the unit LM fused in."""
        c = self.config
        if c.beam <= 1:
            return GreedyUnits(self.blank)
        if c.lm and self.unit_lm is None:
            raise ConfigError(f"this speech decoder reads its units with the unit LM {c.lm!r}, which is not loaded")
        return BeamUnits(self.blank, c.beam, self.unit_lm if c.lm else None, c.lm_weight, c.length_bonus, max_pending=c.max_pending)

    def resampled(self, upsample: int) -> SpeechGenerator:
        """A copy that repeats each state `upsample` times: the same weights, the attention window
        scaled to see as many tokens back, the learned sub-position vectors interpolated along the
        copies (the first and last kept). A start for training at a new lambda (more positions a
        token: room for words with many units), not a model that works as it is."""
        import dataclasses

        c = self.config
        window = None if c.attention_window is None else -(-c.attention_window * upsample // c.upsample)
        new = SpeechGenerator(dataclasses.replace(c, upsample=upsample, attention_window=window))
        state = dict(self.state_dict())
        if self.sub_position is not None:
            old = state.pop("sub_position").float()
            at = torch.linspace(0, len(old) - 1, upsample)
            low = at.floor().long().clamp(max=max(0, len(old) - 2))
            high = (low + 1).clamp(max=len(old) - 1)
            frac = (at - low)[:, None]
            state["sub_position"] = old[low] * (1 - frac) + old[high] * frac
        new.load_state_dict(state)
        new.unit_lm = self.unit_lm
        return new.to(device=self.output_proj.weight.device, dtype=self.output_proj.weight.dtype)

    def upsample(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, M, width) -> (batch, M * lambda, width), each state repeated lambda times (with
        `sub_positions`, copy j of every state plus the learned vector j)."""
        x = hidden.repeat_interleave(self.config.upsample, dim=1)
        if self.sub_position is not None:
            x = x + self.sub_position.to(x.dtype).repeat(hidden.shape[1], 1)
        return x

    def project(self, hidden: torch.Tensor, tokens: torch.Tensor | None = None, following: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, M, llm_width) states (and, with token_input, the (batch, M, llm_width) input
        embeddings of the tokens they emitted; with lookahead, `following`: each one's next
        token's, zeros after the last) -> (batch, M * lambda, width) decoder inputs."""
        x = self.input_proj(hidden)
        if self.token_proj is not None:
            if tokens is None:
                raise ValueError("this speech decoder reads the emitted tokens' embeddings beside the hidden states")
            x = x + self.token_proj(tokens.to(x.dtype))
        if self.next_proj is not None:
            if following is None:
                raise ValueError("this speech decoder reads each token's next token's embedding (lookahead)")
            x = x + self.next_proj(following.to(x.dtype))
        return self.upsample(x)

    def following(self, tokens: torch.Tensor | None, lengths: torch.Tensor | None = None) -> torch.Tensor | None:
        """With lookahead, the next tokens' embeddings for (batch, M, llm_width) `tokens`, zeros
        after each item's last (`lengths` valid tokens each; default all M); else None."""
        if self.next_proj is None or tokens is None:
            return None
        nxt = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)
        if lengths is not None:
            keep = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < (lengths[:, None] - 1)
            nxt = nxt * keep[..., None].to(nxt.dtype)
        return nxt

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.llama_config) if self.config.attention_window else DynamicCache()

    def logits(self, x: torch.Tensor, past: int = 0, cache=None) -> torch.Tensor:
        """Unit logits for upsampled positions past .. past + T - 1, given (batch, T, width)
        decoder inputs (`project`).

        With `cache` (from `new_cache`, holding positions before `past`: all of them, or the
        last window - 1), attention reaches back over them. The mask is causal (and windowed)
        and explicit, so a pass in pieces is exact whatever `past` is."""
        t = x.shape[1]
        window = self.config.attention_window
        cached = 0 if cache is None else (past if window is None else min(past, window - 1))
        positions = torch.arange(past, past + t, device=x.device).unsqueeze(0)
        keys = torch.arange(past - cached, past + t, device=x.device)
        delta = positions[0].unsqueeze(1) - keys.unsqueeze(0)  # query position - key position
        mask = delta >= 0
        if window is not None:
            mask &= delta < window
        mask = mask[None, None]  # (1, 1, T, cached + T)
        cos_sin = self.rotary(x, positions)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=cache is not None, position_embeddings=cos_sin)
            x = x[0] if isinstance(x, tuple) else x
        return self.output_proj(x)

    @torch.inference_mode()
    def predict(self, hidden: torch.Tensor, tokens: torch.Tensor | None = None) -> list[int]:
        """Full pass: (M, llm_width) hidden states (and their tokens' embeddings) -> collapsed unit sequence."""
        dtype = self.input_proj.weight.dtype
        tokens = None if tokens is None else tokens.unsqueeze(0).to(dtype)
        x = self.project(hidden.unsqueeze(0).to(dtype), tokens, self.following(tokens))
        logp = torch.log_softmax(self.logits(x)[0].float(), -1).detach().cpu().numpy()
        reader = self.reader()  # a token's positions at a time, as `SpeechDecoderStream` reads them
        step = self.config.upsample
        return [u for i in range(0, len(logp), step) for u in reader.push(logp[i : i + step])] + reader.flush()

    def ctc_loss(self, hidden: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
                 tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss: sum of CTC over the batch / total target length (zero_infinity).

        hidden (B, M, llm_width) padded; lengths (B,) valid states; targets (B, U) padded
        deduplicated units; target_lengths (B,); tokens (B, M, llm_width) with token_input.
        Padding positions come after each item's valid ones, so causal attention keeps them out."""
        logp = torch.log_softmax(self.logits(self.project(hidden, tokens, self.following(tokens, lengths))).float(), dim=-1)
        loss = nn.functional.ctc_loss(
            logp.transpose(0, 1), targets, lengths * self.config.upsample, target_lengths,
            blank=self.blank, reduction="sum", zero_infinity=True,
        )
        return loss / target_lengths.sum().clamp(min=1)


class SpeechDecoderStream:
    """Incremental decoding state: feed one hidden state per text token, get its new units;
    `flush` after the last (a decoder with lookahead holds each token back until the next)."""

    def __init__(self, generator: SpeechGenerator):
        self.generator = generator
        self.cache = generator.new_cache()
        self.past = 0
        self.reader = generator.reader()
        self.held: tuple[torch.Tensor, torch.Tensor | None] | None = None  # lookahead: the token waiting for its next

    @torch.inference_mode()
    def push(self, hidden: torch.Tensor, token: torch.Tensor | None = None) -> list[int]:
        """(llm_width,) state that emitted one text token (and, with token_input, that token's
        (llm_width,) input embedding) -> the units it adds (collapsed); with lookahead, the
        units of the token before it."""
        if self.generator.next_proj is None:
            return self._decode(hidden, token, None)
        held, self.held = self.held, (hidden, token)
        return [] if held is None else self._decode(*held, token)

    @torch.inference_mode()
    def flush(self) -> list[int]:
        """The units still held back (lookahead: the last token's, with no token after it)."""
        held, self.held = self.held, None
        units = [] if held is None else self._decode(*held, torch.zeros_like(held[1]))
        return units + self.reader.flush()

    def _decode(self, hidden: torch.Tensor, token: torch.Tensor | None, following: torch.Tensor | None) -> list[int]:
        g = self.generator
        dtype = g.input_proj.weight.dtype

        def row(v):
            return None if v is None else v.reshape(1, 1, -1).to(dtype)

        x = g.project(row(hidden), row(token), row(following))
        logits = g.logits(x, past=self.past, cache=self.cache)[0]
        self.past += len(logits)
        return self.reader.push(torch.log_softmax(logits.float(), -1).detach().cpu().numpy())
