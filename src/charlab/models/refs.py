"""Model references: which base weights, at which revision, with which adapter stack.

A ``ModelRef`` is plain data (it appears in configs and on the command line):

* ``builtin:smollm2-135m`` — the embedded default model (see ``charlab.models.builtin``);
* ``meta-llama/Llama-3.1-8B-Instruct@REV`` — a Hugging Face id, optionally pinned to a revision;
* ``./path/to/model`` — a local folder saved with ``save_pretrained``;

plus an ordered stack of PEFT adapters, each a local folder or a hub repo with an optional
subfolder (``owner/repo/subfolder@REV``: one repo per model family, one subfolder per persona).

``resolve()`` checks what can be checked without loading weights and computes the fingerprint
that keys every cache row and step: base identity + the hash of each adapter's files.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from charlab.errors import ModelError
from charlab.io import read_json_object, sha256_file, stable_hash
from charlab.models import builtin

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")
ADAPTER_META = "charlab_adapter.json"
_ADAPTER_HINT = "adapter_config.json is written by PEFT; re-save the adapter or restore the file"


def _split_revision(text: str) -> tuple[str, str | None]:
    if "@" in text and not text.startswith(("/", ".", "~")):
        name, _, rev = text.rpartition("@")
        return name, rev or None
    return text, None


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists()


class AdapterRef(BaseModel):
    """One PEFT adapter: a local folder, or ``repo`` (+ ``subfolder``) on the hub."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str | None = Field(None, description="local adapter folder (adapter_config.json inside)")
    repo: str | None = Field(None, description="hub repo id, e.g. owner/llama-3.1-8b-personas")
    subfolder: str | None = Field(None, description="folder inside the hub repo, e.g. 'loving'")
    revision: str | None = Field(None, description="hub revision (commit, tag or branch)")

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == bool(self.repo):
            raise ValueError("an adapter needs exactly one of 'path' (local folder) or 'repo' (hub id)")
        return self

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """``./folder`` or ``owner/repo[/subfolder][@revision]``."""
        if _looks_local(text):
            return cls(path=str(Path(text).expanduser()))
        name, rev = _split_revision(text)
        if not _HUB_ID.match(name):
            raise ModelError(f"adapter '{text}' is neither an existing folder nor a hub id like owner/repo/subfolder")
        owner, repo, *rest = name.split("/")
        return cls(repo=f"{owner}/{repo}", subfolder="/".join(rest) or None, revision=rev)

    def __str__(self) -> str:
        if self.path:
            return self.path
        sub = f"/{self.subfolder}" if self.subfolder else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.repo}{sub}{rev}"


class ModelRef(BaseModel):
    """A base model plus an ordered adapter stack. Accepts a plain string in configs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: str = Field(description="builtin:NAME, a hub id (optionally @revision) or a local folder")
    adapters: tuple[AdapterRef, ...] = Field((), description="PEFT adapters applied in order, unmerged")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value):
        if isinstance(value, str):
            return {"base": value}
        if isinstance(value, dict) and value.get("adapters"):
            value = dict(value)
            value["adapters"] = [AdapterRef.parse(a) if isinstance(a, str) else a for a in value["adapters"]]
        return value

    @classmethod
    def parse(cls, base: str, adapters: list[str] | tuple[str, ...] = ()) -> ModelRef:
        return cls(base=base, adapters=tuple(AdapterRef.parse(a) for a in adapters))

    def with_adapter(self, adapter: str | Path | AdapterRef) -> ModelRef:
        extra = adapter if isinstance(adapter, AdapterRef) else AdapterRef(path=str(adapter))
        return ModelRef(base=self.base, adapters=self.adapters + (extra,))

    @property
    def kind(self) -> str:
        if self.base.startswith("builtin:"):
            return "builtin"
        return "local" if _looks_local(self.base) else "hub"

    def __str__(self) -> str:
        return " + ".join([self.base, *map(str, self.adapters)])

    def resolve(self) -> ResolvedModel:
        return resolve(self)


@dataclass(frozen=True)
class ResolvedAdapter:
    ref: AdapterRef
    load_from: str  # local folder or hub repo id
    subfolder: str | None
    revision: str | None
    fingerprint: str


@dataclass(frozen=True)
class ResolvedModel:
    """Everything a backend needs to load the weights, plus their identity."""

    ref: ModelRef
    load_from: str  # local folder or hub id
    revision: str | None
    base_fingerprint: str
    adapters: tuple[ResolvedAdapter, ...]

    @property
    def fingerprint(self) -> str:
        return stable_hash([self.base_fingerprint, [a.fingerprint for a in self.adapters]])

    @property
    def is_local(self) -> bool:
        return Path(self.load_from).is_dir()


def _weights_fingerprint(folder: Path) -> str:
    """Identity of a local model folder without reading every byte of large weights.

    Hashes config.json and, for each weight file, its name, size and its first and last MiB.
    That distinguishes any two real checkpoints while staying fast for 16 GB folders.
    """
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(size - (1 << 20), 0))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def adapter_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            digest.update(name.encode())
            digest.update(sha256_file(folder / name).encode())
    return digest.hexdigest()[:16]


def _base_names(ref: ModelRef, load_from: str) -> set[str]:
    """Names the base may go by inside an adapter_config.json (compared by last path part)."""
    names = {ref.base, load_from, _split_revision(ref.base)[0]}
    config = Path(load_from) / "config.json"
    if config.is_file():
        names.add(str(read_json_object(config, finite=False).get("_name_or_path", "") or ""))  # transformers wrote it
    if ref.kind == "builtin":
        names |= {ref.base.removeprefix("builtin:"), "SmolLM2-135M-Instruct"}
    return {Path(n.rstrip("/")).name.lower() for n in names if n}


def _check_adapter_base(folder: Path, ref: ModelRef, load_from: str, base_fingerprint: str) -> None:
    meta = folder / ADAPTER_META
    if meta.is_file():
        recorded = read_json_object(meta).get("base_fingerprint")
        if recorded and recorded != base_fingerprint:
            raise ModelError(
                f"adapter {folder} was trained on base fingerprint {recorded}, but {ref.base} has "
                f"{base_fingerprint}; use the base model the adapter was trained on"
            )
        return
    config = read_json_object(folder / "adapter_config.json", hint=_ADAPTER_HINT)
    adapter_base = config.get("base_model_name_or_path")
    if adapter_base and Path(adapter_base.rstrip("/")).name.lower() not in _base_names(ref, load_from):
        raise ModelError(
            f"adapter {folder} was trained on '{adapter_base}', which differs from the base '{ref.base}'; "
            "use the matching base model or a different adapter"
        )


def resolve(ref: ModelRef) -> ResolvedModel:
    """Check the reference and compute its fingerprint (loads no weights)."""
    if ref.kind == "builtin":
        name = ref.base.removeprefix("builtin:")
        spec = builtin.builtin_spec(name)
        folder = builtin.builtin_dir(name)
        if not builtin.is_fetched(name):
            raise ModelError(f"{ref.base} is not fetched yet; run: charlab models fetch {ref.base}")
        load_from, revision, base_fp = str(folder), None, f"builtin:{name}:{spec.sha256[:16]}"
    elif ref.kind == "local":
        folder = Path(ref.base).expanduser().resolve()
        if not folder.is_dir():
            raise ModelError(f"local model path {ref.base} is not a folder")
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"local model path {folder} has no config.json; point to a folder written by save_pretrained"
            )
        load_from, revision, base_fp = str(folder), None, f"local:{_weights_fingerprint(folder)}"
    else:
        name, revision = _split_revision(ref.base)
        if not _HUB_ID.match(name):
            raise ModelError(f"model '{ref.base}' is not builtin:NAME, an existing folder, or a hub id owner/name")
        load_from, base_fp = name, f"hub:{name}@{revision or 'main'}"

    adapters = []
    for adapter in ref.adapters:
        if adapter.path:
            folder = Path(adapter.path).expanduser().resolve()
            if not (folder / "adapter_config.json").is_file():
                raise ModelError(f"adapter folder {folder} has no adapter_config.json; is it a PEFT adapter?")
            _check_adapter_base(folder, ref, load_from, base_fp)
            adapters.append(ResolvedAdapter(adapter, str(folder), None, None, f"local:{adapter_fingerprint(folder)}"))
        else:
            adapters.append(ResolvedAdapter(adapter, adapter.repo, adapter.subfolder, adapter.revision,
                                            f"hub:{adapter}"))
    return ResolvedModel(ref, load_from, revision, base_fp, tuple(adapters))
