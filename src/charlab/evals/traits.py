"""Trait expression: the manipulation check that character training changed the model at all.

Before asking whether a character resists a later fine-tune, a study has to show the character
took. Two measures, both on material the training never saw:

- **Judged expression.** The model answers held-out prompts (no system prompt: the trained
  character has to show on its own); a judge rates every answer against every trait of the
  constitution, 0-100 (rubric ``trait_expression``, its ``{trait}`` slot filled with the
  trait's statement). Every answer is scored on every trait, not only on the trait its prompt
  was written for: held-out prompts rarely belong to one trait, a character shows several traits
  at once, and the traits a prompt does not target give each answer its own within-model
  comparison. Rows: ``trait_score`` per trait (group = the statement) and overall (group
  empty), each with a bootstrap interval that resamples prompts.
- **Likelihood of in-character replies.** Reference replies written in character (for
  instance the teacher's answers to held-out prompts, as a chat JSONL) are scored under the
  model: mean log-probability per token of each reply (``HFBackend.score``, the demo's
  measure). Row ``reference_logprob``, bootstrap over prompts (replies to the same prompt form
  one cluster). It needs no judge, only a backend that can score.

**Effect vs base.** Every run also writes ``values.jsonl``: one value per unit (a prompt, a
reference reply, a role prompt) and metric. ``effect_vs_base`` pairs the units two targets share,
takes model minus base per unit and reports the mean difference with a cluster bootstrap interval
(``<metric>_vs_base`` rows). Pairing removes the prompt-to-prompt spread that two separate
intervals would carry into the comparison. The role-adoption eval writes the same values, so the
same function compares its targets.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charlab.analysis.results import EvalTarget, ResultRow, write_results
from charlab.analysis.stats import Estimate, cluster_bootstrap_mean
from charlab.constitution.schema import Constitution
from charlab.costs import Cost
from charlab.datasets.loaders import load_chat_jsonl
from charlab.errors import ConfigError
from charlab.evals.answers import EvalPrompt, answer_prompts, judge_answers, write_answers
from charlab.evals.evaluation import EvalContext, Evaluation, Metric
from charlab.io import atomic_write_json, atomic_write_jsonl, iter_jsonl, stable_hash
from charlab.judges.judge import Judge
from charlab.judges.records import JudgeRecord, ParseReport
from charlab.models.base import Backend, NotSupportedError, SamplingParams, check_messages
from charlab.store.cache import RowCache

log = logging.getLogger(__name__)

EVAL = "trait_expression"
VALUES_FILE = "values.jsonl"


# -- settings ------------------------------------------------------------------------------------


class Intervals(BaseModel):
    """How intervals are computed; seeded so a rerun reports the same interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resamples: int = Field(2000, ge=100, description="bootstrap resamples")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="two-sided interval level")
    seed: int = Field(0, description="bootstrap seed")

    def mean(self, values: Sequence[float], clusters: Sequence[str]) -> Estimate:
        return cluster_bootstrap_mean(values, clusters, resamples=self.resamples, confidence=self.confidence,
                                      seed=self.seed)


class TraitSettings(BaseModel):
    """How the model under test answers and how intervals are drawn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(1, ge=1, description="answers per prompt (sample k uses sample_index k)")
    sampling: SamplingParams = Field(SamplingParams(temperature=0.7, max_new_tokens=256),
                                     description="how the model under test answers")
    seed: int = Field(0, description="sampling seed")
    keep_system: bool = Field(False, description="keep system turns of prompts and references; off by default "
                                                 "because a teacher's constitution prompt in a reference file "
                                                 "would hand the character to the base model too")
    intervals: Intervals = Field(default_factory=Intervals, description="bootstrap settings")


# -- per-unit values and the paired comparison ---------------------------------------------------


@dataclass(frozen=True)
class UnitValue:
    """One metric's value for one unit of an eval: what two targets are paired on."""

    metric: str
    group: str  # "" for the overall value, else the slice (a trait statement, a role)
    unit: str  # the thing both targets saw: a prompt id, a reference reply, a role prompt x question
    cluster: str  # what the bootstrap resamples (a prompt, a role)
    value: float


@dataclass
class EvalRun:
    """What an eval produced: its result rows, its per-unit values, and how the judge parsed."""

    rows: list[ResultRow]
    units: list[UnitValue]
    report: ParseReport | None


def unit_means(metric: str, group: str, observations: Iterable[tuple[str, str, float]]) -> list[UnitValue]:
    """Average (unit, cluster, value) observations per unit, so several samples of a prompt count once."""
    sums: dict[str, list] = {}
    for unit, cluster, value in observations:
        entry = sums.setdefault(unit, [cluster, 0.0, 0])
        entry[1] += value
        entry[2] += 1
    return [UnitValue(metric, group, unit, cluster, total / count) for unit, (cluster, total, count) in sums.items()]


def write_unit_values(path: str | os.PathLike, units: Sequence[UnitValue]) -> Path:
    return atomic_write_jsonl(path, (asdict(u) for u in units))


def read_unit_values(path: str | os.PathLike) -> list[UnitValue]:
    """Values written by an eval run; a bad line names the file, the line and the field."""
    out = []
    for lineno, row in iter_jsonl(path, finite=False):  # charlab wrote it; a mean over nothing is NaN
        try:
            out.append(_UnitRow.model_validate(row).to_unit())
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise ConfigError(f"{path}:{lineno}: field '{field}': {err['msg']}") from None
    return out


class _UnitRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    group: str
    unit: str
    cluster: str
    value: float

    def to_unit(self) -> UnitValue:
        return UnitValue(**self.model_dump())


def effect_vs_base(model: Sequence[UnitValue], base: Sequence[UnitValue], target: EvalTarget, eval_name: str,
                   intervals: Intervals = Intervals(), judge: str = "") -> list[ResultRow]:
    """``<metric>_vs_base`` rows: mean of model minus base over the units both have, per metric and group.

    The interval is a cluster bootstrap of the per-unit differences (clusters from the model's
    side), i.e. a paired bootstrap; ``n`` is the number of paired units. Units only one side has
    (a prompt set changed, a judgement failed on one side) are left out and logged.
    """
    base_values = {(u.metric, u.group, u.unit): u.value for u in base}
    paired: dict[tuple[str, str], tuple[list[float], list[str]]] = {}
    unmatched = 0
    for u in model:
        other = base_values.get((u.metric, u.group, u.unit))
        if other is None:
            unmatched += 1
            continue
        diffs, clusters = paired.setdefault((u.metric, u.group), ([], []))
        diffs.append(u.value - other)
        clusters.append(u.cluster)
    if not paired:
        raise ConfigError(f"{eval_name}: the model and the base share no units; compare runs of the same eval "
                          f"on the same prompts")
    if unmatched:
        log.warning("%s: %d model units have no base counterpart and are left out of the comparison",
                    eval_name, unmatched)
    return [ResultRow.of(target, eval_name, f"{metric}_vs_base", intervals.mean(diffs, clusters), group=group,
                         judge=judge)
            for (metric, group), (diffs, clusters) in paired.items()]


def parse_failure_rows(target: EvalTarget, eval_name: str, report: ParseReport, judge: str) -> list[ResultRow]:
    """``parse_failures``: unreadable judgements out of all, overall and per reason (group = the reason)."""
    def count(failed: int) -> Estimate:
        return Estimate(float(failed), math.nan, math.nan, report.total)

    rows = [ResultRow.of(target, eval_name, "parse_failures", count(report.failed), judge=judge)]
    rows += [ResultRow.of(target, eval_name, "parse_failures", count(n), group=reason, judge=judge)
             for reason, n in sorted(report.failures.items())]
    return rows


def judge_label(judge: Judge) -> str:
    """The ``judge`` column: which model judged, with which rubric version."""
    return f"{judge.fingerprint}|{judge.rubric.id}"


def check_slot(judge: Judge, slot: str, eval_name: str) -> None:
    """Refuse a rubric that cannot see the eval's context: every judgement would be made blind to it."""
    if slot not in judge.rubric.extra_slots:
        raise ConfigError(f"{eval_name}: rubric {judge.rubric.name} has no {{{slot}}} slot (extra_slots), so the "
                          f"judge would never see the {slot}; use a rubric that declares it")


# -- inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """One in-character reply to score: the conversation up to and including it."""

    unit: str
    cluster: str  # the prompt it answers: replies to the same prompt are resampled together
    messages: list[dict[str, str]]


def _strip_system(messages: Sequence[dict[str, str]], keep_system: bool) -> list[dict[str, str]]:
    return [dict(m) for m in messages if keep_system or m["role"] != "system"]


def load_references(path: str | os.PathLike, keep_system: bool = False) -> list[Reference]:
    """Chat JSONL (``{"messages": [...], "meta"?: {"id"?: ...}}``) whose last turn is the reply to score.

    The unit id is ``meta.id`` when given, else a hash of the conversation, so two runs on the
    same file pair up even if its lines were reordered.
    """
    refs, seen = [], set()
    for example in load_chat_jsonl(path):
        messages = _strip_system(example["messages"], keep_system)
        unit = str(example["meta"].get("id") or stable_hash(messages))
        if unit in seen:
            raise ConfigError(f"{path}:{example['meta']['line']}: reference {unit!r} appears twice; give each "
                              f"line its own meta.id or remove the duplicate")
        seen.add(unit)
        refs.append(Reference(unit, stable_hash(messages[:-1]), messages))
    if not refs:
        raise ConfigError(f"{path}: no references; expected chat JSONL ending on the in-character reply")
    return refs


def load_trait_prompts(path: str | os.PathLike, keep_system: bool = False) -> list[EvalPrompt]:
    """Held-out prompts from JSONL: ``{"id"?, "question"}`` or ``{"id"?, "messages"}``.

    A conversation that ends on an assistant turn loses that turn, so a file of teacher
    conversations serves as both the prompts and the references. Identical prompts without ids
    are asked once (``samples`` gives repeats); the id defaults to a hash of the prompt.
    """
    prompts: dict[str, EvalPrompt] = {}
    for lineno, row in iter_jsonl(path):
        messages = _prompt_messages(row, f"{path}:{lineno}", keep_system)
        explicit = isinstance(row, dict) and row.get("id") is not None
        item_id = str(row["id"]) if explicit else stable_hash(messages)
        if item_id in prompts and explicit:
            raise ConfigError(f"{path}:{lineno}: field 'id': {item_id!r} is used twice; ids must be unique")
        prompts.setdefault(item_id, EvalPrompt(item_id, messages, item_id))
    if not prompts:
        raise ConfigError(f"{path}: no prompts; expected JSONL lines with 'question' or 'messages'")
    return list(prompts.values())


def _prompt_messages(row: object, where: str, keep_system: bool) -> list[dict[str, str]]:
    if not isinstance(row, dict) or ("question" in row) == ("messages" in row):
        raise ConfigError(f"{where}: each line needs exactly one of 'question' (text) or 'messages' (a chat)")
    if "question" in row:
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise ConfigError(f"{where}: field 'question' must be non-empty text")
        return [{"role": "user", "content": row["question"]}]
    if not isinstance(row["messages"], list):
        raise ConfigError(f"{where}: field 'messages' must be a list of {{role, content}} turns")
    try:
        messages = check_messages(row["messages"], "messages")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    messages = _strip_system(messages, keep_system)
    if not messages or messages[-1]["role"] != "user":
        raise ConfigError(f"{where}: field 'messages' must end on a user turn (or on the reply to that turn)")
    return messages


# -- the measures --------------------------------------------------------------------------------


def reference_logprobs(backend: Backend, references: Sequence[Reference]) -> list[UnitValue]:
    """Mean log-probability per token of each reference reply under the backend's model."""
    try:
        scores = backend.score([r.messages for r in references])
    except NotSupportedError as exc:
        raise ConfigError(f"the log-likelihood measure needs a backend that scores given text (hf or vllm): "
                          f"{exc}") from None
    return [UnitValue("reference_logprob", "", r.unit, r.cluster, s.mean) for r, s in zip(references, scores)]


def run_trait_expression(backend: Backend, judge: Judge | None, constitution: Constitution,
                         prompts: Sequence[EvalPrompt], settings: TraitSettings, target: EvalTarget,
                         cache: RowCache, out_dir: str | os.PathLike,
                         references: Sequence[Reference] = ()) -> EvalRun:
    """Judged trait expression on ``prompts`` and/or reference likelihood; writes results into ``out_dir``.

    Files: ``answers.jsonl``, ``judgements.jsonl`` (one record per answer and trait, with the
    trait), ``parse_report.json``, ``values.jsonl`` and ``results.csv`` / ``.parquet``.
    """
    if not prompts and not references:
        raise ConfigError(f"{EVAL}: give held-out prompts (judged) or reference replies (likelihood), or both")
    if prompts and judge is None:
        raise ConfigError(f"{EVAL}: judging the answers to held-out prompts needs a judge")
    out = Path(out_dir)
    rows, units, report = [], [], None
    if prompts:
        rows, units, report = _judged(backend, judge, constitution, prompts, settings, target, cache, out)
    if references:
        ll = reference_logprobs(backend, references)
        estimate = settings.intervals.mean([u.value for u in ll], [u.cluster for u in ll])
        rows.append(ResultRow.of(target, EVAL, "reference_logprob", estimate))
        units += ll
    write_unit_values(out / VALUES_FILE, units)
    write_results(out, rows)
    return EvalRun(rows, units, report)


def _judged(backend: Backend, judge: Judge, constitution: Constitution, prompts: Sequence[EvalPrompt],
            settings: TraitSettings, target: EvalTarget, cache: RowCache,
            out: Path) -> tuple[list[ResultRow], list[UnitValue], ParseReport]:
    """Answer, judge every answer on every trait, and summarise per trait and overall."""
    check_slot(judge, "trait", EVAL)
    answers = answer_prompts(backend, prompts, settings.sampling, samples=settings.samples, seed=settings.seed,
                             cache=cache)
    write_answers(out / "answers.jsonl", answers)
    label = judge_label(judge)
    records: list[JudgeRecord] = []
    observations: dict[str, list[tuple[str, str, float]]] = {}
    for trait in constitution.traits:
        judged = judge_answers(judge, answers, cache, context=lambda _a, s=trait.statement: {"trait": s})
        records += judged
        observations[trait.statement] = [(a.item_id, a.cluster, r.score) for a, r in zip(answers, judged)
                                         if not r.parse_error and r.score is not None]
    statements = [t.statement for t in constitution.traits for _ in answers]
    atomic_write_jsonl(out / "judgements.jsonl", ({**r.to_dict(), "trait": s} for r, s in zip(records, statements)))
    report = ParseReport.from_records(records, judge.fingerprint, judge.rubric.id)
    atomic_write_json(out / "parse_report.json", report.to_dict())
    everything = [obs for group in observations.values() for obs in group]
    rows, units = [], []
    for group, obs in [("", everything), *observations.items()]:
        estimate = settings.intervals.mean([v for _, _, v in obs], [c for _, c, _ in obs])
        rows.append(ResultRow.of(target, EVAL, "trait_score", estimate, group=group, judge=label))
        units += unit_means("trait_score", group, obs)
    return rows + parse_failure_rows(target, EVAL, report, label), units, report


# -- in a study -----------------------------------------------------------------------------------


def _study_run(context: EvalContext) -> list[ResultRow]:
    """The traits_of condition's traits on its held-out questions; nothing when none were held out."""
    if context.constitution is None or not context.trait_prompts:
        return []
    return run_trait_expression(context.backend, context.judge("trait_expression"), context.constitution,
                                context.trait_prompts, context.settings.traits, context.target, context.cache,
                                context.out).rows


def _study_cost(evaluations) -> Cost:
    """Every held-out question x sample at max_new_tokens, each answer judged once per (assumed) trait."""
    from charlab.conditions.character import ASSUMED_TRAITS

    settings = evaluations.suite.traits
    answers = evaluations.traits_prompts * settings.samples
    return Cost(answers * settings.sampling.max_new_tokens, judge_calls=answers * ASSUMED_TRAITS)


EVALUATION = Evaluation(
    name="traits", rows=EVAL, folder="traits", settings=lambda evaluations: evaluations.suite, cost=_study_cost,
    run=_study_run, reads_traits_of=True, metrics=(Metric("trait_score", headline="trait score"),))
