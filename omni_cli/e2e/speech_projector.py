"""The speech adaptor (`speech_projector`), in two variants chosen by `ProjectorConfig.type`.

- "linear" (the published one): concatenate k consecutive encoder frames (dropping the
  remainder), then Linear -> ReLU -> Linear into the LLM's embedding space; every output
  frame is an LLM input position.
- "ctc" (ours): concatenate k frames, Linear, a few transformer layers, then a vector in
  the LLM's embedding space that is scored against the LLM's own (frozen) input embeddings
  of a token vocabulary, plus a learned blank: a CTC head over the LLM's tokens (or over its
  single-character tokens: `units` "chars"), trained on transcripts. The collapsed sequence
  (blanks dropped, repeats merged) is what the model heard; the LLM reads it as the
  embeddings of its own canonical tokens of that text, so speech arrives in the LLM's input
  space, one position per token (LegoSLM, arXiv 2505.11352; Soundwave). The embedding
  table and tokenizer are bound from the LLM (`bind`), never stored with the adaptor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dataclasses
import functools
import math
import re
import unicodedata

import torch
from torch import nn

from omni_cli.e2e.config import ProjectorConfig
from omni_cli.errors import ConfigError


def _stack(x: torch.Tensor, k: int) -> torch.Tensor:
    """(batch, frames, width) -> (batch, frames // k, width * k)."""
    batch, frames, width = x.shape
    keep = frames - frames % k
    return x[:, :keep].reshape(batch, keep // k, width * k)


class SpeechProjector(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.k = config.k
        self.linear1 = nn.Linear(config.encoder_width * config.k, config.hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(config.hidden, config.llm_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, encoder_width) -> (batch, frames // k, llm_width)."""
        return self.linear2(self.relu(self.linear1(_stack(x, self.k))))


def _sinusoids(length: int, width: int) -> torch.Tensor:
    table = _sinusoid_table(width)
    return table[:length] if length <= len(table) else _sinusoid_rows(length, width)


@functools.lru_cache(maxsize=8)
def _sinusoid_table(width: int, length: int = 2048) -> torch.Tensor:
    """Made once per width: every step of training asks for its own length."""
    return _sinusoid_rows(length, width)


def _sinusoid_rows(length: int, width: int) -> torch.Tensor:
    scales = torch.exp(-math.log(10000) / (width // 2 - 1) * torch.arange(width // 2))
    t = torch.arange(length)[:, None] * scales[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class CTCSpeechProjector(nn.Module):
    """The "ctc" adaptor: frames -> CTC posteriors over `config.vocab` LLM tokens + blank;
    the LLM reads the embeddings of the greedy, collapsed token sequence."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        if config.vocab < 1 or config.layers < 0:
            raise ConfigError("a ctc speech_projector needs vocab >= 1 and layers >= 0")
        self.config = config
        self.k = config.k
        self.linear1 = nn.Linear(config.encoder_width * config.k, config.hidden)
        layer = nn.TransformerEncoderLayer(config.hidden, config.heads, config.ffn, dropout=config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False) if config.layers else None
        self.norm = nn.LayerNorm(config.hidden)
        self.linear2 = nn.Linear(config.hidden, config.llm_width)
        # which LLM token each CTC class is; the blank is class `vocab` (the last)
        self.register_buffer("token_ids", torch.zeros(config.vocab, dtype=torch.long))
        self.blank_embedding = nn.Parameter(torch.zeros(config.llm_width))
        self.bias = nn.Parameter(torch.zeros(config.vocab + 1))
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self._llm: tuple = ()  # (input embeddings, tokenizer) of the LLM, bound at load; not ours to save
        self.token_lm = None  # config.ngram, a unit_lm.UnitNgram over LLM token ids loaded beside the weights

    @property
    def blank(self) -> int:
        return self.config.vocab

    def bind(self, embedding: nn.Embedding, tokenizer) -> None:
        self._llm = (embedding, tokenizer)

    def _table(self) -> torch.Tensor:
        if not self._llm:
            raise RuntimeError("the ctc speech_projector is not bound to an LLM (call bind)")
        return self._llm[0].weight

    def extend(self, token_ids: list[int]) -> ProjectorConfig:
        """Let the head emit these LLM tokens too (those it has are skipped), so a trained adaptor
        can go on learning from transcripts with words it never saw. A class is the token's frozen
        LLM embedding, so a new one is scored from the start; its bias starts at the median of
        the others'. Returns the config with the new `vocab` (the caller's model config takes it)."""
        have = set(self.token_ids.tolist())
        new = [t for t in dict.fromkeys(token_ids) if t not in have]
        if new:
            with torch.no_grad():
                bias = self.bias.detach()
                grown = torch.cat([bias[:-1], bias[:-1].median().expand(len(new)), bias[-1:]])
            self.token_ids = torch.cat([self.token_ids, torch.tensor(new, dtype=torch.long, device=self.token_ids.device)])
            self.bias = nn.Parameter(grown)
            self.config = dataclasses.replace(self.config, vocab=len(self.token_ids))
            self._kept_classes = None
        return self.config

    def targets(self, text: str) -> list[int]:
        """The class sequence the head learns for a transcript (tokens outside its vocabulary left out)."""
        index = getattr(self, "_index", None)
        if index is None or len(index) != self.config.vocab:
            self._index = index = {t: n for n, t in enumerate(self.token_ids.tolist())}
        return [index[t] for t in spell(self._llm[1], text, self.config.units) if t in index]

    def heard(self, x: torch.Tensor) -> str:
        """The text heard (greedy) in one utterance's encoder states (1, frames, width)."""
        return self.read(x)[1]

    def logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, frames, encoder_width) -> (batch, frames // k, vocab + 1) CTC logits; with
        `lengths` (valid encoder frames per item), padding is masked out of attention."""
        return self.head(self.states(x, lengths))

    def states(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, frames, encoder_width) -> (batch, frames // k, llm_width): what the CTC head
        compares with each class's LLM embedding (`logits` = `head(states)`)."""
        h = self.linear1(_stack(x, self.k))
        h = h + _sinusoids(h.shape[1], h.shape[2]).to(h)
        if self.layers is not None:
            mask = None
            if lengths is not None:
                valid = torch.div(lengths, self.k, rounding_mode="floor")
                mask = torch.arange(h.shape[1], device=h.device)[None, :] >= valid[:, None]
            h = self.layers(h, src_key_padding_mask=mask)
        return self.linear2(self.norm(h))

    def head(self, v: torch.Tensor) -> torch.Tensor:
        """(..., llm_width) `states` -> (..., vocab + 1) CTC logits: each position on its own."""
        return self.log_scale.exp() * v @ self._classes(v.dtype).T + self.bias

    def utterance_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(1, frames, encoder_width) -> (frames // k, vocab + 1) CTC logits of one utterance as
        it is heard: with a `window` in the config, speech longer than it is read in windows of
        that many positions, each giving all but `window_context` positions at its inner edges
        (so every position kept has that much context on both sides, or the utterance's end): the
        adaptor learned on utterances of at most about 10 s, and reads longer ones worse."""
        if x.shape[0] != 1:
            raise ValueError("the ctc speech_projector reads one utterance at a time")
        n, window, context = x.shape[1] // self.k, self.config.window, self.config.window_context
        if not window or n <= window:
            return self.logits(x)[0]
        parts, start = [], 0  # start: the first position still to give
        while start < n:
            hi = min(n, max(0, start - context) + window)
            lo = max(0, hi - window)
            end = n if hi == n else hi - context
            # the head (most of the cost over tens of thousands of classes) on the positions kept only
            parts.append(self.states(x[:, lo * self.k : hi * self.k])[0, start - lo : end - lo])
            start = end
        return self.head(torch.cat(parts))

    def _classes(self, dtype: torch.dtype) -> torch.Tensor:
        """(vocab + 1, llm_width): each class's LLM input embedding, the blank's last. Gathering
        them is most of an inference pass (about 45 MB for the default's 19k tokens), so without
        gradients the result is kept until a weight it comes from changes."""
        table = self._table()
        key = (table.data_ptr(), table._version, self.blank_embedding._version, self.token_ids._version, dtype, table.device)
        kept = getattr(self, "_kept_classes", None)
        if not torch.is_grad_enabled() and kept is not None and kept[0] == key:
            return kept[1]
        classes = torch.cat([table[self.token_ids].detach(), self.blank_embedding[None, :]]).to(dtype)
        if not torch.is_grad_enabled():
            self._kept_classes = (key, classes)
        return classes

    def decode(self, x: torch.Tensor) -> list[int]:
        """Greedy CTC over one utterance's encoder states (1, frames, width): LLM token ids."""
        return self.decode_batch([x[0]])[0]

    def decode_batch(self, states: list[torch.Tensor]) -> list[list[int]]:
        """Greedy CTC over several utterances' encoder states (each (frames, width)) as one padded
        batch (padding masked out): each one's LLM token ids."""
        lengths = torch.tensor([len(x) for x in states], device=states[0].device)
        return self.decode_padded(torch.nn.utils.rnn.pad_sequence(states, batch_first=True), lengths)

    def decode_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Greedy CTC over a padded batch of encoder states (batch, frames, width) with `lengths`
        valid frames each: each item's LLM token ids."""
        best = self.logits(x, lengths).argmax(-1)
        return [self._collapsed(row[:n]) for row, n in zip(best.tolist(), torch.div(lengths, self.k, rounding_mode="floor").tolist())]

    def _collapsed(self, best: list[int]) -> list[int]:
        """The LLM token ids of a frame-by-frame best class sequence (repeats merged, blanks dropped)."""
        ids, previous = [], None
        for c in best:
            if c != previous and c != self.blank:
                ids.append(c)
            previous = c
        return self.token_ids[torch.tensor(ids, dtype=torch.long)].tolist() if ids else []

    def classes_in(self, other: CTCSpeechProjector) -> torch.Tensor:
        """(vocab,) for each of this head's classes, the class of `other`'s head that emits the same
        LLM token, or -1 where it has none."""
        where = {t: n for n, t in enumerate(other.token_ids.tolist())}
        return torch.tensor([where.get(t, -1) for t in self.token_ids.tolist()], dtype=torch.long)

    def blended(self, logp: torch.Tensor, partner_logits: torch.Tensor, index: torch.Tensor, weight: float) -> torch.Tensor:
        """This head's log-probabilities of one utterance (frames, vocab + 1) blended with a
        partner's logits over the same speech (frames', its vocab + 1): `weight` x the partner's +
        (1 - weight) x its own, over the frames both have. The partner's are normalized over the
        classes it shares with this head (`index`, from `classes_in`) and its blank; where it has
        no class for one of this head's, this head's own log-probability stands in."""
        shared = index >= 0
        picked = torch.cat([index[shared].to(partner_logits.device), torch.tensor([partner_logits.shape[-1] - 1],
                                                                                device=partner_logits.device)])
        theirs_shared = partner_logits.float()[:, picked].log_softmax(-1)
        frames = min(len(logp), len(theirs_shared))
        own = logp[:frames]
        theirs = own.clone()
        columns = torch.cat([shared.nonzero()[:, 0], torch.tensor([self.blank])]).to(own.device)
        theirs[:, columns] = theirs_shared[:frames].to(own.device)
        return (1 - weight) * own + weight * theirs

    def hypotheses(self, x: torch.Tensor, width: int, also: Sequence[torch.Tensor] = (),
                   mix: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[tuple[list[int], float]]:
        """What one utterance's encoder states (1, frames, width) may say: the `width` best
        collapsed sequences of a CTC prefix beam search, as (LLM token ids, CTC log-probability),
        best first (the token n-gram's score, where the config names one, is in the search and in
        the score). With `width` 1 and no n-gram it is close to the greedy `decode`. `also`: the
        encoder states of the same speech played faster or slower (the config's `speeds`): the
        hypotheses of every copy are pooled, each scored by its exact CTC log-probability averaged
        over the copies (+ the n-gram's score), and the `width` best kept. `mix`: what the
        log-probabilities of `x` itself become before the search (a partner's blend); the config's
        `blank_penalty` is then taken from every frame's blank (of every copy)."""
        p, ids = self.config, self.token_ids.tolist()
        if p.ngram and self.token_lm is None:
            raise ConfigError(f"this adaptor hears with the token n-gram {p.ngram!r}, which is not loaded")
        lm = self.token_lm if p.ngram and p.ngram_weight else None
        found, logps = [], []
        for n, states in enumerate((x, *also)):
            logp = self.utterance_logits(states).float().log_softmax(-1)
            if n == 0 and mix is not None:
                logp = mix(logp)
            if p.blank_penalty:  # logp is this call's own (log_softmax's, or the blend's)
                logp[:, self.blank] -= p.blank_penalty
            logps.append(logp)
            found += ctc_prefix_beams(logp, self.blank, width, lm=lm, weight=p.ngram_weight if lm else 0.0,
                                      bonus=p.ngram_bonus if lm else 0.0, symbols=ids if lm else None)
        if also:
            pooled = list(dict.fromkeys(tuple(classes) for classes, _ in found))
            ctc = torch.tensor([ctc_logprobs(logp, pooled, self.blank) for logp in logps]).mean(0).tolist()
            found = sorted(((list(c), score + self._ngram_score(c, lm)) for c, score in zip(pooled, ctc)), key=lambda h: -h[1])
        return [([ids[c] for c in classes], score) for classes, score in found[:width]]

    def _ngram_score(self, classes: Sequence[int], lm) -> float:
        """The token n-gram's part of a hypothesis's score in the beam search (`ngram_weight` x its
        log-probability of the classes' tokens and the end, + `ngram_bonus` per token)."""
        if lm is None:
            return 0.0
        p, ids = self.config, self.token_ids
        return p.ngram_weight * lm.sequence_logprob([int(ids[c]) for c in classes]) + p.ngram_bonus * len(classes)

    def embed_heard(self, ids: list[int]) -> torch.Tensor:
        """(tokens, llm_width): the LLM's input embeddings of its canonical tokens of the text
        the CTC ids spell."""
        canonical = canonical_ids(self._llm[1], ids)
        table = self._table()
        return table[torch.tensor(canonical, dtype=torch.long, device=table.device)]

    def read(self, x: torch.Tensor, mix: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, str]:
        """(1, frames, encoder_width) -> ((tokens, llm_width) the LLM's input embeddings of its
        canonical tokens of the text heard (possibly none), that text); `mix` as in `hypotheses`."""
        if x.shape[0] != 1:
            raise ValueError("the ctc speech_projector reads one utterance at a time")
        if mix is not None:
            ids = self._collapsed(mix(self.utterance_logits(x).float().log_softmax(-1)).argmax(-1).tolist())
        elif self.config.window and x.shape[1] // self.k > self.config.window:
            ids = self._collapsed(self.utterance_logits(x).argmax(-1).tolist())
        else:  # as trained and evaluated in batches
            ids = self.decode(x)
        return self.embed_heard(ids), self._llm[1].decode(ids).strip()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, frames, encoder_width) -> (1, tokens, llm_width): `read`'s embeddings."""
        return self.read(x)[0].unsqueeze(0)


def ctc_prefix_beams(logp: torch.Tensor, blank: int, width: int, per_frame: int = 8, floor: float = -12.0,
                     lm=None, weight: float = 0.0, bonus: float = 0.0, symbols: list[int] | None = None,
                     ) -> list[tuple[list[int], float]]:
    """The `width` most probable collapsed class sequences of (frames, classes) log-probabilities,
    each summed over all its alignments, as (classes, score), best first: a CTC prefix beam
    search, each frame extending the prefixes by its `per_frame` most probable classes above
    `floor` only (a large vocabulary puts almost all of a frame's mass on a few); with `lm` (a
    `unit_lm.UnitNgram` over `symbols[class]`), `weight` x its log-probability and `bonus` per
    class are in the score."""
    from omni_cli.e2e.unit_lm import BeamUnits

    search = BeamUnits(blank, width, lm, weight, bonus, per_frame=per_frame, floor=floor, symbols=symbols)
    search.push(logp.detach().float().cpu().numpy())
    return search.nbest()


def ctc_logprobs(logp: torch.Tensor, sequences: Sequence[Sequence[int]], blank: int) -> list[float]:
    """Each collapsed class sequence's exact CTC log-probability (summed over all its alignments)
    under (frames, classes) log-probabilities; -inf where it cannot fit the frames."""
    if not sequences:
        return []
    cols = sorted({c for seq in sequences for c in seq} | {blank})  # only the classes named: a small problem
    index = {c: n for n, c in enumerate(cols)}
    small = logp[:, torch.tensor(cols, device=logp.device)].float().cpu()
    frames, n = small.shape[0], len(sequences)
    targets = torch.tensor([index[c] for seq in sequences for c in seq], dtype=torch.long)
    loss = torch.nn.functional.ctc_loss(small[:, None, :].expand(frames, n, len(cols)), targets,
                                        torch.full((n,), frames, dtype=torch.long),
                                        torch.tensor([len(seq) for seq in sequences], dtype=torch.long),
                                        blank=index[blank], reduction="none", zero_infinity=False)
    return (-loss).tolist()


CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 '.,?!-"  # what a "chars" head spells


def canonical_ids(tokenizer, ids: list[int]) -> list[int]:
    """The tokenizer's own tokens of the text LLM token ids spell (a CTC head may spell a text
    with other pieces than the tokenizer would): what the LLM reads for a heard transcript."""
    return tokenizer(tokenizer.decode(ids).strip(), add_special_tokens=False).input_ids


def normalize_chars(text: str) -> str:
    """Lower case, accents dropped, only `CHARS` (other characters become spaces), single spaces."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'")).encode("ascii", "ignore").decode().lower()
    return re.sub(r" +", " ", "".join(c if c in CHARS else " " for c in text)).strip()


def spell(tokenizer, text: str, units: str) -> list[int]:
    """LLM token ids of a transcript as a ctc head spells it: its tokens, or one token per character."""
    if units == "chars":
        ids = {c: tokenizer(c, add_special_tokens=False).input_ids for c in CHARS}
        return [i for c in normalize_chars(text) for i in ids[c][:1]]
    return tokenizer(text, add_special_tokens=False).input_ids


def ctc_vocabulary(tokenizer, texts: list[str], units: str = "tokens") -> list[int]:
    """The LLM tokens a ctc adaptor can emit: every token of its training transcripts, or the
    single-character tokens of `CHARS`."""
    if units == "chars":
        return sorted({tokenizer(c, add_special_tokens=False).input_ids[0] for c in CHARS})
    return sorted({t for text in texts for t in spell(tokenizer, text, units)})


def build_projector(config: ProjectorConfig) -> nn.Module:
    if config.type == "linear":
        return SpeechProjector(config)
    if config.type == "ctc":
        return CTCSpeechProjector(config)
    raise ConfigError(f"unknown speech_projector type {config.type!r} (linear | ctc)")
