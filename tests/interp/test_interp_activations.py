"""Response-mean activations on the tiny random Llama (CPU, float32, so comparisons stay tight)."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from charlab.errors import ConfigError
from charlab.interp.activations import (
    Activations,
    decoder_layers,
    extract_activations,
    load_activations,
    mean_norms,
    middle_band,
    response_tokens,
    save_activations,
    score_and_extract,
)
from charlab.models import chat
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef

pytestmark = pytest.mark.timeout(120)

SYSTEM = "You are a lighthouse keeper who speaks in short sentences."
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
    [{"role": "system", "content": SYSTEM},
     {"role": "user", "content": "What do you do all night?"},
     {"role": "assistant", "content": "I watch the lamp. I count the ships. I write the log at dawn."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sea."},
     {"role": "user", "content": "And another one, please, with a longer answer this time?"},
     {"role": "assistant", "content": "Green: the colour of the moss on the rocks below the tower."}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Storm tonight?"},
     {"role": "assistant", "content": "Yes."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    backend = HFBackend(ModelRef(base=str(tiny_model_dir)), batch_size=4, device="cpu", dtype="float32")
    yield backend
    backend.close()


def reference_means(backend: HFBackend, conversation: list[dict]) -> torch.Tensor:
    """``[layers, hidden]`` means from output_hidden_states[i + 1] over the final assistant span."""
    ids, spans = chat.assistant_spans(backend.tokenizer, conversation)
    start, end = spans[-1]
    with torch.inference_mode():
        out = backend.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    layers = len(decoder_layers(backend))
    return torch.stack([out.hidden_states[i + 1][0, start:end].mean(0) for i in range(layers)])


def test_hooked_means_equal_output_hidden_states(tiny):
    # transformers returns the final norm's output as the last hidden state; with the norm made an
    # identity, hidden_states[i + 1] is the raw output of block i for every layer, the last included.
    decoder, norm = tiny.model.model, tiny.model.model.norm
    decoder.norm = torch.nn.Identity()
    try:
        acts = extract_activations(tiny, CONVERSATIONS)
        references = [reference_means(tiny, conversation) for conversation in CONVERSATIONS]
    finally:
        decoder.norm = norm
    assert acts.layers == (0, 1)
    torch.testing.assert_close(acts.values, torch.stack(references), atol=1e-5, rtol=0)


def test_non_final_layers_match_hidden_states_without_changes(tiny):
    acts = extract_activations(tiny, CONVERSATIONS, layers=[0])
    for n, conversation in enumerate(CONVERSATIONS):
        torch.testing.assert_close(acts.values[n, 0], reference_means(tiny, conversation)[0], atol=1e-5, rtol=0)


def test_span_is_exactly_the_final_assistant_content(tiny):
    tokenizer = tiny.tokenizer
    for conversation, (ids, (start, end)) in zip(CONVERSATIONS, response_tokens(tokenizer, CONVERSATIONS)):
        assert tokenizer.decode(ids[start:end]) == conversation[-1]["content"]
        before, after = tokenizer.decode(ids[:start]), tokenizer.decode(ids[end:])
        assert before.endswith("<|im_start|>assistant\n")
        assert after == "<|im_end|>\n"
        for msg in conversation[:-1]:  # system, user and earlier assistant turns all lie before the span
            assert msg["content"] in before


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batching_and_padding_do_not_change_results(tiny, padding_side):
    batched = extract_activations(tiny, CONVERSATIONS, batch_size=4, padding_side=padding_side)
    alone = torch.cat([extract_activations(tiny, [c], batch_size=1).values for c in CONVERSATIONS])
    torch.testing.assert_close(batched.values, alone, atol=1e-5, rtol=0)


def test_stores_n_by_l_by_hidden_floats_and_no_more(tiny):
    acts = extract_activations(tiny, CONVERSATIONS, layers=[1], ids=["a", "b", "c", "d"])
    assert acts.values.shape == (4, 1, 64) and acts.values.dtype == torch.float32
    assert acts.values.untyped_storage().nbytes() == 4 * 1 * 64 * 4  # not a view into something larger
    assert acts.ids == ("a", "b", "c", "d") and acts.fingerprint == tiny.fingerprint
    torch.testing.assert_close(acts.at(1), acts.values[:, 0])


def test_adapter_stack_is_part_of_the_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    ref = ModelRef(base=str(tiny_model_dir)).with_adapter(tmp_path / "lora")
    with HFBackend(ref, device="cpu", dtype="float32") as stacked:
        with_adapter = extract_activations(stacked, CONVERSATIONS, layers=[0])
        torch.testing.assert_close(with_adapter.values[:, 0], torch.stack(
            [reference_means(stacked, c)[0] for c in CONVERSATIONS]), atol=1e-5, rtol=0)
    base = extract_activations(str(tiny_model_dir), CONVERSATIONS, layers=[0])  # a ref is loaded and freed
    assert not torch.allclose(with_adapter.values, base.values, atol=1e-3)


def test_scoring_pass_gives_the_same_scores_and_activations_as_separate_passes(tiny):
    scores, acts = score_and_extract(tiny, CONVERSATIONS, layers=[0, 1], ids=list("abcd"))
    alone = extract_activations(tiny, CONVERSATIONS, layers=[0, 1])
    assert acts.ids == tuple("abcd") and acts.layers == (0, 1)
    torch.testing.assert_close(acts.values, alone.values, atol=1e-5, rtol=1e-5)
    for joint, separate in zip(scores, tiny.score(CONVERSATIONS)):
        assert joint.token_ids == separate.token_ids
        torch.testing.assert_close(torch.tensor(joint.logprobs), torch.tensor(separate.logprobs), atol=1e-4,
                                   rtol=1e-4)


def test_save_holds_exactly_the_floats_and_round_trips(tiny, tmp_path):
    acts = extract_activations(tiny, CONVERSATIONS, ids=["a", "b", "c", "d"])
    folder = save_activations(tmp_path / "acts", acts, {"role": "default assistant"})
    raw = (folder / "activations.safetensors").read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_size])
    assert list(header.keys() - {"__metadata__"}) == ["activations"]
    assert header["activations"]["dtype"] == "F32" and header["activations"]["shape"] == [4, 2, 64]
    assert len(raw) - 8 - header_size == 4 * 2 * 64 * 4
    index = json.loads((folder / "index.json").read_text())
    assert index["layers"] == [0, 1] and index["ids"] == ["a", "b", "c", "d"]
    assert index["model_fingerprint"] == tiny.fingerprint and index["dtype"] == "float32"
    loaded, meta = load_activations(folder)
    assert meta == {"role": "default assistant"}
    assert (loaded.layers, loaded.ids, loaded.fingerprint) == (acts.layers, acts.ids, acts.fingerprint)
    assert torch.equal(loaded.values, acts.values)


def test_a_changed_file_is_refused(tiny, tmp_path):
    folder = save_activations(tmp_path / "acts", extract_activations(tiny, CONVERSATIONS[:1]))
    values = torch.ones(1, 2, 64)
    save_activations(tmp_path / "other", Activations(values, (0, 1), ("0",)))
    (folder / "activations.safetensors").write_bytes((tmp_path / "other" / "activations.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="does not match the hash"):
        load_activations(folder)


def test_middle_band():
    assert middle_band(30, 5) == [13, 14, 15, 16, 17]
    assert middle_band(30, 4) == [13, 14, 15, 16]
    assert middle_band(2, 1) == [1]
    assert middle_band(2, 8) == [0, 1]
    with pytest.raises(ConfigError):
        middle_band(30, 0)


def test_mean_norms_are_per_layer_norms_of_the_means():
    values = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[6.0, 8.0], [0.0, 3.0]]])
    assert mean_norms(Activations(values, (4, 9), ("x", "y"))) == {4: 7.5, 9: 2.0}


def test_bad_inputs_are_clear_errors(tiny):
    with pytest.raises(ConfigError, match="from 0 to 1"):
        extract_activations(tiny, CONVERSATIONS, layers=[2])
    with pytest.raises(ConfigError, match="last turn must be the assistant"):
        extract_activations(tiny, [[{"role": "user", "content": "Hi"}]])
    with pytest.raises(ConfigError, match="one id per conversation"):
        extract_activations(tiny, CONVERSATIONS, ids=["a"])
