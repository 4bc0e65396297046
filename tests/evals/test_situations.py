"""The situation suite: the shipped data, prompt building, cluster-safe folds and located file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from charlab.constitution.schema import Situation
from charlab.errors import CharlabError, ConfigError
from charlab.evals.answers import EvalPrompt
from charlab.evals.situations import MODES, grouped_folds, load_situations, situation_prompts

REQUIRED_TYPES = {"everyday_task", "personal_distress", "scam", "conspiracy_claim", "medical", "misinformation",
                  "dangerous_request", "technical_creative"}


@pytest.fixture(scope="module")
def suite():
    return load_situations()


@pytest.fixture(scope="module")
def prompts(suite):
    return situation_prompts(suite, (None, "You are a helpful assistant."))


# -- the shipped suite ---------------------------------------------------------------------------------


def test_shipped_suite_has_every_required_type_with_enough_prompts(suite):
    assert {kind.id for kind in suite.types} >= REQUIRED_TYPES
    assert len(suite.types) >= 8
    assert all(len(kind.prompts) >= 12 for kind in suite.types)
    assert suite.paraphrase_count == 2
    assert all(len(p.paraphrases) == 2 for kind in suite.types for p in kind.prompts)


def test_shipped_ids_and_phrasings_are_unique(suite):
    type_ids = [kind.id for kind in suite.types]
    prompt_ids = [p.id for kind in suite.types for p in kind.prompts]
    texts = [t for kind in suite.types for p in kind.prompts for t in p.paraphrases]
    assert len(set(type_ids)) == len(type_ids)
    assert len(set(prompt_ids)) == len(prompt_ids)
    assert len(set(texts)) == len(texts)


def test_shipped_modes_are_valid_and_all_used(suite):
    modes = {kind.id: kind.expected_mode for kind in suite.types}
    assert set(modes.values()) == set(MODES)
    assert modes["personal_distress"] == "emotional_support"
    assert modes["dangerous_request"] == "refuse"
    assert modes["misinformation"] == modes["conspiracy_claim"] == "correct_premise"


def test_shipped_types_are_tagged_with_the_constitution_vocabulary(suite):
    tags = {tag for kind in suite.types for tag in kind.tags}
    assert all(kind.tags for kind in suite.types)
    assert tags <= set(Situation)


# -- prompts ----------------------------------------------------------------------------------------------


def test_prompts_cover_every_type_prompt_paraphrase_and_system(suite, prompts):
    n_prompts = sum(len(kind.prompts) for kind in suite.types)
    assert len(prompts) == n_prompts * 2 * 2
    assert len({p.item_id for p in prompts}) == len(prompts)


def test_prompt_ids_clusters_and_meta(suite, prompts):
    kind = suite.types[0]
    first = kind.prompts[0]
    by_id = {p.item_id: p for p in prompts}
    plain = by_id[f"{kind.id}/{first.id}/1/0"]
    assert plain.messages == [{"role": "user", "content": first.paraphrases[1]}]
    assert plain.cluster == first.id
    assert plain.meta == {"type": kind.id, "expected_mode": kind.expected_mode, "paraphrase_index": 1,
                          "system_index": 0}
    with_system = by_id[f"{kind.id}/{first.id}/0/1"]
    assert with_system.messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert with_system.question == first.paraphrases[0]
    assert with_system.meta["system_index"] == 1
    assert {p.cluster for p in prompts if p.item_id.startswith(f"{kind.id}/{first.id}/")} == {first.id}


def test_prompts_need_a_system_prompt_entry(suite):
    with pytest.raises(CharlabError, match="at least one system prompt"):
        situation_prompts(suite, ())


# -- folds ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 5, 12])
def test_every_item_is_tested_exactly_once(prompts, k):
    folds = grouped_folds(prompts, k, seed=0)
    assert len(folds) == k
    tested = sorted(i for _, test in folds for i in test)
    assert tested == list(range(len(prompts)))
    for train, test in folds:
        assert sorted(train + test) == list(range(len(prompts)))


@pytest.mark.parametrize("k", [2, 5, 12])
def test_no_cluster_is_on_both_sides_and_every_type_is_trained_on(prompts, k):
    types = {p.meta["type"] for p in prompts}
    for train, test in grouped_folds(prompts, k, seed=3):
        assert not {prompts[i].cluster for i in train} & {prompts[i].cluster for i in test}
        assert {prompts[i].meta["type"] for i in train} == types


def test_folds_are_stratified_and_balanced(prompts):
    folds = grouped_folds(prompts, 4, seed=1)
    for _, test in folds:
        clusters_per_type: dict[str, set[str]] = {}
        for i in test:
            clusters_per_type.setdefault(prompts[i].meta["type"], set()).add(prompts[i].cluster)
        assert {len(c) for c in clusters_per_type.values()} == {3}  # 12 prompts per type / 4 folds


def test_seeds_reproduce_and_differ(prompts):
    assert grouped_folds(prompts, 5, seed=7) == grouped_folds(prompts, 5, seed=7)
    assert grouped_folds(prompts, 5, seed=7) != grouped_folds(prompts, 5, seed=8)


def test_fold_count_must_fit_the_clusters(prompts):
    with pytest.raises(CharlabError, match="choose k between 2 and 96"):
        grouped_folds(prompts, 97, seed=0)
    with pytest.raises(CharlabError, match="choose k between 2"):
        grouped_folds(prompts, 1, seed=0)


def test_a_cluster_spanning_two_types_is_refused():
    mixed = [EvalPrompt("a", [{"role": "user", "content": "x"}], "c", {"type": "scam"}),
             EvalPrompt("b", [{"role": "user", "content": "y"}], "c", {"type": "medical"})]
    with pytest.raises(CharlabError, match="cluster 'c'"):
        grouped_folds(mixed, 2, seed=0)


# -- bad files --------------------------------------------------------------------------------------------


def _suite_data() -> dict:
    prompt = {"id": "p1", "paraphrases": ["one way", "another way"]}
    other = {"id": "p2", "paraphrases": ["a third", "a fourth"]}
    return {"name": "tiny", "types": [
        {"id": "scam", "description": "d", "expected_mode": "caution_or_redirect", "prompts": [prompt]},
        {"id": "medical", "description": "d", "expected_mode": "caution_or_redirect", "prompts": [other]},
    ]}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    hits = [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return hits[occurrence - 1]


def test_a_user_file_loads(tmp_path):
    suite = load_situations(_write(tmp_path, _suite_data()))
    assert [kind.id for kind in suite.types] == ["scam", "medical"]
    assert len(situation_prompts(suite)) == 4


def test_unknown_mode_names_file_line_and_field(tmp_path):
    data = _suite_data()
    data["types"][1]["expected_mode"] = "lecture"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_situations(path)
    assert f"{path}:{_line_of(path, 'lecture')}: field 'types.1.expected_mode'" in str(err.value)


def test_duplicate_prompt_id_is_refused_where_it_repeats(tmp_path):
    data = _suite_data()
    data["types"][1]["prompts"][0]["id"] = "p1"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_situations(path)
    message = str(err.value)
    assert f"{path}:{_line_of(path, 'id: p1', 2)}: field 'types.1.prompts.0.id'" in message
    assert "already used in type 'scam'" in message


def test_duplicate_type_id_is_refused(tmp_path):
    data = _suite_data()
    data["types"][1]["id"] = "scam"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"suite\.yaml:\d+: field 'types\.1\.id': situation type 'scam'"):
        load_situations(path)


def test_uneven_paraphrase_counts_are_refused(tmp_path):
    data = _suite_data()
    data["types"][1]["prompts"][0]["paraphrases"].append("a fifth")
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"field 'types\.1\.prompts\.0\.paraphrases': .*has 3 paraphrases"):
        load_situations(path)


def test_repeated_wording_is_refused(tmp_path):
    data = _suite_data()
    data["types"][1]["prompts"][0]["paraphrases"][1] = "One  way"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"field 'types\.1\.prompts\.0\.paraphrases\.1': .*prompt 'p1'"):
        load_situations(path)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["types"][0].update(prompts=[]), "types.0.prompts"),
    (lambda d: d["types"][0]["prompts"][0].update(id="Bad/Id"), "types.0.prompts.0.id"),
    (lambda d: d["types"][0]["prompts"][0]["paraphrases"].__setitem__(0, "  "), "types.0.prompts.0.paraphrases.0"),
    (lambda d: d["types"][0].update(tags=["weather"]), "types.0.tags.0"),
    (lambda d: d["types"][0].update(colour="red"), "types.0.colour"),
])
def test_bad_fields_name_file_and_field(tmp_path, edit, field):
    data = _suite_data()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=rf"suite\.yaml:\d+: field '{field}'"):
        load_situations(path)
