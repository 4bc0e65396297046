"""Derived controls: neutralize, shuffle_traits and question_diversity, and their CLI commands."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from charlab.constitution.derive import neutralize, question_diversity, shuffle_traits
from charlab.constitution.formats import load_constitution
from charlab.constitution.geometry import compare
from charlab.constitution.schema import Constitution
from charlab.errors import CharlabError


@pytest.fixture(scope="module")
def integrity() -> Constitution:
    return load_constitution("integrity")


@pytest.fixture(scope="module")
def expanded() -> Constitution:
    """Two traits with seed and expanded questions, some untagged, to check that nothing is lost."""
    return Constitution.model_validate(
        {
            "name": "tiny",
            "traits": [
                {
                    "statement": "I am kind.",
                    "questions": [{"text": "  Help me?", "situation": "medical"}, "Untagged one."],
                    "expanded": [{"text": "Expanded A", "situation": "legal"}],
                },
                {"statement": "I am brave.", "questions": ["Seed B"], "expanded": ["Expanded B1", "Expanded B2"]},
            ],
        }
    )


def _question_sets(c: Constitution) -> list[tuple]:
    return [tuple(t.all_questions) for t in c.traits]


def _prompts(c: Constitution) -> list[tuple[list, list]]:
    """Per trait, in order: (seed, expanded) questions as (text, situation) pairs."""
    return [([(q.text, q.situation) for q in t.questions], [(q.text, q.situation) for q in t.expanded])
            for t in c.traits]


# ---- neutralize -------------------------------------------------------------------------------


@pytest.mark.parametrize("source_name", ["integrity", "expanded"])
def test_neutralize_keeps_every_question_and_uses_neutral_statements(source_name, request):
    source = request.getfixturevalue(source_name)
    result = neutralize(source)
    assert _prompts(result) == _prompts(source)
    pool = {t.statement for t in load_constitution("neutral").traits}
    assert all(t.statement in pool for t in result.traits)
    assert len({t.statement for t in result.traits}) == len(source.traits)
    assert result.name == f"{source.name}-neutral" and source.name in result.description
    assert compare(source, result).matched


def test_neutralize_is_seeded(integrity):
    assert neutralize(integrity, seed=3) == neutralize(integrity, seed=3)
    assert neutralize(integrity, seed=0) != neutralize(integrity, seed=1)


def test_neutralize_needs_a_pool_as_large_as_the_source(integrity, expanded):
    with pytest.raises(CharlabError, match=r"10 traits.*only 3 statements; pass a larger pool"):
        neutralize(integrity, pool=["I exist.", "I print text.", "I use tokens."])
    result = neutralize(expanded, pool=["I exist.", "I print text.", "I use tokens."])
    assert {t.statement for t in result.traits} < {"I exist.", "I print text.", "I use tokens."}


# ---- shuffle_traits ---------------------------------------------------------------------------


def test_shuffle_is_a_derangement_of_the_pairing(integrity):
    result = shuffle_traits(integrity, seed=5)
    own = {t.statement: tuple(t.all_questions) for t in integrity.traits}
    assert sorted(t.statement for t in result.traits) == sorted(own)
    assert all(tuple(t.all_questions) != own[t.statement] for t in result.traits)
    assert Counter(_question_sets(result)) == Counter(_question_sets(integrity))
    assert result.name == "integrity-shuffled"


def test_shuffle_is_seeded(integrity):
    assert shuffle_traits(integrity, seed=2) == shuffle_traits(integrity, seed=2)
    assert shuffle_traits(integrity, seed=0) != shuffle_traits(integrity, seed=1)


def test_shuffle_needs_two_traits(expanded):
    one = expanded.model_copy(update={"traits": expanded.traits[:1]})
    with pytest.raises(CharlabError, match="at least 2"):
        shuffle_traits(one)


# ---- question_diversity -----------------------------------------------------------------------


def test_narrow_draws_from_the_traits_main_situation(integrity):
    result = question_diversity(integrity, trait=1, breadth="narrow", n=6)
    (trait,) = result.traits
    assert trait.statement == integrity.traits[0].statement
    assert len(trait.questions) == 6 and {q.situation.value for q in trait.questions} == {"everyday_task"}
    assert set(trait.questions) <= set(integrity.questions)
    assert result.name == "integrity-trait1-narrow"


@pytest.mark.parametrize("n", [3, 11, 20])
def test_broad_spans_as_many_situations_as_n_allows(integrity, n):
    result = question_diversity(integrity, trait=2, breadth="broad", n=n)
    tags = {q.situation for q in integrity.questions}
    assert len(result.questions) == n == len(set(result.questions))
    assert len({q.situation for q in result.questions}) >= min(n, len(tags))
    assert result.name == "integrity-trait2-broad"


@pytest.mark.parametrize("breadth", ["narrow", "broad"])
def test_diversity_is_seeded(integrity, breadth):
    def draw(seed):
        return question_diversity(integrity, trait=1, breadth=breadth, n=5, seed=seed)

    assert draw(7) == draw(7)
    assert draw(0) != draw(1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trait": 0, "breadth": "broad", "n": 3}, "out of range.*1 to 10"),
        ({"trait": 11, "breadth": "broad", "n": 3}, "out of range.*1 to 10"),
        ({"trait": 1, "breadth": "wide", "n": 3}, "unknown breadth"),
        ({"trait": 1, "breadth": "broad", "n": 0}, "at least 1"),
        ({"trait": 1, "breadth": "broad", "n": 51}, "51 questions.*only 50"),
        ({"trait": 1, "breadth": "narrow", "n": 500}, "500 questions.*only \\d+ questions tagged everyday_task"),
    ],
)
def test_diversity_errors(integrity, kwargs, message):
    with pytest.raises(CharlabError, match=message):
        question_diversity(integrity, **kwargs)


def test_narrow_needs_a_tagged_trait(expanded):
    with pytest.raises(CharlabError, match="no tagged questions"):
        question_diversity(expanded, trait=2, breadth="narrow", n=1)


# ---- CLI --------------------------------------------------------------------------------------


def _charlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charlab", "constitution", *args], capture_output=True, text=True)


def test_cli_neutralize_writes_a_matched_control(tmp_path, integrity):
    out = tmp_path / "control.yaml"
    done = _charlab("neutralize", "integrity", "--out", str(out), "--seed", "4")
    assert done.returncode == 0, done.stderr
    assert "geometry matches" in done.stdout
    assert load_constitution(out) == neutralize(integrity, seed=4)


def test_cli_diversity_rejects_a_bad_trait(tmp_path):
    out = tmp_path / "d.yaml"
    done = _charlab("diversity", "integrity", "--trait", "99", "--breadth", "broad", "--n", "3", "--out", str(out))
    assert done.returncode == 2
    assert "out of range" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
