"""The chat LLM: any transformers causal LM, driven by our own short decode loop.

`stream_generate` is one loop over a KV cache that yields, for every generated token,
the token id, the new text it adds, and (on request) the last-layer hidden state that
emitted it: the cascade reads the text, the end-to-end speech decoder reads the hidden
states. Decoding is greedy unless a temperature is set (then seeded sampling).
This module knows nothing about speech.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from omni_cli.errors import ConfigError, ModelNotFoundError
from omni_cli.registry import hub_offline, resolve_llm
from omni_cli.text import ends_sentence

SPOKEN_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Your answers are spoken aloud, so answer in one to "
    "three short, plain English sentences. Never use lists, markdown, code or emojis."
)


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 160  # the answer stops here if no end token came first
    temperature: float = 0.0  # 0: greedy; > 0: sampling at this temperature
    top_p: float = 1.0  # nucleus sampling mass (with temperature > 0)
    repetition_penalty: float = 1.1  # > 1 discourages repeating tokens (small models loop)
    seed: int = 0  # sampling seed, so the same input gives the same answer
    # brief, for speech: the answer stops at the end of the sentence that reaches this many
    # sentences or 20 words per sentence allowed (0: no limit but max_new_tokens)
    max_sentences: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_sentences < 0:
            raise ConfigError(f"max_sentences must be >= 0, got {self.max_sentences}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass(frozen=True)
class TokenStep:
    token_id: int
    text: str  # the text this token adds (may be "" while a multi-byte character is incomplete)
    hidden: torch.Tensor | None  # (hidden_size,) last-layer state that emitted this token
    end: bool = False  # the end-of-turn token: the last step, with no text


def inference_dtype(device: str | torch.device = "cpu", choice: str | None = None) -> torch.dtype | None:
    """The LLM's weight type for answering: bfloat16 on a CPU with native bfloat16 arithmetic
    (AVX512-BF16 or AMX), where decoding reads half the bytes per token (SmolLM2-135M on a
    2-core EPYC: 40 -> 21 ms a token, prompt 66 -> 27 ms); None (as loaded) elsewhere, where
    bfloat16 would be emulated. `choice` (float32 or bfloat16: a caller's option, such as
    `omni eval --llm-dtype`) decides instead, else OMNI_LLM_DTYPE=float32 or bfloat16."""
    import os

    forced = (choice or os.environ.get("OMNI_LLM_DTYPE", "")).strip().lower()
    if forced:
        if forced not in ("float32", "bfloat16"):
            where = "the LLM's dtype" if choice else "OMNI_LLM_DTYPE"
            raise ConfigError(f"{where} is float32 or bfloat16, got {forced!r}")
        return getattr(torch, forced)
    if torch.device(device).type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return None


def _kv_classes():
    """`KVCache` and its layer, defined on first use (transformers is imported lazily)."""
    global _KV_CACHE
    if _KV_CACHE is not None:
        return _KV_CACHE
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class BufferedLayer(DynamicLayer):
        """A layer whose keys and values are views of a buffer that doubles as it fills: a
        decoding step writes its one position, where torch.cat would copy the whole cache (a
        cost that grows with the conversation). With `float32`, half-precision keys and values
        are kept in float32 (for `cpu_attention`)."""

        def __init__(self, float32: bool = False):
            super().__init__()
            self.float32 = float32

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.keys.shape[-2] if self.keys.numel() else 0
            m = n + key_states.shape[-2]
            buf = self.buffers
            if buf is None or m > buf[0].shape[-2] or (n and self.keys.data_ptr() != buf[0].data_ptr()):
                shape = (*key_states.shape[:-2], max(256, 2 * m), key_states.shape[-1])
                dtype = torch.float32 if self.float32 and key_states.element_size() < 4 else key_states.dtype
                buf = (key_states.new_empty(shape, dtype=dtype), value_states.new_empty(shape, dtype=dtype))
                if n:
                    buf[0][..., :n, :], buf[1][..., :n, :] = self.keys, self.values
                self.buffers = buf
            buf[0][..., n:m, :], buf[1][..., n:m, :] = key_states, value_states
            self.keys, self.values = buf[0][..., :m, :], buf[1][..., :m, :]
            return self.keys, self.values

    class KVCache(DynamicCache):
        """A DynamicCache of `BufferedLayer`s that can be cut back to its first positions in place."""

        def __init__(self, float32: bool = False):
            Cache.__init__(self, layer_class_to_replicate=lambda: BufferedLayer(float32))

        def keep_first(self, n: int) -> None:
            for layer in self.layers:
                if layer.is_initialized and layer.keys.numel():
                    layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]

        def keep_positions(self, positions: Sequence[int]) -> None:
            """Cut back to `positions` (ascending), moved to the front in place: e.g. the first
            positions and one path through a tree of tokens computed after them."""
            for layer in self.layers:
                if layer.is_initialized and layer.keys.numel():
                    index = torch.tensor(positions, dtype=torch.long, device=layer.keys.device)
                    n = len(positions)
                    layer.keys[..., :n, :] = layer.keys.index_select(-2, index)
                    layer.values[..., :n, :] = layer.values.index_select(-2, index)
                    layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]

    _KV_CACHE = KVCache
    return KVCache


_KV_CACHE = None


def new_kv_cache(float32: bool = False):
    """An empty `KVCache` (with `float32`: half-precision keys and values kept in float32)."""
    return _kv_classes()(float32)


CPU_ATTENTION = "omni_cpu_sdpa"


def cpu_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, run in the type of the keys and values when the query's
    is narrower (the output back in the query's). A bfloat16 LLM on a CPU keeps its KV cache
    in float32 for it: PyTorch's CPU attention is about 7x slower in bfloat16 over a long
    context (one query over 2,000 cached positions, 30 layers: 27 ms against 3.7 ms), which made
    every turn of a conversation slower than the last."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if key.dtype != dtype:
        query = query.to(key.dtype)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(key.dtype)
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out.to(dtype), weights


def _register_cpu_attention() -> None:
    """`cpu_attention` and its masks (SDPA's: without one, transformers builds no mask at all)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(CPU_ATTENTION, cpu_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_ATTENTION, sdpa_mask)


class ChatLLM:
    """A causal LM with its tokenizer and chat template."""

    def __init__(self, model, tokenizer, label: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.label = label
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        for name in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
            if tid is not None:
                eos.add(tid)
        self.eos_ids = frozenset(t for t in eos if t is not None)
        if getattr(model.config, "_attn_implementation", None) == "sdpa":  # the same, but for a float32 cache
            _register_cpu_attention()
            model.set_attn_implementation(CPU_ATTENTION)
        # the KV cache of the last prompt and the token ids its first positions hold: a prompt that
        # starts the same way reuses them (`prefix_cache`); None while a generation has it
        self._kv = None
        self._kv_ids: tuple[int, ...] = ()
        self._kv_lock = threading.Lock()

    @property
    def context_length(self) -> int:
        """How many positions the model reads (its configured maximum)."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @classmethod
    def load(cls, spec: str | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ChatLLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        source = resolve_llm(spec)
        hf_logging.disable_progress_bar()

        def load(local_only: bool):
            tok = AutoTokenizer.from_pretrained(str(source), local_files_only=local_only)
            lm = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, local_files_only=local_only)
            return tok, lm.to(device)

        try:
            try:  # a folder, or a hub id already in the local hub cache
                tokenizer, model = load(local_only=True)
            except OSError:
                if isinstance(source, Path) or hub_offline():
                    raise
                tokenizer, model = load(local_only=False)
        except OSError as exc:
            raise ModelNotFoundError(
                f"could not load LLM '{source}' ({str(exc).splitlines()[0][:120]}); offline, use the embedded "
                "'smollm2-135m-instruct', a local transformers folder or a .gguf file"
            ) from exc
        return cls(model, tokenizer, str(spec or Path(source).name))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def chat_ids(self, messages: list[dict[str, str]]) -> torch.Tensor:
        """Token ids (1, T) of a chat ending with the assistant's turn opened."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return ids["input_ids"].to(self.device)

    def stream_chat(
        self, messages: list[dict[str, str]], options: GenerationOptions = GenerationOptions()
    ) -> Iterator[TokenStep]:
        ids = self.chat_ids(messages)
        yield from stream_generate(self, input_ids=ids, options=options, prefix=ids[0, :-1].tolist())

    @torch.inference_mode()
    def prefix_cache(self, ids: Sequence[int]):
        """A KV cache holding the prompt beginning `ids` (system prompt, earlier turns), lent to
        a generation until it is given back with `keep`. The last prompt's cache is reused as
        far as it holds the same ids (cut back in place, no copy), so a conversation's next turn
        computes only what the last one did not, and a prepared turn (`prepare`) nothing."""
        cache, n = self.held_cache(ids)
        if n < len(ids):
            rest = torch.tensor([[int(i) for i in ids[n:]]], device=self.device)
            position = torch.arange(n, len(ids), device=self.device).unsqueeze(0)
            cache = self.model(input_ids=rest, cache=cache, use_cache=True, position_ids=position, logits_to_keep=1).cache
        return cache

    def held_cache(self, ids: Sequence[int]):
        """(cache, n): the kept KV cache cut back to the first n of `ids`, as far as it holds
        them (a new one, n = 0, where it holds none), lent until `keep`; nothing is computed."""
        with self._kv_lock:
            cache, held = self._kv, self._kv_ids
            self._kv, self._kv_ids = None, ()
        if cache is not None and cache.layers and cache.layers[0].is_initialized and cache.layers[0].keys.device != self.device:
            cache = None  # the model moved since
        if cache is None:
            cache, held = new_kv_cache(self._float32_cache()), ()
        ids = [int(i) for i in ids]
        n = 0
        for a, b in zip(held, ids):
            if a != b:
                break
            n += 1
        cache.keep_first(n)
        return cache, n

    def _float32_cache(self) -> bool:
        """Keep a half-precision model's KV cache in float32: on a CPU, with `cpu_attention`."""
        return self.device.type == "cpu" and getattr(self.model.config, "_attn_implementation", None) == CPU_ATTENTION

    def keep(self, cache, ids: Sequence[int]) -> None:
        """Give back a cache from `prefix_cache`: its first len(ids) positions hold `ids`."""
        with self._kv_lock:
            self._kv, self._kv_ids = cache, tuple(int(i) for i in ids)

    def forget(self) -> None:
        """Drop the kept KV cache (the weights it was computed with are about to change)."""
        with self._kv_lock:
            self._kv, self._kv_ids = None, ()

    def prepare(self, ids: Sequence[int]) -> None:
        """Compute the KV cache of a coming prompt's beginning now (while the user speaks), so
        that the prompt computes only what follows it."""
        self.keep(self.prefix_cache(ids), ids)


def _pick(logits: torch.Tensor, generated: list[int], options: GenerationOptions, gen: torch.Generator) -> int:
    logits = logits.float()
    if options.repetition_penalty != 1.0 and generated:
        prev = torch.tensor(sorted(set(generated)), device=logits.device)
        scores = logits[prev]
        logits[prev] = torch.where(scores > 0, scores / options.repetition_penalty, scores * options.repetition_penalty)
    if options.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < options.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


@torch.inference_mode()
def stream_generate(
    llm: ChatLLM,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    options: GenerationOptions = GenerationOptions(),
    output_hidden: bool = False,
    prefix: Sequence[int] = (),
    allowed: Callable[[list[int]], Collection[int]] | None = None,
) -> Iterator[TokenStep]:
    """Generate from a prompt given as ids (1, T) or embeddings (1, T, H), one token per step.

    `prefix`: the ids of the prompt's first positions (with embeddings, the ids they embed),
    whose KV cache the LLM may hold from an earlier prompt (`ChatLLM.prefix_cache`): only what
    it does not hold is computed. The cache is given back when the generation ends (also when
    it is stopped), holding the prefix, and with ids the whole prompt and answer, so that the
    next turn of a conversation computes only its new part.

    With `output_hidden`, each step carries the last-layer hidden state at the position
    that produced its token: the last prompt position for the first token, then the
    state of each generated step (the LLaMA-Omni speech decoder's input). The end token,
    when it comes, is yielded as a last step with `end=True` and no text (its emitting
    state is part of the published model's speech decoder input). Text of a
    multi-byte character is held back until the character is complete (and dropped if
    the answer stops before it is).

    `allowed`: where given, each step picks only among the token ids it returns for the tokens
    generated so far (an end token among them ends the answer): constrained decoding.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    prefix = list(prefix)
    prompt_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
    if not 0 < len(prefix) < prompt_len:  # a prefix must leave something to compute
        prefix = []
    cache, past = llm.held_cache(prefix)  # the rest of the prompt is computed in one pass
    held = prefix[:past]  # the ids whose KV the cache holds, for the next prompt to reuse
    try:
        yield from _decode(llm, cache, held, past, input_ids, inputs_embeds, options, output_hidden, prefix[past:], allowed)
    finally:
        llm.keep(cache, held)


def _decode(llm: ChatLLM, cache, held: list[int], past: int, input_ids, inputs_embeds, options: GenerationOptions,
            output_hidden: bool, pending: Sequence[int] = (),
            allowed: Callable[[list[int]], Collection[int]] | None = None) -> Iterator[TokenStep]:
    """`stream_generate`'s loop, on `cache` (holding the first `past` positions); `held` is
    extended with the ids fed while every position is a known id (not after embeddings), and,
    once the prompt is computed, with `pending`, the ids of the prefix that embeddings follow."""
    model, tokenizer = llm.model, llm.tokenizer
    gen = torch.Generator().manual_seed(options.seed)
    kwargs = {"input_ids": input_ids[:, past:]} if input_ids is not None else {"inputs_embeds": inputs_embeds[:, past:]}
    generated: list[int] = []
    text_so_far = ""
    sentences, at_end = 0, False
    for _ in range(options.max_new_tokens):
        n_new = (kwargs.get("input_ids") if "input_ids" in kwargs else kwargs["inputs_embeds"]).shape[1]
        position = torch.arange(past, past + n_new, device=llm.device)
        past += n_new
        out = model(
            **kwargs,
            cache=cache,
            use_cache=True,
            output_hidden_states=output_hidden,
            position_ids=position.unsqueeze(0),
            logits_to_keep=1,
        )
        if input_ids is not None:
            held += kwargs["input_ids"][0].tolist()
        elif pending:
            held += pending
            pending = ()
        logits = out.logits[0, -1]
        if allowed is not None:
            ok = torch.tensor(sorted(allowed(generated)), dtype=torch.long, device=logits.device)
            if not len(ok):
                raise ValueError("constrained decoding: no token allowed")
            logits = torch.full_like(logits, float("-inf")).index_copy(0, ok, logits[ok])
        token = _pick(logits, generated, options, gen)
        hidden = out.hidden_states[-1][0, -1].detach().clone() if output_hidden else None
        if token in llm.eos_ids:
            yield TokenStep(token, "", hidden, end=True)
            return
        generated.append(token)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        delta = ""
        if not text.endswith("\ufffd"):
            delta, text_so_far = text[len(text_so_far) :], text
        yield TokenStep(token, delta, hidden)
        if options.max_sentences and delta:
            ended = ends_sentence(text_so_far)
            sentences += ended and not at_end  # a closing quote after the mark is the same sentence
            at_end = ended
            if ended and (sentences >= options.max_sentences or len(text_so_far.split()) >= 20 * options.max_sentences):
                return  # the budget is spent at a sentence's end: no half sentence
        kwargs = {"input_ids": torch.tensor([[token]], device=llm.device)}


@torch.inference_mode()
def generate_batch(
    llm: ChatLLM, prompts: list[torch.Tensor], options: GenerationOptions = GenerationOptions()
) -> list[str]:
    """Greedy answers to several prompts (each token ids (1, T)) at once: the same decoding as
    `stream_generate` (repetition penalty on the generated tokens only), batched with left
    padding so a CPU does several answers for little more than the price of one."""
    from transformers import DynamicCache

    if options.temperature != 0:
        raise ConfigError("generate_batch decodes greedily (temperature 0)")
    if not prompts:
        return []
    pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else min(llm.eos_ids)
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=llm.device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=llm.device)
    for i, p in enumerate(prompts):
        ids[i, width - p.shape[1] :] = p[0]
        mask[i, width - p.shape[1] :] = 1
    cache = DynamicCache()
    generated: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    step_ids = ids
    for _ in range(options.max_new_tokens):
        position = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        out = llm.model(input_ids=step_ids, attention_mask=mask, position_ids=position, cache=cache,
                        use_cache=True, logits_to_keep=1)
        cache = out.cache
        next_ids = []
        for i in range(len(prompts)):
            token = pad
            if not finished[i]:
                token = _pick(out.logits[i, -1], generated[i], options, None)
                if token in llm.eos_ids:
                    finished[i] = True
                else:
                    generated[i].append(token)
            next_ids.append(token)
        if all(finished):
            break
        step_ids = torch.tensor(next_ids, device=llm.device).unsqueeze(1)
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype, device=mask.device)], dim=1)
    # as in stream_generate, a multi-byte character cut off at the end is dropped
    return [llm.tokenizer.decode(g, skip_special_tokens=True).rstrip("\ufffd") for g in generated]


def answer_texts(llm: ChatLLM, instructions: list[str], options: GenerationOptions = GenerationOptions(),
                 system: str = SPOKEN_SYSTEM_PROMPT, batch: int = 16) -> list[str]:
    """The LLM's greedy answers to typed instructions under a system prompt, `batch` at a time
    (the text answers the end-to-end model learns from and is compared with)."""
    out: list[str] = []
    for b in range(0, len(instructions), batch):
        prompts = [llm.chat_ids([{"role": "system", "content": system}, {"role": "user", "content": t}])
                   for t in instructions[b : b + batch]]
        out += [a.strip() for a in generate_batch(llm, prompts, options)]
    return out
