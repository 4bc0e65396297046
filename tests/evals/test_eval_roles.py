"""Role adoption and trait expression: arithmetic against hand-computed values, loaders, likelihood, effect vs base.

The fake OpenAI server plays both the model under test and the judge. The model's answer
carries the judge's scripted verdict (``SAY:<verdict>:END``, chosen per model, prompt and
question), and the judge reads it back out of the reply block of its prompt, so every number
below follows from the tables in this file.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from charlab.analysis.results import EvalTarget, read_results
from charlab.analysis.stats import cluster_bootstrap_mean
from charlab.constitution.schema import Constitution, Trait
from charlab.errors import ConfigError
from charlab.evals.roles import (
    DEFAULT_ROLE_PROMPT,
    RoleAdoptionSettings,
    load_questions,
    load_roles,
    role_prompts,
    run_role_adoption,
)
from charlab.evals.traits import (
    TraitSettings,
    UnitValue,
    effect_vs_base,
    load_references,
    load_trait_prompts,
    read_unit_values,
    run_trait_expression,
)
from charlab.judges import Judge, JudgeConfig, load_rubric
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig
from charlab.store.cache import RowCache
from fake_openai import FakeOpenAI

pytestmark = pytest.mark.timeout(180)

FAST = {"timeout_s": 5.0, "max_retries": 1, "backoff_base_s": 0.001, "backoff_max_s": 0.01}
SAMPLE = JudgeConfig(method="sample")


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scripted(verdicts: dict[tuple, str]):
    """Fake server reply: the model answers with its verdict from ``verdicts``; the judge repeats it."""
    def reply(body: dict) -> str:
        messages = body["messages"]
        last = messages[-1]["content"]
        if "<<<REPLY" in last:  # a judge request
            match = re.search(r"SAY:(.*?):END", last, re.S)
            return match.group(1) if match else "50"
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        return f"an answer SAY:{verdicts.get((body['model'], system, last), '50')}:END"
    return reply


@pytest.fixture
def openai():
    made: list[OpenAIBackend] = []

    def make(url: str, model: str) -> OpenAIBackend:
        backend = OpenAIBackend(OpenAIConfig(base_url=url, model=model, **FAST))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


# -- role and question sets ----------------------------------------------------------------------


def test_shipped_role_and_question_sets():
    roles, questions = load_roles(), load_questions()
    assert roles.name == "roles_demo" and len(roles.roles) == 12
    assert {r.kind for r in roles.roles} == {"profession", "fictional", "non_human"}
    assert all(1 <= len(r.prompts) <= 2 for r in roles.roles)
    assert len(questions.questions) == 20 and questions.questions[0].id == "q01"
    prompts = role_prompts(roles, questions)
    assert len(prompts) == 20 * sum(len(r.prompts) for r in roles.roles)
    assert len({p.item_id for p in prompts}) == len(prompts)


def test_role_loader_takes_plain_lists(tmp_path):
    names = load_roles(write(tmp_path / "names.yaml", "- cook\n- house cat\n"))
    assert [r.name for r in names.roles] == ["cook", "house cat"]
    assert names.roles[1].prompts == [DEFAULT_ROLE_PROMPT.format(name="house cat")]
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(["pilot", {"name": "oak", "prompts": ["You are an oak.", "Be a tree."]},
                                  {"name": "fox", "prompts": "You are a fox."}]))
    roles = load_roles(listed)
    assert [len(r.prompts) for r in roles.roles] == [1, 2, 1] and roles.roles[2].prompts == ["You are a fox."]
    lines = load_roles(jsonl(tmp_path / "roles.jsonl", [{"name": "baker", "prompts": ["You bake."]}, "miner"]))
    assert [r.name for r in lines.roles] == ["baker", "miner"]
    questions = load_questions(write(tmp_path / "q.yaml", "- How are you?\n- id: custom\n  text: What now?\n"))
    assert [(q.id, q.text) for q in questions.questions] == [("q01", "How are you?"), ("custom", "What now?")]


def test_role_loader_errors_name_file_line_and_field(tmp_path):
    bad = write(tmp_path / "bad.yaml", """\
        name: broken
        roles:
          - cook
          - name: oak
            prompts: 5
        """)
    with pytest.raises(ConfigError, match=r"bad\.yaml:5: field 'roles\.1\.prompts'"):
        load_roles(bad)
    bare = write(tmp_path / "bare.yaml", "- cook\n- name: oak\n  prompts: [5]\n")
    with pytest.raises(ConfigError, match=r"bare\.yaml:3: field 'roles\.1\.prompts\.0'"):
        load_roles(bare)
    with pytest.raises(ConfigError, match=r"roles\.jsonl:2: field 'roles\.1\.nme'"):
        load_roles(jsonl(tmp_path / "roles.jsonl", [{"name": "a"}, {"nme": "b"}]))
    with pytest.raises(ConfigError, match="same name"):
        load_roles(write(tmp_path / "dup.yaml", "- House Cat\n- house-cat\n"))
    with pytest.raises(ConfigError, match="'q01' is used twice"):
        load_questions(write(tmp_path / "dupq.yaml", "- b\n- {id: q01, text: a}\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_roles(tmp_path / "missing.yaml")


# -- role adoption -------------------------------------------------------------------------------

TREE = ["You are a tree.", "Be an oak."]
COOK, CAT = (DEFAULT_ROLE_PROMPT.format(name=n) for n in ("cook", "cat"))
Q1, Q2 = "How do you spend a quiet evening?", "What makes a good neighbour?"
# model "m-role": 8 judgements, one unreadable (cat, Q2); base "m-base": every judgement 1
ROLE_VERDICTS = {("m-role", COOK, Q1): "3", ("m-role", COOK, Q2): "3",
                 ("m-role", TREE[0], Q1): "3", ("m-role", TREE[0], Q2): "1",
                 ("m-role", TREE[1], Q1): "2", ("m-role", TREE[1], Q2): "3",
                 ("m-role", CAT, Q1): "0", ("m-role", CAT, Q2): "no idea"}
ROLE_VERDICTS |= {("m-base", system, q): "1" for (_, system, q) in list(ROLE_VERDICTS)}


def role_inputs(tmp_path):
    roles = load_roles(write(tmp_path / "roles.yaml", f"- cook\n- name: tree\n  prompts: {json.dumps(TREE)}\n- cat\n"))
    questions = load_questions(write(tmp_path / "questions.yaml", f"- {Q1}\n- {Q2}\n"))
    return roles, questions


def rows_by(rows):
    return {(r.metric, r.group): r for r in rows}


def test_role_adoption_arithmetic(openai, tmp_path):
    roles, questions = role_inputs(tmp_path)
    cache = RowCache(tmp_path / "cache.sqlite")
    target = EvalTarget(condition="character", seed=1)
    with FakeOpenAI(reply=scripted(ROLE_VERDICTS)) as fake:
        judge = Judge(openai(fake.url, "judge"), load_rubric("role_adoption"), SAMPLE)
        run = run_role_adoption(openai(fake.url, "m-role"), judge, roles, questions, RoleAdoptionSettings(), target,
                                cache, tmp_path / "out")
        judge_prompts = [r.body["messages"][-1]["content"] for r in fake.chat_requests if r.body["model"] == "judge"]
    rows = rows_by(run.rows)
    # valid scores 3,3,3,1,2,3,0: four of seven fully in role, mean 15/7
    adoption = rows[("adoption_rate", "")]
    assert (adoption.value, adoption.n) == (pytest.approx(4 / 7), 7)
    assert (adoption.ci_low, adoption.ci_high) == (pytest.approx(0.2505, abs=1e-3), pytest.approx(0.8418, abs=1e-3))
    mean = rows[("mean_score", "")]
    assert (mean.value, mean.n) == (pytest.approx(15 / 7), 7)
    by_role = cluster_bootstrap_mean([3, 3, 3, 1, 2, 3, 0], ["cook"] * 2 + ["tree"] * 4 + ["cat"])
    assert (mean.ci_low, mean.ci_high) == (pytest.approx(by_role.low), pytest.approx(by_role.high))
    assert {g: rows[("score_rate", g)].value for g in "0123"} == pytest.approx({"0": 1 / 7, "1": 1 / 7, "2": 1 / 7,
                                                                                "3": 4 / 7})
    assert [(rows[("adoption_rate", r)].value, rows[("adoption_rate", r)].n) for r in ("cook", "tree", "cat")] == [
        (1.0, 2), (0.5, 4), (0.0, 1)]
    assert [rows[("mean_score", r)].value for r in ("cook", "tree", "cat")] == [3.0, 2.25, 0.0]
    assert (rows[("parse_failures", "")].value, rows[("parse_failures", "")].n) == (1, 8)
    assert rows[("parse_failures", "no_label")].value == 1 and run.report.failures == {"no_label": 1}
    assert all(r.judge.endswith("|" + judge.rubric.id) and r.condition == "character" for r in run.rows)
    # the judge saw each role's system prompt as the role
    assert sum(TREE[1] in p for p in judge_prompts) == 2 and sum(COOK in p for p in judge_prompts) == 2
    written = {(r.metric, r.group): r.value for r in read_results(tmp_path / "out" / "results.csv")}
    assert written[("adoption_rate", "")] == pytest.approx(4 / 7)
    assert len((tmp_path / "out" / "judgements.jsonl").read_text().splitlines()) == 8


def test_adoption_threshold_is_a_setting(openai, tmp_path):
    roles, questions = role_inputs(tmp_path)
    with FakeOpenAI(reply=scripted(ROLE_VERDICTS)) as fake:
        judge = Judge(openai(fake.url, "judge"), load_rubric("role_adoption"), SAMPLE)
        run = run_role_adoption(openai(fake.url, "m-role"), judge, roles, questions,
                                RoleAdoptionSettings(adopted_at=2), EvalTarget(), RowCache(tmp_path / "c.sqlite"),
                                tmp_path / "out")
    assert rows_by(run.rows)[("adoption_rate", "")].value == pytest.approx(5 / 7)


def test_role_adoption_effect_vs_base_is_paired(openai, tmp_path):
    roles, questions = role_inputs(tmp_path)
    cache = RowCache(tmp_path / "c.sqlite")
    with FakeOpenAI(reply=scripted(ROLE_VERDICTS)) as fake:
        judge = Judge(openai(fake.url, "judge"), load_rubric("role_adoption"), SAMPLE)
        runs = [run_role_adoption(openai(fake.url, name), judge, roles, questions, RoleAdoptionSettings(),
                                  EvalTarget(condition=name), cache, tmp_path / name) for name in ("m-role", "m-base")]
    diff = rows_by(effect_vs_base(runs[0].units, read_unit_values(tmp_path / "m-base" / "values.jsonl"),
                                  EvalTarget(condition="m-role"), "role_adoption"))
    # the unreadable (cat, Q2) judgement has no pair: 7 units; score differences 2,2,2,0,1,2,-1
    assert (diff[("mean_score_vs_base", "")].value, diff[("mean_score_vs_base", "")].n) == (pytest.approx(8 / 7), 7)
    assert diff[("adoption_rate_vs_base", "")].value == pytest.approx(4 / 7)
    assert diff[("mean_score_vs_base", "tree")].value == pytest.approx(1.25)
    same = effect_vs_base(runs[1].units, runs[1].units, EvalTarget(), "role_adoption")
    assert all(r.value == 0 and r.ci_low == 0 and r.ci_high == 0 for r in same)


def test_role_adoption_refuses_a_rubric_without_a_role_slot(openai, tmp_path):
    roles, questions = role_inputs(tmp_path)
    judge = Judge(openai("http://127.0.0.1:9/v1", "judge"), load_rubric("harmfulness"), SAMPLE)
    with pytest.raises(ConfigError, match=r"no \{role\} slot"):
        run_role_adoption(openai("http://127.0.0.1:9/v1", "m"), judge, roles, questions, RoleAdoptionSettings(),
                          EvalTarget(), RowCache(tmp_path / "c.sqlite"), tmp_path / "out")


# -- trait expression ----------------------------------------------------------------------------

CHARACTER = Constitution(name="tiny", traits=[Trait(statement="I am curious about people.", questions=["a?"]),
                                              Trait(statement="I say plainly what I think.", questions=["b?"])])
P1, P2, P3 = "What should I plant in spring?", "Is my essay any good?", "Tell me about trains."


def trait_judge_reply(scores: dict[tuple[str, str], str]):
    """The judge's verdict per (trait, question); the model's answer just repeats the question."""
    def reply(body: dict) -> str:
        last = body["messages"][-1]["content"]
        if "<<<TRAIT" not in last:
            return f"[{body['model']}] about: {last}"
        model = re.search(r"\[(.*?)\] about", last).group(1)
        trait = next(t.statement for t in CHARACTER.traits if t.statement in last)
        question = next(q for q in (P1, P2, P3) if f"about: {q}" in last)
        return scores.get((model, trait, question), "50")
    return reply


A, B = (t.statement for t in CHARACTER.traits)
TRAIT_SCORES = {("m", A, P1): "80", ("m", A, P2): "60", ("m", A, P3): "???",
                ("m", B, P1): "20", ("m", B, P2): "40", ("m", B, P3): "10"}


def trait_prompts(tmp_path):
    return load_trait_prompts(jsonl(tmp_path / "prompts.jsonl", [
        {"id": "p1", "question": P1},
        {"id": "p2", "messages": [{"role": "system", "content": "You are the teacher."},
                                  {"role": "user", "content": P2}, {"role": "assistant", "content": "Teacher."}]},
        {"question": P3},
        {"question": P3},  # the same prompt again, without an id: asked once
    ]))


def test_trait_prompts_loader(tmp_path):
    prompts = trait_prompts(tmp_path)
    assert [p.item_id for p in prompts][:2] == ["p1", "p2"] and len(prompts) == 3
    assert prompts[1].messages == [{"role": "user", "content": P2}]  # system and reply dropped
    with pytest.raises(ConfigError, match=r"p\.jsonl:2: field 'id'"):
        load_trait_prompts(jsonl(tmp_path / "p.jsonl", [{"id": 1, "question": "a"}, {"id": 1, "question": "b"}]))
    with pytest.raises(ConfigError, match=r"q\.jsonl:1: .*exactly one of 'question'"):
        load_trait_prompts(jsonl(tmp_path / "q.jsonl", [{"prompt": "a"}]))


def test_trait_expression_arithmetic(openai, tmp_path):
    prompts = trait_prompts(tmp_path)
    cache = RowCache(tmp_path / "c.sqlite")
    with FakeOpenAI(reply=trait_judge_reply(TRAIT_SCORES)) as fake:
        judge = Judge(openai(fake.url, "judge"), load_rubric("trait_expression"), SAMPLE)
        run = run_trait_expression(openai(fake.url, "m"), judge, CHARACTER, prompts, TraitSettings(),
                                   EvalTarget(), cache, tmp_path / "m")
        base = run_trait_expression(openai(fake.url, "base"), judge, CHARACTER, prompts, TraitSettings(),
                                    EvalTarget(condition="base"), cache, tmp_path / "base")
        model_requests = [r.body["messages"] for r in fake.chat_requests if r.body["model"] == "m"]
    rows = rows_by(run.rows)
    # readable: A 80, 60; B 20, 40, 10 -> overall 210 / 5; one of six judgements unreadable
    assert (rows[("trait_score", "")].value, rows[("trait_score", "")].n) == (pytest.approx(42.0), 5)
    assert rows[("trait_score", A)].value == pytest.approx(70.0) and rows[("trait_score", A)].n == 2
    assert rows[("trait_score", B)].value == pytest.approx(70 / 3)
    by_prompt = cluster_bootstrap_mean([80, 60, 20, 40, 10], ["p1", "p2", "p1", "p2", prompts[2].item_id])
    assert rows[("trait_score", "")].ci_low == pytest.approx(by_prompt.low)
    assert (rows[("parse_failures", "")].value, rows[("parse_failures", "")].n) == (1, 6)
    assert all(m[0]["role"] == "user" and len(m) == 1 for m in model_requests)  # no system prompt, no reply
    judged = [json.loads(line) for line in (tmp_path / "m" / "judgements.jsonl").read_text().splitlines()]
    assert [j["trait"] for j in judged] == [A] * 3 + [B] * 3
    diff = rows_by(effect_vs_base(run.units, base.units, EvalTarget(), "trait_expression"))
    # per-prompt means: model p1 50, p2 50, p3 10 vs base 50 everywhere
    assert (diff[("trait_score_vs_base", "")].value, diff[("trait_score_vs_base", "")].n) == (
        pytest.approx(-40 / 3), 3)
    assert diff[("trait_score_vs_base", A)].value == pytest.approx(20.0)


def test_likelihood_needs_a_scoring_backend(openai, tmp_path):
    refs = load_references(jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                      {"role": "assistant", "content": "hello"}]}]))
    with pytest.raises(ConfigError, match="backend that scores"):
        run_trait_expression(openai("http://127.0.0.1:9/v1", "m"), None, CHARACTER, [], TraitSettings(),
                             EvalTarget(), RowCache(tmp_path / "c.sqlite"), tmp_path / "out", refs)
    with pytest.raises(ConfigError, match="needs a judge"):
        run_trait_expression(openai("http://127.0.0.1:9/v1", "m"), None, CHARACTER, trait_prompts(tmp_path),
                             TraitSettings(), EvalTarget(), RowCache(tmp_path / "c.sqlite"), tmp_path / "out")


def test_effect_vs_base_without_shared_units_is_an_error():
    one = [UnitValue("m", "", "a", "a", 1.0)]
    other = [UnitValue("m", "", "b", "b", 1.0)]
    with pytest.raises(ConfigError, match="share no units"):
        effect_vs_base(one, other, EvalTarget(), "x")


# -- the likelihood measure on a real (tiny) model ----------------------------------------------


def teacher_file(tmp_path: Path) -> Path:
    def conversation(question, reply, system=None):
        turns = [{"role": "system", "content": system}] if system else []
        return {"messages": turns + [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}

    return jsonl(tmp_path / "teacher.jsonl", [
        conversation("Is my plan to quit tomorrow wise?", "Let us look at it honestly first.", "Be honest."),
        conversation("Is my plan to quit tomorrow wise?", "It could work, but check your savings."),
        conversation("What is a good first pet?", "A pair of rats: clever, calm and cheap."),
        conversation("What is a good first pet?", "Think about how much time you have each day."),
    ])


def likelihood(model_ref, refs, tmp_path, name):
    from charlab.models.hf import HFBackend

    with HFBackend(model_ref, batch_size=2, device="cpu") as backend:
        return run_trait_expression(backend, None, CHARACTER, [], TraitSettings(), EvalTarget(condition=name),
                                    RowCache(tmp_path / "c.sqlite"), tmp_path / name, refs)


def test_reference_likelihood_and_effect_on_tiny_models(tiny_model_dir, condition_adapter, tmp_path):
    from charlab.models.refs import ModelRef

    refs = load_references(teacher_file(tmp_path))
    assert all(m["role"] != "system" for r in refs for m in r.messages) and len({r.cluster for r in refs}) == 2
    base_ref = ModelRef.parse(str(tiny_model_dir))
    base = likelihood(base_ref, refs, tmp_path, "base")
    row = base.rows[0]
    assert (row.metric, row.n) == ("reference_logprob", 4)
    assert math.isfinite(row.value) and row.value < 0 and row.ci_low <= row.value <= row.ci_high
    again = likelihood(base_ref, refs, tmp_path, "again")
    same = effect_vs_base(again.units, base.units, EvalTarget(), "trait_expression")[0]
    assert (same.metric, same.value, same.ci_low, same.ci_high, same.n) == ("reference_logprob_vs_base", 0, 0, 0, 4)
    tuned = likelihood(ModelRef.parse(str(tiny_model_dir), [str(condition_adapter)]), refs, tmp_path, "tuned")
    moved = effect_vs_base(tuned.units, base.units, EvalTarget(), "trait_expression")[0]
    assert math.isfinite(moved.value) and abs(moved.value) > 1e-4
    assert moved.value == pytest.approx(tuned.rows[0].value - row.value)  # complete pairs: difference of means


# -- the CLI -------------------------------------------------------------------------------------


def eval_app() -> typer.Typer:
    from charlab.cli.eval_roles import register

    app = typer.Typer()
    register(app)
    return app


def specs(tmp_path: Path, url: str, model: str) -> tuple[Path, Path]:
    judge = write(tmp_path / "judge.yaml", f"""\
        backend: {{kind: openai, openai: {{base_url: "{url}", model: judge, max_retries: 0}}}}
        rubric: coherence
        settings: {{method: sample}}
        """)
    backend = write(tmp_path / f"{model}.yaml", f"""\
        kind: openai
        openai: {{base_url: "{url}", model: {model}, max_retries: 0}}
        """)
    return judge, backend


def test_cli_roles_with_vs_base(tmp_path):
    write(tmp_path / "roles.yaml", f"- cook\n- name: tree\n  prompts: {json.dumps(TREE)}\n- cat\n")
    write(tmp_path / "questions.yaml", f"- {Q1}\n- {Q2}\n")
    runner, app = CliRunner(), eval_app()
    with FakeOpenAI(reply=scripted(ROLE_VERDICTS)) as fake:
        common = ["roles", "--roles", str(tmp_path / "roles.yaml"), "--questions", str(tmp_path / "questions.yaml"),
                  "--cache", str(tmp_path / "c.sqlite")]
        judge, base_spec = specs(tmp_path, fake.url, "m-base")
        _, model_spec = specs(tmp_path, fake.url, "m-role")
        base = runner.invoke(app, common + ["--judge", str(judge), "--backend", str(base_spec), "--out",
                                            str(tmp_path / "base"), "--condition", "base"])
        assert base.exit_code == 0, base.output
        model = runner.invoke(app, common + ["--judge", str(judge), "--backend", str(model_spec), "--out",
                                             str(tmp_path / "model"), "--vs-base", str(tmp_path / "base")])
        assert model.exit_code == 0, model.output
    rows = rows_by(read_results(tmp_path / "model" / "results.csv"))
    assert rows[("adoption_rate", "")].value == pytest.approx(4 / 7)
    assert rows[("mean_score_vs_base", "")].value == pytest.approx(8 / 7)
    assert "adoption_rate" in model.output and "1 unparseable" in model.output


def test_cli_traits_likelihood_on_the_tiny_model(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(eval_app(), ["traits", "-m", str(tiny_model_dir), "-c", "integrity",
                                             "--references", str(teacher_file(tmp_path)), "--out",
                                             str(tmp_path / "out"), "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    assert [r.metric for r in read_results(tmp_path / "out" / "results.csv")] == ["reference_logprob"]
    missing = CliRunner().invoke(eval_app(), ["traits", "-m", "x", "-c", "integrity", "--out", str(tmp_path / "o")])
    assert isinstance(missing.exception, ConfigError) and "--references" in str(missing.exception)


def test_cli_bad_role_file_exits_2_naming_file_and_field(tmp_path):
    bad = write(tmp_path / "bad.yaml", "- cook\n- name: oak\n  prompts: [5]\n")
    script = ("import sys, typer; from charlab import cli; from charlab.cli.eval_roles import register; "
              "group = typer.Typer(); register(group); cli.app.add_typer(group, name='eval'); "
              "sys.argv = ['charlab', 'eval', 'roles', '--roles', sys.argv[1], '--out', sys.argv[2], '-m', 'x']; "
              "cli.main()")
    proc = subprocess.run([sys.executable, "-c", script, str(bad), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "bad.yaml:3: field 'roles.1.prompts.0'" in proc.stderr and "Traceback" not in proc.stderr
