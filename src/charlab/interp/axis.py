"""The Assistant Axis from stored activations: compute it, describe persona space, project onto it.

Inputs are mean response activations (``interp.activations``, shape ``[N, L, hidden]``) of the
model answering as its default assistant and in many roles. A role contributes a vector only
from responses judged fully in role (``threshold``), and only if it has at least ``min_count`` of
them, so roles the model never really played do not blur persona space. Then, at every layer:

* axis = mean(default responses) - mean(role vectors): it points toward the assistant, the sign
  convention ``interp.steering.assistant_axis`` states;
* PCA of the role vectors: variance explained per component, and the cosine between the axis and
  the first component (sign-free, since a component's sign is arbitrary).

An axis is computed once (on the base model) and reused for every condition: ``project`` gives
each response's dot product with the unit axis at one layer. Axes computed elsewhere load from a
``[layers, hidden]`` tensor in safetensors or a PyTorch ``.pt`` file (read with
``weights_only=True``, which refuses pickled code).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from charlab.errors import ConfigError
from charlab.io import atomic_write_bytes, atomic_write_json, read_json_object

AXIS_FILE, AXIS_INDEX = "axis.safetensors", "axis.json"


@dataclass
class Axis:
    """One direction per layer, with what it was computed from."""

    vectors: torch.Tensor  # [L, hidden], float32
    layers: list[int]
    provenance: dict = field(default_factory=dict)

    def at(self, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise ConfigError(f"the axis has layers {self.layers[0]}..{self.layers[-1]}, not {layer}")
        return self.vectors[self.layers.index(layer)]

    @property
    def middle_layer(self) -> int:
        return self.layers[len(self.layers) // 2]


@dataclass
class PersonaSpace:
    """PCA of the role vectors at every layer."""

    explained: torch.Tensor  # [L, k] fraction of variance per component
    axis_pc1_cosine: torch.Tensor  # [L] |cos(axis, PC1)|
    roles: list[str]


def role_vectors(values: torch.Tensor, roles: Sequence[str], scores: Sequence[float | None], *,
                 threshold: float = 3, min_count: int = 1) -> tuple[list[str], torch.Tensor]:
    """Per-role mean of the responses scored at or above ``threshold`` (unreadable scores never count).

    Returns the roles kept, in first-seen order, and their vectors ``[R, L, hidden]``.
    """
    if not len(values) == len(roles) == len(scores):
        raise ValueError(f"{len(values)} activations, {len(roles)} role labels and {len(scores)} scores")
    kept: dict[str, list[int]] = {}
    for index, (role, score) in enumerate(zip(roles, scores)):
        kept.setdefault(role, [])
        if score is not None and score >= threshold:
            kept[role].append(index)
    names = [role for role, rows in kept.items() if len(rows) >= min_count]
    if not names:
        raise ConfigError(f"no role has {min_count} response(s) scored >= {threshold}; lower the threshold or "
                          "min_count, or generate more role responses")
    return names, torch.stack([values[kept[role]].float().mean(0) for role in names])


def compute_axis(default: torch.Tensor, roles: torch.Tensor, layers: Sequence[int],
                 provenance: dict | None = None) -> Axis:
    """mean(default responses ``[N, L, H]``) - mean(role vectors ``[R, L, H]``) at every layer."""
    if default.shape[1:] != roles.shape[1:]:
        raise ValueError(f"default activations {tuple(default.shape)} and role vectors {tuple(roles.shape)} "
                         "differ in layers or width")
    vectors = default.float().mean(0) - roles.float().mean(0)
    return Axis(vectors, list(layers), dict(provenance or {}, defaults=len(default), roles=len(roles)))


def persona_space(vectors: torch.Tensor, axis: Axis, names: Sequence[str], components: int = 5) -> PersonaSpace:
    """Variance explained by the first ``components`` principal components of the role vectors, and the
    axis' alignment with the first, at every layer."""
    count, layers = vectors.shape[:2]
    k = min(components, count)
    explained, cosines = [], []
    for index in range(layers):
        centred = vectors[:, index].float() - vectors[:, index].float().mean(0)
        _, singular, right = torch.linalg.svd(centred, full_matrices=False)
        variance = singular ** 2
        total = variance.sum()
        explained.append(variance[:k] / total if total > 0 else torch.zeros(k))
        cosines.append(torch.nn.functional.cosine_similarity(axis.vectors[index], right[0], dim=0).abs())
    return PersonaSpace(torch.stack(explained), torch.stack(cosines), list(names))


def project(values: torch.Tensor, axis: Axis, layer: int, layers: Sequence[int]) -> torch.Tensor:
    """Each response's projection ``[N]`` onto the unit axis at ``layer`` (``layers``: those of ``values``)."""
    direction = axis.at(layer)
    norm = direction.norm()
    if norm == 0:
        raise ConfigError(f"the axis is zero at layer {layer}; it has no direction to project on")
    return values[:, list(layers).index(layer)].float() @ (direction / norm)


def save_axis(folder: str | os.PathLike, axis: Axis) -> Path:
    """``axis.safetensors`` (one ``[L, hidden]`` tensor) and ``axis.json`` (layers, provenance), index last."""
    from safetensors.torch import save

    folder = Path(folder)
    atomic_write_bytes(folder / AXIS_FILE, save({"axis": axis.vectors.float().contiguous()}))
    atomic_write_json(folder / AXIS_INDEX, {"layers": axis.layers, "provenance": axis.provenance})
    return folder


def load_axis(path: str | os.PathLike, layers: Sequence[int] | None = None) -> Axis:
    """An axis saved by ``save_axis`` (its folder, or the ``build_axis`` folder holding it in ``axis/``),
    or a ``[layers, hidden]`` tensor from elsewhere (``.safetensors`` with one tensor, or ``.pt``);
    ``layers`` defaults to 0..L-1 for the latter."""
    path = Path(path)
    if path.is_dir():
        if not (path / AXIS_INDEX).is_file() and (path / "axis" / AXIS_INDEX).is_file():
            path = path / "axis"
        if not (path / AXIS_INDEX).is_file():
            raise ConfigError(f"{path}: no {AXIS_INDEX}; give an axis folder (charlab axis build --out DIR) or a "
                              ".safetensors / .pt tensor of shape [layers, hidden]")
        index = read_json_object(path / AXIS_INDEX)
        return Axis(_read_tensor(path / AXIS_FILE), index["layers"], index["provenance"])
    tensor = _read_tensor(path)
    layers = list(layers) if layers is not None else list(range(tensor.shape[0]))
    if len(layers) != tensor.shape[0]:
        raise ConfigError(f"{path}: {tensor.shape[0]} layer vectors but {len(layers)} layer numbers given")
    return Axis(tensor, layers, {"source": str(path)})


def _read_tensor(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise ConfigError(f"{path}: no such axis file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(path)
        if len(tensors) != 1:
            raise ConfigError(f"{path}: holds {len(tensors)} tensors ({', '.join(tensors)}); an axis file holds one")
        tensor = next(iter(tensors.values()))
    elif path.suffix == ".pt":
        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled objects beyond tensors are refused by weights_only
            raise ConfigError(f"{path}: not a plain tensor file ({exc})") from None
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"{path}: holds a {type(tensor).__name__}, not a tensor of shape [layers, hidden]")
    else:
        raise ConfigError(f"{path}: unknown axis format; use .safetensors or .pt")
    if tensor.dim() != 2:
        raise ConfigError(f"{path}: tensor of shape {tuple(tensor.shape)}; an axis is [layers, hidden]")
    return tensor.float()
