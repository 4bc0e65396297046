"""What one evaluation declares, so that a study can plan, check, run and read it without naming it.

Each evaluation module ends with one ``Evaluation``: its name, where its settings live in a
study's ``evaluations`` block, the input files a user must supply, what it costs on one model,
what it needs from the model, when it runs, how it runs, and what its metrics mean downstream.
``charlab.evals.registry`` lists them; the study file, the plan, the study's nodes and the
report loop over that list.

Every evaluation runs the same way: ``run(EvalContext) -> rows``. The context holds what any
evaluation of one model under test may use; each takes the parts it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlab.analysis.results import EvalTarget, ResultRow
from charlab.costs import Cost
from charlab.judges.judge import Judge, JudgeConfig
from charlab.judges.rubrics import load_rubric
from charlab.models.base import Backend
from charlab.models.refs import ModelRef
from charlab.store.cache import RowCache

if TYPE_CHECKING:  # types of the context's fields only: no torch import for a module that declares an evaluation
    from charlab.constitution.schema import Constitution
    from charlab.evals.answers import EvalPrompt
    from charlab.interp.axis import Axis
    from charlab.models.hf import HFBackend

# An input file a user must supply: the study field naming it, and a call that raises ConfigError
# (saying what is wrong) when the file cannot be read.
InputCheck = tuple[str, Callable[[], object]]


@dataclass(frozen=True)
class Metric:
    """One metric of an evaluation's rows, as the analysis and the report read it.

    A metric an evaluation does not declare reads as higher-is-better and stays out of the
    report's headline table.
    """

    name: str
    lower_is_better: bool = False  # a rise is the harm (a harmful rate); otherwise a fall is
    headline: str | None = None  # its column label in the report's headline table; None: not there


@dataclass(frozen=True)
class EvalContext:
    """Everything one evaluation of one model under test is given; the same shape for every evaluation."""

    model: ModelRef  # the model under test (for evaluations that load it themselves, like lm-eval)
    backend: Backend  # the model under test, served for generation
    hf: HFBackend | None  # the same model on the hf backend when the evaluation needs activations, else None
    judge_backend: Backend  # the judge model every rubric is asked on
    judge_config: JudgeConfig  # how the judge answers (the suite's judge block)
    target: EvalTarget  # who the rows are about
    cache: RowCache
    out: Path  # this evaluation's own folder
    settings: Any  # what the evaluation's ``settings`` read from the study's evaluations block
    axis: Axis | None = None  # the study's Assistant Axis, when it builds one
    constitution: Constitution | None = None  # the traits_of condition's constitution, for those that read it
    trait_prompts: Sequence[EvalPrompt] | None = None  # its questions that distillation never used

    def judge(self, rubric: str) -> Judge:
        """A judge for one shipped rubric, on the judge backend."""
        return Judge(self.judge_backend, load_rubric(rubric), self.judge_config)


def _no_inputs(evaluations: Any) -> list[InputCheck]:
    return []


@dataclass(frozen=True)
class Evaluation:
    """One evaluation as the study sees it. Functions of ``evaluations`` get the study's evaluations block.

    A suite evaluation (``suite=True``) is chosen by name in ``evaluations.evals`` (and
    ``evals_after`` after a challenge), reads its sizes from the suite block (its ``settings`` are
    ``evaluations.suite``, so ``run_suite`` can run it from a ``SuiteSettings`` alone) and writes
    under ``suite/<folder>``. Any other runs whenever its ``settings`` are not None (its own block
    is set) and writes under ``<folder>``.
    """

    name: str  # how a study names it (evaluations.evals) and the registry knows it
    rows: str  # the ``eval`` column of the rows it writes (what metrics are looked up by)
    folder: str  # its folder's name inside the model's evaluation folder
    settings: Callable[[Any], Any]  # evaluations block -> what ``run`` reads as ctx.settings; None: left out
    cost: Callable[[Any], Cost]  # evaluations block -> upper-bound work on one model under test
    run: Callable[[EvalContext], list[ResultRow]]
    metrics: tuple[Metric, ...] = ()
    inputs: Callable[[Any], list[InputCheck]] = _no_inputs  # evaluations block -> files a user must supply
    activations: bool = False  # needs the model on the hf backend (hooks), not only generation
    after_challenge: bool = True  # also runs on each challenged model, not only before any challenge
    suite: bool = True  # chosen by name in evals / evals_after (see above), else by its own settings block
    reads_traits_of: bool = False  # gets the traits_of condition's constitution and held-out questions
