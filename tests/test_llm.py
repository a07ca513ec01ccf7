import pytest
import torch

from omni_cli.errors import ConfigError
from omni_cli.llm import GenerationOptions, stream_generate

MESSAGES = [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Where is Paris?"}]


def run(llm, options, **kw):
    """The text steps (without the final end-of-turn step)."""
    return [s for s in stream_generate(llm, input_ids=llm.chat_ids(MESSAGES), options=options, **kw) if not s.end]


def test_greedy_is_deterministic_and_max_tokens_is_honoured(tiny_llm):
    opts = GenerationOptions(max_new_tokens=12, repetition_penalty=1.0)
    a, b = run(tiny_llm, opts), run(tiny_llm, opts)
    assert [s.token_id for s in a] == [s.token_id for s in b]
    assert 1 <= len(a) <= 12


def test_same_seed_same_sample_different_seed_differs(tiny_llm):
    ids = lambda seed: [s.token_id for s in run(tiny_llm, GenerationOptions(max_new_tokens=20, temperature=1.5, seed=seed))]
    assert ids(1) == ids(1)
    assert any(ids(1) != ids(s) for s in (2, 3, 4))


def test_text_deltas_add_up_to_the_decoded_tokens(tiny_llm):
    steps = run(tiny_llm, GenerationOptions(max_new_tokens=30))
    text = "".join(s.text for s in steps)
    decoded = tiny_llm.tokenizer.decode([s.token_id for s in steps], skip_special_tokens=True)
    # a character still incomplete when the answer stops is never emitted
    assert text == decoded.removesuffix("\ufffd")
    assert "\ufffd" not in text[-1:]


def test_cached_decoding_equals_a_full_forward_pass(tiny_llm):
    """Tokens and hidden states from the KV-cache loop match one uncached pass over the sequence."""
    prompt = tiny_llm.chat_ids(MESSAGES)
    steps = list(stream_generate(tiny_llm, input_ids=prompt, options=GenerationOptions(max_new_tokens=10, repetition_penalty=1.0), output_hidden=True))
    steps = [s for s in steps if not s.end]
    generated = torch.tensor([[s.token_id for s in steps]])
    full = torch.cat([prompt, generated], dim=1)
    with torch.no_grad():
        out = tiny_llm.model(full, output_hidden_states=True)
    # the state that emitted token i sits at position prompt_len - 1 + i
    start = prompt.shape[1] - 1
    expected_hidden = out.hidden_states[-1][0, start : start + len(steps)]
    got_hidden = torch.stack([s.hidden for s in steps])
    torch.testing.assert_close(got_hidden, expected_hidden, atol=1e-5, rtol=1e-4)
    expected_tokens = out.logits[0, start : start + len(steps)].argmax(-1)
    assert expected_tokens.tolist() == generated[0].tolist()


def test_embeddings_prompt_equals_ids_prompt(tiny_llm):
    prompt = tiny_llm.chat_ids(MESSAGES)
    embeds = tiny_llm.model.get_input_embeddings()(prompt)
    opts = GenerationOptions(max_new_tokens=8)
    by_ids = [s.token_id for s in stream_generate(tiny_llm, input_ids=prompt, options=opts)]
    by_embeds = [s.token_id for s in stream_generate(tiny_llm, inputs_embeds=embeds, options=opts)]
    assert by_ids == by_embeds


def test_end_token_stops_generation(tiny_llm):
    eos = tiny_llm.tokenizer.eos_token_id
    with torch.no_grad():
        tiny_llm.model.lm_head.bias = torch.nn.Parameter(torch.zeros(tiny_llm.model.config.vocab_size))
        tiny_llm.model.lm_head.bias[eos] = 1e4
    try:
        steps = list(stream_generate(tiny_llm, input_ids=tiny_llm.chat_ids(MESSAGES), options=GenerationOptions(max_new_tokens=20)))
        assert len(steps) == 1 and steps[0].end and steps[0].token_id == eos and steps[0].text == ""
    finally:
        tiny_llm.model.lm_head.bias = None


def test_bad_options_are_refused():
    with pytest.raises(ConfigError):
        GenerationOptions(max_new_tokens=0)
    with pytest.raises(ConfigError):
        GenerationOptions(top_p=0)


def test_batched_answers_equal_one_at_a_time(tiny_llm):
    """generate_batch (left padding, one KV cache for all) decodes as stream_generate does."""
    from omni_cli.llm import SPOKEN_SYSTEM_PROMPT, GenerationOptions, answer_texts

    questions = ["hello there", "what is the weather like today in the north", "cats"]
    options = GenerationOptions(max_new_tokens=12)
    alone = ["".join(s.text for s in tiny_llm.stream_chat([{"role": "system", "content": SPOKEN_SYSTEM_PROMPT},
                                                             {"role": "user", "content": q}], options)).strip()
             for q in questions]
    assert answer_texts(tiny_llm, questions, options, batch=2) == alone
    assert any(alone)


def test_a_conversation_reuses_the_kv_cache_of_its_last_turn():
    """A prompt that starts as the last prompt and answer did reuses their KV cache: the answer
    is the one of a fresh pass over the whole prompt, and a follow-up turn computes only from
    where it differs; a prepared beginning (`prepare`) leaves only the last token."""
    from tests.conftest import make_tiny_llm

    llm = make_tiny_llm(init_range=0.3)
    calls = []
    llm.model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    opts = GenerationOptions(max_new_tokens=6, max_sentences=0)

    def fresh(messages):  # no prefix: the held cache is cut back to nothing, the whole prompt computed
        calls.clear()
        tokens = [s.token_id for s in stream_generate(llm, input_ids=llm.chat_ids(messages), options=opts)]
        assert calls[0] == llm.chat_ids(messages).shape[1]
        return tokens

    turn1 = [{"role": "system", "content": "You are a helpful voice assistant."}, {"role": "user", "content": "The moon?"}]
    full = fresh(turn1)
    calls.clear()
    assert [s.token_id for s in llm.stream_chat(turn1, opts)] == full
    assert calls[0] == 1  # everything but the prompt's last token was held

    turn2 = turn1 + [{"role": "assistant", "content": "It is bright."}, {"role": "user", "content": "Paris?"}]
    ids1, ids2 = llm.chat_ids(turn1)[0].tolist(), llm.chat_ids(turn2)[0].tolist()
    held = ids1 + [t for t in full if t not in llm.eos_ids][:-1]
    same = next(i for i, (a, b) in enumerate(zip([*held, -1], ids2)) if a != b)
    calls.clear()
    answer = [s.token_id for s in llm.stream_chat(turn2, opts)]
    assert same >= len(ids1) and calls[0] == len(ids2) - same  # only the new part, in one pass
    assert answer == fresh(turn2)

    turn3 = turn2 + [{"role": "assistant", "content": "In France."}, {"role": "user", "content": "Why?"}]
    ids3 = llm.chat_ids(turn3)[0].tolist()
    llm.prepare(ids3[:-1])  # while the user speaks
    calls.clear()
    steps = llm.stream_chat(turn3, opts)
    first = next(steps).token_id
    assert calls == [1]
    steps.close()  # stopped early: the cache is given back all the same
    assert llm._kv is not None and list(llm._kv_ids[: len(ids3)]) == ids3
    assert first == fresh(turn3)[0]


def test_the_buffered_kv_cache_equals_one_pass_without_a_cache():
    """Decoding on the KV cache whose layers write into growing buffers (no copy per step)
    gives the logits of one pass over the whole sequence, across a buffer's growth and a cut."""
    from omni_cli.llm import new_kv_cache
    from tests.conftest import make_tiny_llm

    llm = make_tiny_llm(init_range=0.3)
    ids = torch.randint(0, 200, (1, 300))
    with torch.inference_mode():
        whole = llm.model(input_ids=ids).logits[0]
        cache = new_kv_cache()
        llm.model(input_ids=ids[:, :100], cache=cache, use_cache=True)  # a buffer of 256, grown at step 257
        steps = [llm.model(input_ids=ids[:, i : i + 1], cache=cache, use_cache=True,
                           position_ids=torch.tensor([[i]])).logits[0, -1] for i in range(100, 300)]
        torch.testing.assert_close(torch.stack(steps), whole[100:300], atol=1e-4, rtol=1e-4)
        assert cache.layers[0].buffers[0].shape[-2] == 514
        cache.keep_first(50)  # cut back, then written over
        again = [llm.model(input_ids=ids[:, i : i + 1], cache=cache, use_cache=True,
                           position_ids=torch.tensor([[i]])).logits[0, -1] for i in range(50, 70)]
        torch.testing.assert_close(torch.stack(again), whole[50:70], atol=1e-4, rtol=1e-4)
        assert cache.get_seq_length() == 70


def test_a_bfloat16_llm_keeps_its_kv_cache_in_float32_on_a_cpu():
    """A bfloat16 LLM on a CPU keeps keys and values in float32 and attends in float32 (fast
    there over long contexts); the answer is the one of a pass with no cache, and a prompt
    computed in two parts (a kept beginning, then the rest) is masked as one."""
    from omni_cli.llm import CPU_ATTENTION
    from tests.conftest import make_tiny_llm

    llm = make_tiny_llm(init_range=0.3)
    llm.model.to(torch.bfloat16)
    assert llm.model.config._attn_implementation == CPU_ATTENTION
    ids = torch.randint(0, 200, (1, 60))
    with torch.inference_mode():
        whole = llm.model(input_ids=ids).logits[0].float()
        cache = llm.prefix_cache(ids[0, :40].tolist())
        assert cache.layers[0].keys.dtype == torch.float32
        rest = llm.model(input_ids=ids[:, 40:], cache=cache, use_cache=True,
                         position_ids=torch.arange(40, 60).unsqueeze(0)).logits[0].float()
    torch.testing.assert_close(rest, whole[40:], atol=0.1, rtol=0.05)  # bfloat16 weights either way
    assert (rest.argmax(-1) == whole[40:].argmax(-1)).float().mean() >= 0.9


def test_inference_dtype_follows_the_cpu_and_the_override(monkeypatch):
    from omni_cli.llm import inference_dtype

    monkeypatch.setenv("OMNI_LLM_DTYPE", "float32")
    assert inference_dtype() == torch.float32
    monkeypatch.setenv("OMNI_LLM_DTYPE", "bfloat16")
    assert inference_dtype() == torch.bfloat16
    monkeypatch.setenv("OMNI_LLM_DTYPE", "half")
    with pytest.raises(ConfigError, match="OMNI_LLM_DTYPE"):
        inference_dtype()
    monkeypatch.delenv("OMNI_LLM_DTYPE")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert inference_dtype("cpu") == (torch.bfloat16 if native else None)


@pytest.mark.real
def test_the_sentence_budget_ends_answers_at_a_sentence_end():
    """The embedded LLM, asked something it answers at length: the budget stops it at the end
    of its n-th sentence, never inside one."""
    import re

    from omni_cli.llm import ChatLLM, SPOKEN_SYSTEM_PROMPT
    from omni_cli.text import ends_sentence

    llm = ChatLLM.load()
    messages = [{"role": "system", "content": SPOKEN_SYSTEM_PROMPT},
                {"role": "user", "content": "Tell me everything you know about the history of Rome."}]

    def answer(n: int) -> str:
        return "".join(s.text for s in llm.stream_chat(messages, GenerationOptions(max_new_tokens=90, max_sentences=n)))

    full, one, two = answer(0), answer(1), answer(2)
    assert full.startswith(two) and two.startswith(one) and len(one) < len(two) < len(full)
    for text, n in ((one, 1), (two, 2)):
        assert ends_sentence(text)
        assert len(re.findall(r"[.!?](?:\s|$)", text.strip())) == n or len(text.split()) >= 20 * n
