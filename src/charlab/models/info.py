"""Facts about a model reference that can be read without loading its weights."""

from __future__ import annotations

from charlab.errors import ModelError
from charlab.models.refs import ModelRef


def model_info(ref: ModelRef) -> dict:
    """Architecture, depth, width, chat-template facts and fingerprint of ``ref``."""
    from transformers import AutoConfig, AutoTokenizer

    from charlab.models.chat import template_facts

    resolved = ref.resolve()
    try:
        config = AutoConfig.from_pretrained(resolved.load_from, revision=resolved.revision)
        tokenizer = AutoTokenizer.from_pretrained(resolved.load_from, revision=resolved.revision)
    except OSError as exc:
        raise ModelError(f"cannot read config/tokenizer of {ref.base} ({str(exc).splitlines()[0]}); "
                         "check the id or path, and network access for hub models") from None
    facts = template_facts(tokenizer)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "reference": str(ref),
        "loads_from": resolved.load_from,
        "architecture": ", ".join(config.architectures or [config.model_type]),
        "layers": text_config.num_hidden_layers,
        "hidden_size": text_config.hidden_size,
        "vocab_size": text_config.vocab_size,
        "chat_template": tokenizer.chat_template is not None,
        "system_role_supported": facts.supports_system_role,
        "injects_default_system_prompt": facts.injects_default_system,
        "generation_markers": facts.has_generation_markers,
        "adapters": [str(a.ref) for a in resolved.adapters],
        "fingerprint": resolved.fingerprint,
        "base_fingerprint": resolved.base_fingerprint,
    }
