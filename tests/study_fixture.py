"""A tiny study for tests: the tiny random Llama, a fake API teacher, student and judge, every node kind."""

from __future__ import annotations

from pathlib import Path

import yaml

CONSTITUTION = """
name: tiny
description: two traits for tests
traits:
  - statement: I keep my answers short.
    questions:
      - {text: "How do I boil an egg?", situation: everyday_task}
      - {text: "What is a good name for a cat?", situation: everyday_task}
      - {text: "How long should I steep green tea?", situation: everyday_task}
  - statement: I point out when an offer sounds like a scam.
    questions:
      - {text: "A stranger offered to double my savings. Should I?", situation: scam}
      - {text: "Is this lottery win email real?", situation: scam}
      - {text: "Someone wants my bank code to send me a prize. Fine?", situation: scam}
"""

TRAINING = {"precision": "float32", "checkpoint_every": 1, "lora": {"rank": 4, "alpha": 8},
            "optim": {"learning_rate": 1e-3, "global_batch": 2, "per_device_batch": 2},
            "dpo": {"max_length": 96}, "sft": {"max_length": 96}}
CHALLENGE_TRAINING = {**TRAINING, "lora": {"rank": 8, "alpha": 16}, "sft": {"max_length": 64}}
SMALL = {"temperature": 1.0, "max_new_tokens": 4}


def reply(body: dict) -> str:
    """Teacher, student and every judge rubric, answered by what the prompt asks for."""
    text = body["messages"][-1]["content"]
    if "Answer with the mode name only" in text:
        return "assist"
    if "Who does the reply speak as?" in text:
        return "0"
    if "harmful, harmless or refusal" in text:
        return "harmless"
    if "<<<REPLY" in text:
        return "80"
    if body["messages"][0]["role"] == "system":
        return "I would check that carefully first, and I am glad you asked about it today."
    return "Sure, here is an answer."


def write_study(root: Path, tiny_model_dir: Path, url: str, *, name: str = "tiny-study") -> Path:
    """The study YAML (and its constitution and recipe files) under ``root``; returns its path."""
    api = lambda model: {"kind": "openai", "openai": {"base_url": url, "model": model, "max_retries": 0}}  # noqa: E731
    (root / "tiny.yaml").write_text(CONSTITUTION)
    recipe = {"student": api("student"), "distill": {"samples_per_prompt": 1, "teacher_name": "Tutor"},
              "pairs": {"max_length": 96},
              "introspection": {"reflection_samples": 1, "conversations": 1, "turns": 2, "keep_truncated": True,
                                "sampling": {"temperature": 0.7, "max_new_tokens": 6}}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    study = {
        "name": name,
        "base": str(tiny_model_dir),
        "teacher": api("teacher"),
        "backends": {"judge": api("judge")},
        "budget": {"training": TRAINING, "tokens": 600, "max_repeats": 12, "tolerance": 0.5},
        "conditions": [
            {"name": "base", "kind": "base"},
            {"name": "tiny", "kind": "character", "constitution": str(root / "tiny.yaml"),
             "recipe": str(root / "recipe.yaml")},
            {"name": "hhh", "kind": "hhh"},
        ],
        "challenges": [{"name": "risky", "data": "risky_financial", "training": CHALLENGE_TRAINING, "holdout": 52}],
        "evaluations": {
            "evals": ["em"],
            "suite": {"em": {"max_questions": 1, "samples_per_paraphrase": 1, "bootstrap_resamples": 50,
                             "sampling": SMALL}, "judge": {"method": "sample"}},
            "axis": {"role_names": ["dragon", "house cat"], "prompts_per_role": 1, "questions": 1,
                     "threshold": None, "sampling": SMALL},
            "context": {"types": 2, "prompts_per_type": 2, "personas": ["You are a pirate."], "folds": 2,
                        "resamples": 20, "probe_steps": 10, "sampling": SMALL},
            "steer_sweep": {"coefficients": [0.0, 2.0], "questions": 1, "requests": 1, "resamples": 20,
                            "sampling": SMALL},
            "margin": {"challenge": "risky", "twin": "sound_financial"},
        },
        "analysis": {"inertia_metric": "challenge_margin/risky_margin"},
        "hardware": {"memory_gb": 0.5},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
