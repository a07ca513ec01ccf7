"""The speech LLM: speech encoder -> speech_projector -> any transformers causal LM, plus
the CTC speech_generator reading the LLM's hidden states.

The adaptor outputs replace the `<speech>` placeholder of the chat prompt; generation is
`omni_cli.llm.stream_generate` over the prompt's embeddings, asking for the hidden state
that emitted each token. Streaming (text + units + audio events) is in `pipeline.py`.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import closing, contextmanager

import numpy as np
import torch
from torch import nn

from omni_cli.e2e.config import SPEECH_PLACEHOLDER, OmniConfig, PromptConfig
from omni_cli.e2e.speech_encoder import SpeechEncoder
from omni_cli.e2e.speech_generator import SpeechGenerator
from omni_cli.e2e.speech_projector import canonical_ids
from omni_cli.errors import ConfigError
from omni_cli.llm import ChatLLM, GenerationOptions, TokenStep, stream_generate


RESCORE_MAX_TOKENS = 256  # longer hypotheses (minutes of speech) are taken as the CTC ranks them: the LLM's
# logits over every position of every hypothesis would take gigabytes


def token_tree(seqs: list[list[int]]) -> tuple[list[int], list[int], torch.Tensor, list[list[int]]]:
    """The distinct beginnings of token sequences as the nodes of a tree, each after its parent:
    each node's token and depth (its position after the tree's root), (nodes, nodes) which node
    may attend to which (itself and its ancestors), and each sequence's path of nodes."""
    index: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    depths: list[int] = []
    parents: list[int] = []
    paths = []
    for seq in seqs:
        path: list[int] = []
        for depth, token in enumerate(seq):
            key = (path[-1] if path else -1, token)
            if key not in index:
                index[key] = len(tokens)
                tokens.append(token)
                depths.append(depth)
                parents.append(key[0])
            path.append(index[key])
        paths.append(path)
    ancestry = torch.zeros((len(tokens), len(tokens)), dtype=torch.bool)
    for node, parent in enumerate(parents):
        if parent >= 0:
            ancestry[node] = ancestry[parent]
        ancestry[node, node] = True
    return tokens, depths, ancestry, paths


def loops(text: str, heard: str, n: int = 4) -> bool:
    """Whether `text` says some run of `n` words more often than `heard` does (a repeat that
    loops: "I'm getting references of different trips. I'm getting references of ...")."""
    def runs(t: str) -> Counter:
        words = re.findall(r"[\w']+", t.lower())
        return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))

    said, there = runs(text), runs(heard)
    return any(c > 1 and c > there[g] for g, c in said.items())


class SpeechLLM(nn.Module):
    def __init__(self, config: OmniConfig, encoder: SpeechEncoder, projector: nn.Module, llm: ChatLLM, generator: SpeechGenerator):
        super().__init__()
        self.config = config
        self.speech_encoder = encoder
        self.speech_projector = projector
        if hasattr(projector, "bind"):  # the ctc adaptor scores against the LLM's embeddings
            projector.bind(llm.model.get_input_embeddings(), llm.tokenizer)
        self.llm_model = llm.model  # registered, so .to()/.eval() reach it
        self.llm = llm
        self.speech_generator = generator
        # a second ear (config.partner): another Whisper's encoder and the ctc adaptor trained on it
        self.partner_encoder: SpeechEncoder | None = None
        self.partner_projector: nn.Module | None = None
        self._partner_classes: torch.Tensor | None = None
        # LoRA adapters loaded with the model: merged into the LLM at load, or, where they serve the
        # repeat task alone (config.lora_tasks), kept apart and merged while it runs (`repeating`)
        self.loaded_lora: dict[str, torch.Tensor] = {}
        self._said_ids: dict[int, int] = {}  # said_token_id's answers, as asked

    def lora_weights(self) -> dict[str, torch.Tensor]:
        """The LLM's LoRA adapters: those being trained (injected), else those loaded with the model."""
        from omni_cli.e2e.lora import lora_state

        return lora_state(self.llm.model) or self.loaded_lora

    @property
    def lora_merged(self) -> bool:
        """Whether the loaded adapters are in the LLM's weights (they serve answers too)."""
        return bool(self.loaded_lora) and "answer" in self.config.lora_tasks

    @contextmanager
    def repeating(self) -> Iterator[None]:
        """The LLM as the repeat task runs it: adapters that serve only that task merged for its
        duration (answers run on the LLM as it is). The LLM's kept prompt cache was computed with
        other weights, so it is dropped on the way in and out."""
        if not self.loaded_lora or self.lora_merged:
            yield
            return
        from omni_cli.e2e.lora import LoraConfig, lora_applied

        assert self.config.llm_lora is not None
        lora = LoraConfig.from_dict(self.config.llm_lora)
        self.llm.forget()
        try:
            with lora_applied(self.llm.model, self.loaded_lora, lora):
                yield
        finally:
            self.llm.forget()

    def set_partner(self, encoder: SpeechEncoder | None, projector: nn.Module | None, encoder_source: str = "",
                    weight: float = 0.5) -> None:
        """Hear with a second ear (see `config.PartnerConfig`): `encoder` (from `encoder_source`) and
        the ctc `projector` trained on it, blended with this model's adaptor at `weight`; None drops it."""
        from omni_cli.e2e.config import PartnerConfig

        if encoder is None or projector is None:
            self.partner_encoder = self.partner_projector = self._partner_classes = None
            self.config = dataclasses.replace(self.config, partner=None)
            return
        # the partner's head is only read: no search of its own (its window it keeps)
        read_only = dataclasses.replace(projector.config, beam=1, lm_weight=0.0, length_bonus=0.0, ngram="",
                                        ngram_weight=0.0, ngram_bonus=0.0, speeds=(), blank_penalty=0.0)
        partner = PartnerConfig(encoder_source=encoder_source, encoder=encoder.config, projector=read_only, weight=weight)
        # checked (the weight, both adaptors ctc and stacking alike) before anything changes
        self.config = dataclasses.replace(self.config, partner=partner)
        projector.config, projector.token_lm = read_only, None
        projector.bind(self.llm.model.get_input_embeddings(), self.llm.tokenizer)
        self.partner_encoder, self.partner_projector = encoder.eval(), projector.eval()
        self._partner_classes = self.speech_projector.classes_in(projector)

    def _partner_mix(self, audio: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What the adaptor's log-probabilities of `audio` become with the partner's blended in
        (None without a partner)."""
        if self.partner_projector is None or self.config.partner is None:
            return None
        encoder, projector = self.partner_encoder, self.partner_projector
        assert encoder is not None and self._partner_classes is not None
        dtype = next(p for p in projector.parameters() if p.is_floating_point()).dtype
        logits = projector.utterance_logits(encoder.encode(audio).unsqueeze(0).to(dtype))
        if len(self._partner_classes) != self.speech_projector.config.vocab:  # the head grew in training
            self._partner_classes = self.speech_projector.classes_in(projector)
        index, weight = self._partner_classes, self.config.partner.weight
        return lambda logp: self.speech_projector.blended(logp, logits, index, weight)

    @property
    def device(self) -> torch.device:
        return next(self.speech_projector.parameters()).device

    def said_token_id(self, token_id: int) -> int:
        """The token whose embedding the speech decoder reads for `token_id`: itself, or, where
        its text mixes markdown marks with what a voice says (SmolLM2's ":**" in "Goods:** Baked",
        "**," or ".**"), the token of that text without the marks if it is one (":"). The mark
        is never said (`said_answer`'s units leave it out), so the decoder reads the token whose
        sound it is: it had learned to say ":**" as something ("cool")."""
        said = self._said_ids.get(token_id)
        if said is None:
            from omni_cli.text import unmarked

            tok = self.llm.tokenizer
            text = "" if token_id in tok.all_special_ids else tok.decode([token_id])  # "<|im_end|>" is no markdown
            bare = unmarked(text)
            ids = tok(bare, add_special_tokens=False).input_ids if bare != text and bare.strip() else []
            said = self._said_ids[token_id] = ids[0] if len(ids) == 1 else token_id
        return said

    def said_token_ids(self, token_ids) -> list[int]:
        """`said_token_id` of each id."""
        return [self.said_token_id(int(i)) for i in token_ids]

    def token_embedding(self, token_id: int) -> torch.Tensor | None:
        """The LLM's input embedding of a token as the speech decoder reads it (`said_token_id`),
        for a speech decoder that reads it (else None)."""
        if not self.config.speech_decoder.token_input:
            return None
        return self.llm.model.get_input_embeddings().weight[self.said_token_id(token_id)]

    def speech_features(self, audio: np.ndarray) -> torch.Tensor:
        """(n, llm_width) adaptor outputs for 16 kHz audio."""
        return self.hear(audio)[0]

    def hear(self, audio: np.ndarray, history: list[dict[str, str]] | None = None,
             speech: list[tuple[float, float]] | None = None) -> tuple[torch.Tensor, str | None]:
        """The adaptor outputs for 16 kHz audio, and, where they are the embeddings of LLM
        tokens (a ctc adaptor), the text of those tokens: exactly what the LLM reads, so a
        conversation's history can hold it as the user's turn (None for continuous features).
        A ctc adaptor hearing by beam search lets the LLM choose in the prompt the answer will
        have (with `history`). With the encoder config's `speech_margin`, only the speech and
        that margin around it is heard (`speech`: its spans, where the caller has found them)."""
        features, text, _ = self.listen(audio, history, speech)
        return features, text

    def listen(self, audio: np.ndarray, history: list[dict[str, str]] | None = None,
               speech: list[tuple[float, float]] | None = None) -> tuple[torch.Tensor, str | None, list[list[int]]]:
        """`hear`, and the transcripts the LLM chose among (a ctc adaptor hearing by beam
        search: its hypotheses' LLM token ids, best first by CTC score; else none)."""
        margin = self.config.encoder.speech_margin
        if margin is not None:
            from omni_cli.vad import around_speech

            audio = around_speech(audio, margin, speech)
        states = self.speech_encoder.encode(audio)
        dtype = next(p for p in self.speech_projector.parameters() if p.is_floating_point()).dtype
        x = states.unsqueeze(0).to(dtype)
        if self.config.projector.type == "ctc":
            proj, mix = self.speech_projector, self._partner_mix(audio)
            if proj.config.beam > 1:
                found = proj.hypotheses(x, proj.config.beam, also=self._played_at(audio, proj.config.speeds, dtype), mix=mix)
                ids = self.most_plausible(found, history)
                return proj.embed_heard(ids), self.llm.tokenizer.decode(ids).strip(), [h for h, _ in found]
            return *proj.read(x, mix), []
        return self.speech_projector(x)[0], None, []

    def _played_at(self, audio: np.ndarray, speeds: tuple[float, ...], dtype: torch.dtype) -> list[torch.Tensor]:
        """The encoder states (1, frames, width) of the audio played at each of `speeds`: one
        padded encoder batch of the copies where the encoder reads real lengths."""
        from omni_cli.e2e.speech_encoder import speed_perturb

        if not speeds:
            return []
        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        copies = [speed_perturb(audio, f).numpy() for f in speeds]
        encoder = self.speech_encoder
        if encoder.config.padded:
            return [encoder.encode(c).unsqueeze(0).to(dtype) for c in copies]
        weight = next(encoder.parameters())
        states, valid = encoder.encode_batch([encoder.mel(c)[0].to(weight.device, weight.dtype) for c in copies])
        return [s[None, :n].to(dtype) for s, n in zip(states, valid.tolist())]

    def hear_with(self, beam: int | None) -> None:
        """Override how a ctc adaptor hears: `beam` hypotheses for the LLM to choose among (1:
        the greedy transcript, fastest); None keeps the model's own setting."""
        if beam is not None:
            self.set_hearing("--e2e-beam", beam=beam)

    def set_hearing(self, option: str, token_lm=None, **fields) -> None:
        """Set how a ctc adaptor hears (its config's `beam`, `lm_weight`, `length_bonus`,
        `blank_penalty`, `ngram`, `ngram_weight`, `ngram_bonus`, `window`, `window_context`, `speeds`;
        `token_lm`: a loaded `unit_lm.UnitNgram` over LLM token ids, kept as the file
        `fields["ngram"]` names), in the model's config and the adaptor's alike; `option` names what
        the user gave, for the error a model with another adaptor gives."""
        if self.config.projector.type != "ctc":
            raise ConfigError(f"{option} is for a model with a ctc adaptor (this one's adaptor is "
                              f"{self.config.projector.type!r})")
        proj = self.speech_projector
        config = dataclasses.replace(proj.config, **fields)
        if token_lm is not None:
            if int(proj.token_ids.max()) >= token_lm.num_units:
                raise ConfigError(f"the token n-gram knows {token_lm.num_units} symbols, fewer than this LLM's "
                                  "tokens the adaptor emits: it was counted for another tokenizer")
            proj.token_lm = token_lm
        if config.ngram and proj.token_lm is None:
            raise ConfigError("the adaptor's beam search names a token n-gram, but none is given (--token-lm FILE)")
        if not config.ngram and config.ngram_weight:
            raise ConfigError("a token n-gram weight needs a token n-gram (--token-lm FILE)")
        proj.config = config
        self.config = dataclasses.replace(self.config, projector=config)

    def set_unit_reading(self, unit_lm=None, **fields) -> None:
        """Set how the speech decoder's units are read (its config's `beam`, `lm`, `lm_weight`,
        `length_bonus`; `unit_lm`: a loaded `unit_lm.UnitNgram`, kept as the file `fields["lm"]`
        names), in the model's config and the decoder's alike."""
        gen = self.speech_generator
        config = dataclasses.replace(gen.config, **fields)
        if unit_lm is not None:
            if unit_lm.num_units != config.num_units:
                raise ConfigError(f"the unit LM knows {unit_lm.num_units} units but the speech decoder predicts {config.num_units}")
            gen.unit_lm = unit_lm
        if config.lm and gen.unit_lm is None:
            raise ConfigError("the speech decoder's beam search names a unit LM, but none is given (--unit-lm FILE)")
        if config.beam > 1 and not config.lm and config.lm_weight:
            raise ConfigError("a unit LM weight needs a unit LM (--unit-lm FILE)")
        gen.config = config
        self.config = dataclasses.replace(self.config, speech_decoder=config)

    def set_speech_margin(self, seconds: float | None) -> None:
        """Hear only the speech and `seconds` around it (None: the whole input), in the model's
        config and its encoder's alike."""
        encoder = dataclasses.replace(self.config.encoder, speech_margin=seconds)
        self.speech_encoder.config = encoder
        self.config = dataclasses.replace(self.config, encoder=encoder)

    def warm_hearing(self) -> None:
        """Run the LLM's choice among hypotheses once (a ctc adaptor hearing by beam search), on
        as many made-up transcripts as the beam keeps, so the first question pays no first-call cost."""
        if self.config.projector.type != "ctc":
            return
        p = self.speech_projector.config
        if p.beam > 1 and p.lm_weight > 0:
            tokenizer = self.llm.tokenizer
            texts = ["Hello" + " there" * n + "?" for n in range(p.beam)]
            self.plausibility([(tokenizer(t, add_special_tokens=False).input_ids, 0.0) for t in texts])

    def most_plausible(self, hypotheses: list[tuple[list[int], float]], history: list[dict[str, str]] | None = None) -> list[int]:
        """Of a ctc adaptor's hypotheses (LLM token ids, CTC log-probability), best first, the
        one `plausibility` scores highest: what the LLM finds most plausible among what it may
        have heard (the first where `lm_weight` is 0 or one is over RESCORE_MAX_TOKENS long).
        The LLM keeps the KV cache of the prompt with the chosen one, so the answer computes
        only what follows it (`stream_features` with `heard`)."""
        p = self.speech_projector.config
        if len(hypotheses) < 2 or p.lm_weight == 0 or max(len(ids) for ids, _ in hypotheses) > RESCORE_MAX_TOKENS:
            return hypotheses[0][0] if hypotheses else []
        scores = self._rescored(hypotheses, history, keep_best=True)
        return hypotheses[max(range(len(scores)), key=scores.__getitem__)][0]

    def plausibility(self, hypotheses: list[tuple[list[int], float]], history: list[dict[str, str]] | None = None) -> list[float]:
        """Each hypothesis's CTC log-probability + `lm_weight` x the LLM's log-probability of its
        text as the user's message in the model's prompt (with `history`), up to the token
        that closes it, + `length_bonus` per token scored."""
        return self._rescored(hypotheses, history, keep_best=False)

    @torch.inference_mode()  # the kept KV cache is made of inference tensors
    def _rescored(self, hypotheses: list[tuple[list[int], float]], history: list[dict[str, str]] | None,
                  keep_best: bool) -> list[float]:
        """`plausibility`, the LLM run once over a tree of the hypotheses' tokens (each distinct
        beginning once, each token attending to the prompt and its own ancestors), after the
        prompt's KV cache the LLM keeps; with `keep_best`, the cache given back holds the prompt
        and the best hypothesis (its path through the tree), else the prompt alone."""
        p = self.speech_projector.config
        tokenizer, llm = self.llm.tokenizer, self.llm
        before, after = self.prompt_ids(history)
        seqs = [canonical_ids(tokenizer, ids) + after[:1] for ids, _ in hypotheses]
        # every path starts at the prompt's last token before the speech, whose logits score the first heard token
        tokens, depths, ancestry, paths = token_tree([before[-1:] + q for q in seqs])
        past = len(before) - 1
        dev = self.device
        cache = llm.prefix_cache(before[:-1])
        kept = before[:-1]
        try:
            dtype = next(llm.model.parameters()).dtype
            mask = torch.zeros((1, 1, len(tokens), past + len(tokens)), dtype=dtype, device=dev)
            mask[0, 0, :, past:].masked_fill_(~ancestry.to(dev), torch.finfo(dtype).min)
            logits = llm.model(input_ids=torch.tensor([tokens], device=dev), attention_mask=mask, cache=cache, use_cache=True,
                               position_ids=(past + torch.tensor(depths, device=dev))[None]).logits[0].float()
            norm = logits.logsumexp(-1)  # once per node, however many hypotheses pass through it
            scores = []
            for (_, ctc), path, q in zip(hypotheses, paths, seqs):
                rows, nxt = torch.tensor(path[:-1], device=dev), torch.tensor([tokens[n] for n in path[1:]], device=dev)
                lm = (logits[rows, nxt] - norm[rows]).sum().item()
                scores.append(ctc + p.lm_weight * lm + p.length_bonus * len(q))
            if keep_best:
                best = max(range(len(scores)), key=scores.__getitem__)
                cache.keep_positions(list(range(past)) + [past + n for n in paths[best]])
                kept = before + seqs[best]
        finally:
            llm.keep(cache, kept)  # positions past those `kept` names are cut when it is next lent
        return scores

    def prompt_ids(
        self, history: list[dict[str, str]] | None = None, prompt: PromptConfig | None = None
    ) -> tuple[list[int], list[int]]:
        """The chat prompt's token ids before and after the speech (the model's own prompt
        unless `prompt` is given)."""
        p = prompt or self.config.prompt
        tokenizer = self.llm.tokenizer
        user = f"{SPEECH_PLACEHOLDER}\n{p.instruction}" if p.instruction else SPEECH_PLACEHOLDER
        messages = [{"role": "system", "content": p.system}, *(history or []), {"role": "user", "content": user}]
        if p.template == "llama3-omni":
            # the published prompt, built as its code builds it: a literal Llama-3 string,
            # the first chunk tokenized with the tokenizer's BOS (so BOS appears twice, as
            # in the published model's training and inference), the second without
            text = "<|begin_of_text|>"
            for m in messages:
                text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
            text += "<|start_header_id|>assistant<|end_header_id|>\n\n"
            before, after = text.split(SPEECH_PLACEHOLDER)
            return tokenizer(before).input_ids, tokenizer(after, add_special_tokens=False).input_ids
        if p.template == "chat":
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            before, after = text.split(SPEECH_PLACEHOLDER)
            return tokenizer(before, add_special_tokens=False).input_ids, tokenizer(after, add_special_tokens=False).input_ids
        raise ConfigError(f"unknown prompt template {p.template!r} (chat | llama3-omni)")

    def prompt_embeds(
        self, features: torch.Tensor, history: list[dict[str, str]] | None = None, prompt: PromptConfig | None = None
    ) -> torch.Tensor:
        """(1, T, llm_width): the chat prompt (the model's own unless `prompt` is given) with
        the speech features at the placeholder."""
        ids_before, ids_after = self.prompt_ids(history, prompt)
        embed = self.llm.model.get_input_embeddings()
        dev = self.device
        parts = [
            embed(torch.tensor([ids_before], device=dev)),
            features.unsqueeze(0).to(embed.weight.dtype),
            embed(torch.tensor([ids_after], device=dev)),
        ]
        return torch.cat(parts, dim=1)

    @torch.inference_mode()
    def stream_features(
        self, features: torch.Tensor, options: GenerationOptions = GenerationOptions(), history: list[dict[str, str]] | None = None,
        prompt: PromptConfig | None = None, heard: str | None = None,
        allowed: Callable[[list[int]], Collection[int]] | None = None,
    ) -> Iterator[TokenStep]:
        """Text tokens with the hidden states that emitted them (the last step is the end token).
        `heard`: the text `hear` gave with `features`; where they are exactly the LLM's
        embeddings of its tokens (a ctc adaptor), the prompt is token ids throughout, so the KV
        cache kept while hearing, and after the answer the whole turn's, is reused. `allowed`:
        constrained decoding (`llm.stream_generate`)."""
        before, after = self.prompt_ids(history, prompt)  # the fixed beginning: its KV cache is kept
        ids = self._embedded_ids(features, heard)
        if ids is not None:
            whole = before + ids + after
            yield from stream_generate(self.llm, input_ids=torch.tensor([whole], device=self.device), options=options,
                                       output_hidden=True, prefix=whole[:-1], allowed=allowed)
            return
        embeds = self.prompt_embeds(features, history, prompt)
        yield from stream_generate(self.llm, inputs_embeds=embeds, options=options, output_hidden=True, prefix=before,
                                   allowed=allowed)

    def _embedded_ids(self, features: torch.Tensor, heard: str | None) -> list[int] | None:
        """The LLM token ids of `heard` where `features` are exactly their input embeddings, else None."""
        if heard is None or self.config.projector.type != "ctc":
            return None
        ids = self.llm.tokenizer(heard, add_special_tokens=False).input_ids
        table = self.llm.model.get_input_embeddings().weight
        if len(ids) != len(features) or not ids:
            return None
        same = torch.equal(table[torch.tensor(ids, device=table.device)], features.to(table.device, table.dtype))
        return ids if same else None

    def repeat_prompt(self) -> PromptConfig:
        """The model's prompt asking it to say exactly what it heard (its ASR task)."""
        return dataclasses.replace(self.config.prompt, instruction=self.config.prompt.repeat)

    @torch.inference_mode()
    def transcribe(self, audio: np.ndarray, max_new_tokens: int | None = None, features: torch.Tensor | None = None,
                   heard: str | None = None, alternatives: list[list[int]] | None = None) -> str:
        """What the model heard: its own greedy answer to the repeat prompt (no repetition
        penalty, since a transcript may repeat words). Where a ctc adaptor heard by beam search,
        the repeat chooses token by token among the transcripts the LLM chose among (each next
        token one that some hypothesis goes on with, the end where one is complete): the LLM
        says which of them it heard, and no word the adaptor did not hear. Otherwise at most
        about 6 tokens a second, and with a ctc adaptor (features that are the heard tokens) at
        most a quarter more tokens than it heard, so the repeat cannot run on past what was said;
        it ends at its first line break, and where it loops (a run of words said again that the
        adaptor heard once) it gives the adaptor's own text.
        `features`, `heard`, `alternatives`: what `listen` gives for `audio`, where the caller has
        heard it already (without `alternatives`, the repeat is free)."""
        limit = max_new_tokens or max(16, int(len(audio) / 16000 * 6) + 8)
        if features is None:
            features, heard, alternatives = self.listen(audio)
        allowed = None
        if alternatives and len(alternatives) > 1 and heard is not None and self.config.projector.type == "ctc":
            allowed, longest = self._among(alternatives)
            limit = max_new_tokens or longest + 1
        elif max_new_tokens is None and self.config.projector.type == "ctc":
            limit = min(limit, len(features) + max(4, len(features) // 4))
        options = GenerationOptions(max_new_tokens=limit, repetition_penalty=1.0)
        text = ""
        steps = self.stream_features(features, options, prompt=self.repeat_prompt(), heard=heard, allowed=allowed)
        with self.repeating(), closing(steps):
            for step in steps:
                text += step.text
                if "\n" in text.lstrip():  # a transcript is one line: past it the prompt's words leak ("Hey!\nRepeat what was")
                    break
        text = text.strip().split("\n")[0].strip()
        return heard if heard and loops(text, heard) else text

    def _among(self, alternatives: list[list[int]]) -> tuple[Callable[[list[int]], set[int]], int]:
        """The tokens a repeat constrained to `alternatives` (LLM token ids) may say next, given
        what it said (the next canonical token of each that begins so, and the end tokens where
        one is said whole), and the length of the longest in canonical tokens."""
        seqs = {tuple(canonical_ids(self.llm.tokenizer, ids)) for ids in alternatives}
        ends = set(self.llm.eos_ids)

        def allowed(said: list[int]) -> set[int]:
            n, said_ = len(said), tuple(said)
            nxt = {q[n] for q in seqs if len(q) > n and q[:n] == said_}
            return nxt | ends if said_ in seqs or not nxt else nxt

        return allowed, max(len(q) for q in seqs)

    @torch.inference_mode()
    def stream(
        self, audio: np.ndarray, options: GenerationOptions = GenerationOptions(), history: list[dict[str, str]] | None = None
    ) -> Iterator[TokenStep]:
        features, heard = self.hear(audio, history)
        yield from self.stream_features(features, options, history, heard=heard)
