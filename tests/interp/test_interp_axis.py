"""The Assistant Axis from activations: selection of role vectors, the axis, PCA, projection, files."""

from __future__ import annotations

import pytest
import torch

from charlab.errors import ConfigError
from charlab.interp.axis import compute_axis, load_axis, persona_space, project, role_vectors, save_axis

LAYERS = [3, 4, 5]


def test_role_vectors_use_only_responses_fully_in_role():
    values = torch.arange(5 * 3 * 2, dtype=torch.float32).reshape(5, 3, 2)
    names, vectors = role_vectors(values, ["pirate", "pirate", "monk", "monk", "ghost"], [3, 1, 3, 3, None],
                                  threshold=3)
    assert names == ["pirate", "monk"]  # the ghost's only judgement was unreadable
    assert torch.equal(vectors[0], values[0])  # the pirate's second answer was not in role
    assert torch.equal(vectors[1], values[2:4].mean(0))
    names, _ = role_vectors(values, ["pirate", "pirate", "monk", "monk", "ghost"], [3, 1, 3, 3, None], min_count=2)
    assert names == ["monk"]
    with pytest.raises(ConfigError, match="no role has 3"):
        role_vectors(values, ["a"] * 5, [0] * 5, min_count=3)


def test_axis_points_from_the_roles_to_the_default_assistant():
    default = torch.zeros(4, 3, 2)
    default[..., 0] = 2.0  # the assistant sits at +2 on the first coordinate
    roles = torch.zeros(3, 3, 2)
    roles[..., 0] = -1.0
    axis = compute_axis(default, roles, LAYERS, {"model": "m"})
    assert torch.allclose(axis.vectors, torch.tensor([[3.0, 0.0]] * 3))
    assert axis.provenance == {"model": "m", "defaults": 4, "roles": 3} and axis.middle_layer == 4
    projections = project(torch.cat([default, roles]), axis, 4, LAYERS)
    assert projections[:4].tolist() == [2.0] * 4 and projections[4:].tolist() == [-1.0] * 3


def test_pca_finds_a_planted_direction_and_its_alignment_with_the_axis():
    torch.manual_seed(0)
    direction = torch.tensor([1.0, 1.0, 0.0, 0.0]) / 2 ** 0.5
    spread = torch.linspace(-3, 3, 12)[:, None] * direction + 0.01 * torch.randn(12, 4)
    roles = spread[:, None, :].repeat(1, 3, 1)  # [12 roles, 3 layers, 4]
    axis = compute_axis(torch.zeros(2, 3, 4) + 5 * direction, roles, LAYERS)
    space = persona_space(roles, axis, [f"r{i}" for i in range(12)], components=3)
    assert space.explained.shape == (3, 3) and torch.all(space.explained[:, 0] > 0.99)
    assert torch.all(space.explained.sum(1) <= 1 + 1e-6)
    assert torch.allclose(space.axis_pc1_cosine, torch.ones(3), atol=1e-3)


def test_axis_files_round_trip_and_external_tensors_load(tmp_path):
    axis = compute_axis(torch.randn(3, 3, 8), torch.randn(5, 3, 8), LAYERS, {"model": "m"})
    loaded = load_axis(save_axis(tmp_path / "axis", axis))
    assert torch.equal(loaded.vectors, axis.vectors)
    assert loaded.layers == LAYERS and loaded.provenance == axis.provenance

    torch.save(torch.randn(30, 8), tmp_path / "published.pt")
    external = load_axis(tmp_path / "published.pt")
    assert external.vectors.shape == (30, 8) and external.layers == list(range(30))
    from safetensors.torch import save_file

    save_file({"a": torch.randn(4, 8), "b": torch.randn(4, 8)}, tmp_path / "two.safetensors")
    with pytest.raises(ConfigError, match="holds 2 tensors"):
        load_axis(tmp_path / "two.safetensors")
    torch.save(torch.randn(2, 3, 8), tmp_path / "cube.pt")
    with pytest.raises(ConfigError, match=r"an axis is \[layers, hidden\]"):
        load_axis(tmp_path / "cube.pt")
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    with pytest.raises(ConfigError, match="not a tensor"):
        load_axis(tmp_path / "dict.pt")
    with pytest.raises(ConfigError, match="2 layer numbers"):
        load_axis(tmp_path / "published.pt", layers=[1, 2])
    with pytest.raises(ConfigError, match="not 9"):
        axis.at(9)
