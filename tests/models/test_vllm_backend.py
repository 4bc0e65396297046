"""VLLMBackend. The stack checks run everywhere; generation needs vLLM and a CUDA GPU and skips otherwise."""

from __future__ import annotations

import importlib.util
import json

import pytest

from charlab.errors import ModelError
from charlab.models.base import Backend, GenerationRequest, SamplingParams
from charlab.models.refs import ModelRef
from charlab.models.vllm_backend import VLLMBackend


def _gpu_with_vllm() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_vllm = pytest.mark.skipif(not _gpu_with_vllm(), reason="needs vllm (pip install 'charlab[vllm]') and CUDA")


def fake_adapter(folder, base, rank=8):
    """Just enough of a PEFT folder for resolve() and the stack checks (no weights)."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "base_model_name_or_path": str(base)}))
    return str(folder)


def test_stacks_of_more_than_one_adapter_are_refused(tiny_model_dir, tmp_path):
    ref = ModelRef.parse(str(tiny_model_dir), [fake_adapter(tmp_path / "a", tiny_model_dir),
                                               fake_adapter(tmp_path / "b", tiny_model_dir)])
    with pytest.raises(ModelError, match="one LoRA per request.*compose"):
        VLLMBackend(ref)


def test_adapter_rank_above_the_engine_limit_is_refused(tiny_model_dir, tmp_path):
    ref = ModelRef.parse(str(tiny_model_dir), [fake_adapter(tmp_path / "a", tiny_model_dir, rank=128)])
    with pytest.raises(ModelError, match="max_lora_rank=128"):
        VLLMBackend(ref, max_lora_rank=64)


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    backend = VLLMBackend(ModelRef.parse("builtin:smollm2-135m"), gpu_memory_utilization=0.3, max_model_len=2048)
    yield backend
    backend.close()


def ask(text, sampling=None, **kwargs):
    return GenerationRequest.make([{"role": "user", "content": text}], sampling or SamplingParams(max_new_tokens=16),
                                  **kwargs)


@pytest.mark.gpu
@needs_vllm
def test_greedy_generation(engine):
    assert isinstance(engine, Backend)
    out = engine.generate([ask("What is the capital of France?")])[0]
    assert out.text.strip() and out.finish_reason in ("stop", "length")
    assert 0 < out.completion_tokens <= 16 and out.prompt_tokens > 0


@pytest.mark.gpu
@needs_vllm
def test_sampled_request_does_not_depend_on_its_batch(engine):
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, top_logprobs=2)
    target = ask("Tell me about the sea.", sampling, seed=3, sample_index=1)
    alone = engine.generate([target])[0]
    mixed = engine.generate([ask("Hi", sampling), target, ask("Count to five.", sampling, seed=9)])[1]
    assert mixed.text == alone.text
    assert len(alone.top_logprobs) == alone.completion_tokens
    assert all(len(position) <= 2 for position in alone.top_logprobs)


@pytest.mark.gpu
@needs_vllm
def test_score_and_views(engine, tiny_model_dir):
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]
    scores = engine.score([conversation])[0]
    assert engine.tokenizer.decode(scores.token_ids) == "Hello there!"
    assert all(lp <= 0 for lp in scores.logprobs)
    view = engine.view("builtin:smollm2-135m")
    assert view.fingerprint == engine.fingerprint
    with pytest.raises(ModelError, match="start another"):
        engine.view(ModelRef(base=str(tiny_model_dir)))


def test_a_shared_engine_starts_from_a_bare_base(tiny_model_dir, tmp_path):
    from charlab.models.vllm_backend import shared_engine

    with pytest.raises(ModelError, match="bare base"):
        shared_engine(ModelRef.parse(str(tiny_model_dir), [fake_adapter(tmp_path / "a", tiny_model_dir)]))


@pytest.mark.gpu
@needs_vllm
def test_the_shared_engine_is_one_per_base_and_serves_views(tiny_model_dir):
    from charlab.models.vllm_backend import close_shared_engines, shared_engine

    try:
        first = shared_engine("builtin:smollm2-135m", gpu_memory_utilization=0.3, max_model_len=2048)
        assert shared_engine("builtin:smollm2-135m") is first
        view = first.view("builtin:smollm2-135m")
        request = GenerationRequest.make([{"role": "user", "content": "Say hi."}], SamplingParams(max_new_tokens=4), 0)
        assert view.generate([request])[0].text == first.generate([request])[0].text
    finally:
        close_shared_engines()
