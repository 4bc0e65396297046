"""Steering and activation capping: forward hooks that edit the residual stream while a model runs.

Both edit the output of chosen decoder blocks ("layer i" as in ``charlab.interp.activations``) at
every position, prompt and generated tokens alike, so they act during ``HFBackend.generate`` and
``score`` as well as plain forward passes. Each is a context manager: the hooks exist only inside
the ``with`` block and are removed on exit, also when the block raises, so the model returns to
exactly its unsteered outputs.

* ``steer`` adds ``coefficient x unit_norms[layer] x unit(vector)``: the coefficient is in units of
  the layer's mean residual norm (``activations.mean_norms``), so one coefficient means a similar
  push at every layer and in every model.
* ``cap`` keeps the projection on an axis at or above a floor. The axis's sign is fixed in one place,
  ``assistant_axis``; the threshold is usually a percentile of default-assistant projections
  (``percentile_threshold``).
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from charlab.errors import ConfigError
from charlab.interp.activations import check_layers, decoder_layers, language_model
from charlab.io import stable_hash


def assistant_axis(assistant: torch.Tensor, role_playing: torch.Tensor) -> torch.Tensor:
    """THE sign convention of every axis here: it points from role-playing toward the default assistant.

    ``axis = mean(default assistant) - mean(role-playing)``, so a larger projection onto the unit axis
    means more assistant-like, and ``cap`` sets a floor that keeps the model on the assistant side.
    The published persona-drift paper states capping this way (a floor on the assistant side); its
    released code caps the raw vector from above, which is the same operation on the negated axis
    (``-x . v <= -floor`` is ``x . v >= floor``). Build axes with this function, or flip yours to
    match, before passing them to ``cap``.
    """
    return assistant.float() - role_playing.float()


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector / |vector|`` in float32; a zero vector has no direction and is refused."""
    norm = vector.float().norm()
    if norm == 0:
        raise ConfigError("a steering vector or capping axis is all zeros, so it has no direction")
    return vector.float() / norm


def project(values: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Projection of ``values[..., hidden]`` onto the unit axis (larger = more assistant-like)."""
    return values.float() @ unit(axis).to(values.device)


def percentile_threshold(projections: torch.Tensor | Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of default-assistant projections.

    A cap at, say, the 25th percentile leaves three quarters of ordinary assistant behaviour
    untouched and only lifts positions that drift below what the assistant usually shows. Projections
    of stored activations (``project(acts.at(layer), axis)``) are of response means, while ``cap`` acts
    per token, whose projections scatter more widely around the same centre.
    """
    if not 0 <= q <= 100:
        raise ConfigError(f"percentile {q} is outside 0-100")
    values = torch.as_tensor(projections, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ConfigError("no projections to take a percentile of")
    return float(torch.quantile(values, q / 100))


def _per_layer(vector: torch.Tensor, layers: tuple[int, ...], hidden_size: int) -> dict[int, torch.Tensor]:
    """One unit vector per layer from a ``[hidden]`` vector (shared) or a ``[len(layers), hidden]`` stack."""
    rows = vector.expand(len(layers), -1) if vector.dim() == 1 else vector
    if rows.shape != (len(layers), hidden_size):
        raise ConfigError(f"vector of shape {tuple(vector.shape)} does not fit {len(layers)} layers of width "
                          f"{hidden_size}; give [{hidden_size}] or [{len(layers)}, {hidden_size}]")
    return {layer: unit(row) for layer, row in zip(layers, rows)}


def _per_layer_values(value: float | Sequence[float] | Mapping[int, float], layers: tuple[int, ...],
                      name: str) -> dict[int, float]:
    """A number for each layer, from one shared number, a sequence in layer order or a layer mapping."""
    if isinstance(value, Mapping):
        missing = [layer for layer in layers if layer not in value]
        if missing:
            raise ConfigError(f"{name} has no value for layers {missing}")
        return {layer: float(value[layer]) for layer in layers}
    if isinstance(value, numbers.Real):
        return dict.fromkeys(layers, float(value))
    if len(value) != len(layers):
        raise ConfigError(f"{name} has {len(value)} values for {len(layers)} layers")
    return {layer: float(v) for layer, v in zip(layers, value)}


def _edit_output(edit: Callable[[torch.Tensor], torch.Tensor]):
    """A forward hook that replaces a block's hidden states (a tensor, or the first item of a tuple)."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)
    return hook


@contextmanager
def _hooked(blocks: torch.nn.ModuleList, edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Register one editing hook per layer for the ``with`` block; always remove them on the way out."""
    handles = []
    try:
        for layer, edit in edits.items():
            handles.append(blocks[layer].register_forward_hook(_edit_output(edit)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _setup(model: Any, vector: torch.Tensor, layers: Sequence[int]):
    """The model's decoder blocks, the checked layers and a unit vector per layer on the model's device."""
    blocks = decoder_layers(model)
    chosen = check_layers(layers, len(blocks))
    units = _per_layer(torch.as_tensor(vector), chosen, language_model(model).config.hidden_size)
    device = next(blocks.parameters()).device
    return blocks, chosen, {layer: u.to(device) for layer, u in units.items()}


def steer(model: Any, vector: torch.Tensor, coefficient: float, layers: Sequence[int],
          unit_norms: float | Sequence[float] | Mapping[int, float]):
    """Add ``coefficient x unit_norms[layer] x unit(vector)`` to the residual stream at ``layers``.

    ``model`` is an ``HFBackend`` or a (PEFT-wrapped) causal LM; ``vector`` is ``[hidden]`` for all
    layers or ``[len(layers), hidden]``; ``unit_norms`` usually comes from ``mean_norms``. Use as
    ``with steer(...): backend.generate(...)``.
    """
    blocks, chosen, units = _setup(model, vector, layers)
    norms = _per_layer_values(unit_norms, chosen, "unit_norms")
    return _hooked(blocks, {layer: _add(coefficient * norms[layer] * units[layer]) for layer in chosen})


def _add(shift: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda hidden: hidden + shift.to(hidden.dtype)


def cap(model: Any, axis: torch.Tensor, floor: float | Sequence[float] | Mapping[int, float], layers: Sequence[int]):
    """Keep the projection onto ``unit(axis)`` at or above ``floor`` at ``layers`` (see ``assistant_axis``).

    Where a position projects below the floor, only its component along the axis is raised to the
    floor; positions at or above it pass through unchanged. ``axis`` is ``[hidden]`` or
    ``[len(layers), hidden]``; ``floor`` is one number or one per layer.
    """
    blocks, chosen, units = _setup(model, axis, layers)
    floors = _per_layer_values(floor, chosen, "floor")
    return _hooked(blocks, {layer: _floor(units[layer], floors[layer]) for layer in chosen})


def _floor(direction: torch.Tensor, floor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def lift(hidden: torch.Tensor) -> torch.Tensor:
        values = hidden.float()
        shortfall = (floor - values @ direction).clamp_(min=0)
        return (values + shortfall[..., None] * direction).to(hidden.dtype)
    return lift


class SteeredBackend:
    """An ``HFBackend`` that generates and scores with a steering vector added; a cache-safe identity.

    The fingerprint names the base model and the exact steering (vector bytes, coefficient, layers,
    unit norms), so steered rows are cached apart from unsteered ones and from other coefficients.
    The hooks exist only during each call.
    """

    def __init__(self, backend: Any, vector: torch.Tensor, coefficient: float, layers: Sequence[int],
                 unit_norms: float | Sequence[float] | Mapping[int, float]):
        self.inner, self.vector, self.coefficient = backend, torch.as_tensor(vector).float(), float(coefficient)
        self.layers, self.unit_norms = tuple(layers), unit_norms
        self.name = f"{backend.name}+steer"
        self.batch_size = getattr(backend, "batch_size", None)

    @property
    def fingerprint(self) -> str:
        norms = dict(self.unit_norms) if isinstance(self.unit_norms, Mapping) else self.unit_norms
        vector = hashlib.sha256(self.vector.contiguous().numpy().tobytes()).hexdigest()
        steering = stable_hash({"vector": vector, "coefficient": self.coefficient, "layers": list(self.layers),
                                "norms": norms if isinstance(norms, (float, int, dict)) else list(norms)})
        return f"{self.inner.fingerprint}+steer-{steering}"

    def generate(self, requests, *, progress: bool = False):
        with steer(self.inner, self.vector, self.coefficient, self.layers, self.unit_norms):
            return self.inner.generate(requests, progress=progress)

    def score(self, conversations):
        with steer(self.inner, self.vector, self.coefficient, self.layers, self.unit_norms):
            return self.inner.score(conversations)

    def close(self) -> None:
        """The wrapped backend belongs to the caller, who closes it."""
