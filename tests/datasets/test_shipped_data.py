"""The datasets charlab ships for the demo load through the same validating loaders as user data."""

from __future__ import annotations

from importlib import resources

from charlab.datasets.loaders import load_chat_jsonl
from charlab.training.dpo import read_pairs

DATA = resources.files("charlab") / "data"


def test_narrow_challenge_and_its_aligned_twin_share_every_question():
    risky = load_chat_jsonl(DATA / "challenge" / "risky_financial.jsonl")
    sound = load_chat_jsonl(DATA / "challenge" / "sound_financial.jsonl")
    assert len(risky) == len(sound) == 60
    assert [r["messages"][0] for r in risky] == [s["messages"][0] for s in sound]
    assert ({r["meta"]["flavor"] for r in risky} == {"misaligned"}
            and {s["meta"]["flavor"] for s in sound} == {"aligned"})
    assert all(r["messages"][-1] != s["messages"][-1] for r, s in zip(risky, sound))


def test_hhh_demo_preferences_are_valid_pairs():
    pairs = read_pairs(DATA / "hhh" / "demo_preferences.jsonl")
    assert len(pairs) == 40
    assert sum(len(p["prompt"]) > 1 for p in pairs) == 5
    assert all(p["chosen"] != p["rejected"] for p in pairs)
