"""Model references: parsing, resolution errors, fingerprints, adapter/base checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from charlab.errors import ModelError
from charlab.models.refs import AdapterRef, ModelRef


def test_parse_kinds(tmp_path):
    assert ModelRef.parse("builtin:smollm2-135m").kind == "builtin"
    assert ModelRef.parse("meta-llama/Llama-3.1-8B-Instruct@abc123").kind == "hub"
    assert ModelRef.parse(str(tmp_path)).kind == "local"


def test_adapter_hub_subfolder_and_revision():
    adapter = AdapterRef.parse("someone/llama-3.1-8b-personas/loving@v1")
    assert (adapter.repo, adapter.subfolder, adapter.revision) == ("someone/llama-3.1-8b-personas", "loving", "v1")
    assert str(adapter) == "someone/llama-3.1-8b-personas/loving@v1"


def test_model_ref_from_config_string_and_dict():
    assert ModelRef.model_validate("builtin:smollm2-135m").base == "builtin:smollm2-135m"
    ref = ModelRef.model_validate({"base": "org/model", "adapters": ["org/adapters/one"]})
    assert ref.adapters[0].subfolder == "one"


def test_unknown_builtin_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown builtin model 'builtin:nope'.*smollm2-135m"):
        ModelRef.parse("builtin:nope").resolve()


def test_local_path_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        ModelRef.parse(str(tmp_path)).resolve()


def test_hub_fingerprint_includes_revision():
    a = ModelRef.parse("org/model@rev1").resolve()
    b = ModelRef.parse("org/model@rev2").resolve()
    assert a.fingerprint != b.fingerprint and a.revision == "rev1"


def _fake_adapter(folder, base):
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def test_adapter_with_other_base_is_refused(tiny_model_dir, tmp_path):
    adapter = _fake_adapter(tmp_path / "a", "meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(ModelError, match="differs from the base"):
        ModelRef.parse(str(tiny_model_dir), [str(adapter)]).resolve()


def test_adapters_change_the_fingerprint(tiny_model_dir, tmp_path):
    adapter = _fake_adapter(tmp_path / "a", str(tiny_model_dir))
    base = ModelRef.parse(str(tiny_model_dir)).resolve()
    stacked = ModelRef.parse(str(tiny_model_dir), [str(adapter)]).resolve()
    assert base.fingerprint != stacked.fingerprint
    assert stacked.base_fingerprint == base.base_fingerprint
    assert ModelRef.parse(str(tiny_model_dir), [str(adapter)]).resolve().fingerprint == stacked.fingerprint
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    assert ModelRef.parse(str(tiny_model_dir), [str(adapter)]).resolve().fingerprint != stacked.fingerprint


def test_builtin_is_fetched_and_resolves(smollm2_dir):
    resolved = ModelRef.parse("builtin:smollm2-135m").resolve()
    assert resolved.load_from == str(smollm2_dir)
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "charlab", *args], capture_output=True, text=True)


def test_cli_models_info_real_model(smollm2_dir):
    result = _cli("models", "info", "builtin:smollm2-135m", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["architecture"] == "LlamaForCausalLM"
    assert (facts["layers"], facts["hidden_size"]) == (30, 576)
    assert facts["system_role_supported"] is True
    assert facts["injects_default_system_prompt"] is True


def test_cli_errors_exit_2_without_traceback(tmp_path):
    for args, needle in [
        (("models", "info", "builtin:nope"), "unknown builtin"),
        (("models", "info", str(tmp_path)), "no config.json"),
        (("models", "fetch", "org/model"), "not a builtin"),
    ]:
        result = _cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr
