"""HFBackend on a tiny random Llama (fast) and once on the real default model (slow).

The conftest tiny model ties its output layer to its embeddings, so at random init it greedily
repeats the last prompt token ("\\n") whatever the prompt. These tests use the same tiny config with
an untied output layer: its greedy continuations differ from prompt to prompt, so "batched equals
alone" compares different texts, not twelve newlines. They run on the CPU in float32 even where
a GPU is present, so exact comparisons stay exact.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from charlab.errors import ModelError
from charlab.models import chat
from charlab.models.base import Backend, GenerationRequest, SamplingParams
from charlab.models.hf import HFBackend, row_seed
from charlab.models.refs import ModelRef

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["Hi", "Tell me a story about a lighthouse keeper and the sea.", "Why is the sky blue?",
           "List three colours."]
SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, repetition_penalty=1.3, max_new_tokens=12)


def request(prompt: str, sampling: SamplingParams | None = None, **kwargs) -> GenerationRequest:
    return GenerationRequest.make([{"role": "user", "content": prompt}],
                                  sampling or SamplingParams(max_new_tokens=12), **kwargs)


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-untied")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    backend = HFBackend(ModelRef(base=str(tiny_dir)), batch_size=4, device="cpu")
    yield backend
    backend.close()


def make_lora(base_dir, out, seed: int):
    """A small LoRA with random, non-zero A and B, saved as a PEFT folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loras(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return make_lora(tiny_dir, root / "a", 1), make_lora(tiny_dir, root / "b", 2)


# -- generation -------------------------------------------------------------------------------


def test_is_a_backend(tiny, tiny_dir):
    assert isinstance(tiny, Backend)
    assert tiny.fingerprint == ModelRef(base=str(tiny_dir)).resolve().fingerprint


def test_greedy_batched_equals_one_at_a_time(tiny):
    requests = [request(p) for p in PROMPTS]
    batched = tiny.generate(requests)
    alone = [tiny.generate([r])[0] for r in requests]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert len({g.text for g in batched}) == len(PROMPTS)


def test_sampled_request_is_the_same_alone_and_in_any_batch(tiny):
    target = request(PROMPTS[2], SAMPLED, seed=7, sample_index=3)
    alone = tiny.generate([target])[0]
    others = [request(p, SAMPLED, seed=1) for p in (PROMPTS[0], PROMPTS[1])] + [request(PROMPTS[3])]
    mixed = tiny.generate([others[0], target, others[1], others[2]])[1]
    assert mixed.text == alone.text
    assert mixed.completion_tokens == alone.completion_tokens


def test_sample_index_changes_the_draw(tiny):
    texts = {tiny.generate([request(PROMPTS[1], SAMPLED, seed=7, sample_index=k)])[0].text for k in range(3)}
    assert len(texts) == 3
    assert row_seed(request("a", seed=1)) != row_seed(request("a", seed=1, sample_index=1))


def test_length_finish_and_token_counts(tiny):
    caps = [3, 9]
    out = tiny.generate([request(PROMPTS[1], SamplingParams(max_new_tokens=n)) for n in caps], progress=True)
    n_prompt = len(chat.prompt_ids(tiny.tokenizer, [{"role": "user", "content": PROMPTS[1]}]))
    for generation, cap in zip(out, caps):
        assert generation.finish_reason == "length"
        assert generation.completion_tokens == cap
        assert generation.prompt_tokens == n_prompt
    assert out[1].text.startswith(out[0].text)


def test_stop_token_ends_the_turn_and_is_counted(tiny, monkeypatch):
    prompt = chat.prompt_ids(tiny.tokenizer, [{"role": "user", "content": PROMPTS[2]}])
    with torch.no_grad():
        ids = tiny.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    k = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])  # a token not generated before
    monkeypatch.setattr(tiny, "stop_ids", tiny.stop_ids | {ids[k]})
    out = tiny.generate([request(PROMPTS[2], SamplingParams(max_new_tokens=12))])[0]
    assert out.finish_reason == "stop"
    assert out.completion_tokens == k + 1  # the stop token counts
    assert out.text == tiny.tokenizer.decode(ids[:k])  # but is not part of the text


def test_stop_string_truncates_the_text(tiny):
    full = tiny.generate([request(PROMPTS[3], SamplingParams(max_new_tokens=16))])[0].text
    stop = full.split()[3]
    out = tiny.generate([request(PROMPTS[3], SamplingParams(max_new_tokens=16, stop=[stop]))])[0]
    assert out.finish_reason == "stop"
    assert out.text == full[:full.index(stop)]
    assert out.completion_tokens < 16


def test_top_logprobs(tiny):
    out = tiny.generate([request(PROMPTS[0], SamplingParams(max_new_tokens=5, top_logprobs=3))])[0]
    assert len(out.top_logprobs) == out.completion_tokens == 5
    for position in out.top_logprobs:
        values = list(position.values())
        assert 1 <= len(values) <= 3 and values == sorted(values, reverse=True) and values[0] <= 0
    first = max(out.top_logprobs[0], key=out.top_logprobs[0].get)
    assert out.text.startswith(first)  # greedy picks the likeliest token
    assert tiny.generate([request(PROMPTS[0])])[0].top_logprobs is None


def test_empty_request_list(tiny):
    assert tiny.generate([]) == []


# -- scoring ----------------------------------------------------------------------------------


def test_score_equals_manual_log_softmax(tiny):
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": PROMPTS[1]},
         {"role": "assistant", "content": "Once upon a time"}, {"role": "user", "content": "More"},
         {"role": "assistant", "content": "The end."}],
    ]
    scores = tiny.score(conversations)
    for conversation, got in zip(conversations, scores):
        ids, spans = chat.assistant_spans(tiny.tokenizer, conversation)
        start, end = spans[-1]
        with torch.no_grad():
            logits = tiny.model(torch.tensor([ids])).logits[0].float()
        expected = logits.log_softmax(-1)[torch.arange(start - 1, end - 1), torch.tensor(ids[start:end])]
        assert got.token_ids == ids[start:end]
        assert tiny.tokenizer.decode(got.token_ids) == conversation[-1]["content"]
        torch.testing.assert_close(torch.tensor(got.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_score_needs_a_final_assistant_turn(tiny):
    with pytest.raises(ValueError, match="conversations\\[0\\]"):
        tiny.score([[{"role": "user", "content": "Hi"}]])


# -- adapters and loading errors --------------------------------------------------------------


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _merged(base_dir, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    for path in adapters:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    return model


def test_adapter_stack_equals_sequential_merge(tiny_dir, loras):
    ref = ModelRef.parse(str(tiny_dir), [str(p) for p in loras])
    backend = HFBackend(ref, batch_size=2, device="cpu")
    try:
        assert backend.model.base_model.active_adapters == ["a0", "a1"]
        assert not any(p.requires_grad for p in backend.model.parameters())
        ids = chat.prompt_ids(backend.tokenizer, [{"role": "user", "content": PROMPTS[1]}])
        stacked = _logits(backend.model, ids)
        torch.testing.assert_close(stacked, _logits(_merged(tiny_dir, loras), ids), atol=1e-4, rtol=1e-4)
        for alone in loras:
            assert not torch.allclose(stacked, _logits(_merged(tiny_dir, [alone]), ids), atol=1e-3)
        assert backend.fingerprint != ModelRef(base=str(tiny_dir)).resolve().fingerprint
        assert backend.generate([request(PROMPTS[0], SamplingParams(max_new_tokens=4))])[0].completion_tokens == 4
    finally:
        backend.close()


def test_adapter_for_another_base_is_refused(tiny_dir, loras, tmp_path):
    foreign = shutil.copytree(loras[0], tmp_path / "foreign")
    config = json.loads((foreign / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/another-model"
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="another-model"):
        HFBackend(ModelRef.parse(str(tiny_dir), [str(foreign)]))


def test_missing_weights_are_a_model_error(tiny_dir, tmp_path):
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, broken / name)
    with pytest.raises(ModelError, match="no-weights"):
        HFBackend(ModelRef(base=str(broken)))


# -- the real default model -------------------------------------------------------------------


@pytest.mark.slow
def test_real_default_model_answers(smollm2_dir):
    backend = HFBackend(ModelRef.parse("builtin:smollm2-135m"), batch_size=2)
    try:
        out = backend.generate([request("What is the capital of France?", SamplingParams(max_new_tokens=12))])[0]
    finally:
        backend.close()
    assert out.text.strip()
    assert out.finish_reason in ("stop", "length")
    assert 0 < out.completion_tokens <= 12
