"""Steering and capping hooks on a tiny random Llama (CPU, float32, greedy, so comparisons are exact).

Like test_hf_backend, the model's output layer is untied from its embeddings: the tied random model
answers every prompt with newlines, which no steering could visibly change.
"""

from __future__ import annotations

import pytest
import torch

from charlab.errors import ConfigError
from charlab.interp.activations import decoder_layers, extract_activations, mean_norms
from charlab.interp.steering import assistant_axis, cap, percentile_threshold, project, steer
from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["Hi", "Tell me about the sea.", "Why is the sky blue?", "List three colours."]
HIDDEN = 64


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-untied-steering")
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    backend = HFBackend(ModelRef(base=str(folder)), batch_size=4, device="cpu", dtype="float32")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def norms(tiny):
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": "Sure, here it is."}]
                     for p in PROMPTS]
    return mean_norms(extract_activations(tiny, conversations))


def generate(backend: HFBackend) -> list[str]:
    requests = [GenerationRequest.make([{"role": "user", "content": p}], SamplingParams(max_new_tokens=12))
                for p in PROMPTS]
    return [g.text for g in backend.generate(requests)]


def layer_outputs(backend: HFBackend, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """What block ``layer`` hands on, after any editing hooks registered before this call."""
    seen = []
    handle = decoder_layers(backend)[layer].register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    try:
        with torch.inference_mode():
            backend.model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0]


def no_hooks_left(backend: HFBackend) -> bool:
    return all(not block._forward_hooks for block in decoder_layers(backend))


def direction(seed: int) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))


IDS = torch.tensor([[1, 9690, 198, 19556, 2, 198, 1, 520, 9531]])


# -- steering ---------------------------------------------------------------------------------


def test_steering_changes_generations_and_exit_restores_them(tiny, norms):
    baseline = generate(tiny)
    with steer(tiny, direction(1), 8.0, layers=[0, 1], unit_norms=norms):
        steered = generate(tiny)
    assert steered != baseline
    assert generate(tiny) == baseline
    assert no_hooks_left(tiny)


def test_steering_adds_coefficient_times_norm_along_the_unit_vector(tiny, norms):
    vector = direction(2) * 5  # the vector's own length must not matter
    before = layer_outputs(tiny, 0, IDS)
    with steer(tiny, vector, 0.5, layers=[0], unit_norms=norms):
        after = layer_outputs(tiny, 0, IDS)
    expected = 0.5 * norms[0] * vector / vector.norm()
    torch.testing.assert_close(after - before, expected.expand_as(before), atol=1e-5, rtol=0)


def test_one_vector_per_layer(tiny):
    vectors = torch.stack([direction(3), direction(4)])
    before = [layer_outputs(tiny, layer, IDS) for layer in (0, 1)]
    with steer(tiny, vectors, 1.0, layers=[0, 1], unit_norms={0: 2.0, 1: 3.0}):
        first = layer_outputs(tiny, 0, IDS)
    torch.testing.assert_close(first - before[0], (2.0 * vectors[0] / vectors[0].norm()).expand_as(first),
                               atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="does not fit"):
        steer(tiny, vectors, 1.0, layers=[0], unit_norms=1.0)
    with pytest.raises(ConfigError, match="no value for layers"):
        steer(tiny, direction(3), 1.0, layers=[0, 1], unit_norms={0: 1.0})


def test_hooks_are_removed_after_an_exception(tiny, norms):
    baseline = generate(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny, direction(1), 8.0, layers=[0, 1], unit_norms=norms):
            assert not no_hooks_left(tiny)
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with cap(tiny, direction(1), 1e6, layers=[1]):
            raise RuntimeError("boom")
    assert no_hooks_left(tiny)
    assert generate(tiny) == baseline


# -- capping ----------------------------------------------------------------------------------


def test_cap_raises_low_projections_to_the_floor_and_leaves_the_rest(tiny):
    axis = direction(5)
    before = layer_outputs(tiny, 0, IDS)
    floor = float(project(before, axis).median())
    with cap(tiny, axis, floor, layers=[0]):
        after = layer_outputs(tiny, 0, IDS)
    low = project(before, axis) < floor
    assert low.any() and (~low).any()
    torch.testing.assert_close(project(after, axis)[low], torch.full_like(project(after, axis)[low], floor),
                               atol=1e-5, rtol=0)
    assert torch.equal(after[~low], before[~low])
    moved = after - before  # only along the axis
    torch.testing.assert_close(moved - project(moved, axis)[..., None] * axis / axis.norm(),
                               torch.zeros_like(moved), atol=1e-5, rtol=0)


def test_sign_convention_with_a_hand_made_axis(tiny):
    """The axis points toward the assistant, so the floor pulls a role-playing state to the assistant side."""
    e = torch.eye(HIDDEN)
    assistant_mean, role_mean = 3 * e[0], -3 * e[0]
    axis = assistant_axis(assistant_mean, role_mean)
    assert torch.equal(axis, 6 * e[0])
    states = torch.stack([role_mean + e[1], assistant_mean + e[2], 0.5 * e[0] + e[3], 1.0 * e[0]])[None]
    plant = decoder_layers(tiny)[0].register_forward_hook(lambda m, a, out: states.clone(), prepend=True)
    try:
        with cap(tiny, axis, 1.0, layers=[0]):
            capped = layer_outputs(tiny, 0, IDS[:, :4])[0]
    finally:
        plant.remove()
    expected = torch.stack([e[0] + e[1], assistant_mean + e[2], e[0] + e[3], e[0]])
    torch.testing.assert_close(capped, expected, atol=1e-6, rtol=0)
    role_playing = capped[0]
    assert (role_playing - assistant_mean).norm() < (role_playing - role_mean).norm()
    assert no_hooks_left(tiny)


def test_capping_during_generation_and_back_to_baseline(tiny, norms):
    baseline = generate(tiny)
    axis = direction(6)
    with cap(tiny, axis, -1e6, layers=[0, 1]):  # a floor nothing is below changes nothing
        assert generate(tiny) == baseline
    with cap(tiny, axis, 3 * max(norms.values()), layers=[0, 1]):
        capped = generate(tiny)
    assert capped != baseline
    assert generate(tiny) == baseline


def test_threshold_is_a_percentile_of_assistant_projections(tiny):
    assert percentile_threshold(torch.arange(101.0), 25) == 25.0
    assert percentile_threshold([0.0, 1.0], 50) == 0.5
    conversations = [[{"role": "user", "content": p}, {"role": "assistant", "content": "I am glad to help."}]
                     for p in PROMPTS]
    acts = extract_activations(tiny, conversations, layers=[1])
    projections = project(acts.at(1), direction(7))
    threshold = percentile_threshold(projections, 0)
    assert threshold == pytest.approx(float(projections.min()))
    with pytest.raises(ConfigError, match="outside 0-100"):
        percentile_threshold(projections, 101)


def test_a_zero_axis_is_refused(tiny):
    with pytest.raises(ConfigError, match="all zeros"):
        cap(tiny, torch.zeros(HIDDEN), 0.0, layers=[0])
