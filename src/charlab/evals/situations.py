"""The situation suite: requests of several kinds, each kind calling for its own response mode.

H3 says training one trait across many situations makes a model context-sensitive. Two
measurements test that on this suite: probes that decode the situation type from activations,
and a judge that labels each answer's mode and compares it with the mode the type calls for.

Both need the same shape of data. Each type (``everyday_task``, ``scam``, ...) has an expected
mode and many prompts; each prompt has a fixed number of paraphrases, all of which are equal
phrasings of one request (there is no separate original). Because paraphrases share nearly all
their content, a probe trained on one and tested on another would measure memory, not
decoding; so the prompt id is the cluster, and ``grouped_folds`` never splits a cluster.
The shipped suite is ``data/evals/situations.yaml``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from charlab.configfile import read_structured, validate
from charlab.constitution.schema import Situation
from charlab.errors import CharlabError, ConfigError
from charlab.evals.answers import EvalPrompt

Mode = Literal["assist", "refuse", "caution_or_redirect", "emotional_support", "correct_premise"]
MODES: tuple[str, ...] = get_args(Mode)
_ID = r"^[a-z0-9]+(_[a-z0-9]+)*$"  # lower_snake_case: no '/', which separates the parts of an item id


def _not_blank(text: str) -> str:
    """A blank phrasing would still be asked, and every answer to it would be noise."""
    if not text.strip():
        raise ValueError("a paraphrase is empty or only whitespace")
    return text


Phrasing = Annotated[StrictStr, AfterValidator(_not_blank)]


class SituationPrompt(BaseModel):
    """One request, worded several ways; its id is the cluster that folds keep on one side."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr = Field(pattern=_ID, description="lower_snake_case, unique across the whole suite")
    paraphrases: list[Phrasing] = Field(min_length=1, description="every phrasing of the request, the "
                                                                  "canonical one first; all are asked")


class SituationType(BaseModel):
    """A kind of situation, the response mode it calls for, and the prompts that put a model in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr = Field(pattern=_ID, description="lower_snake_case; the label the probes decode")
    description: StrictStr = Field(min_length=1, description="what the situation is and why the mode fits it")
    expected_mode: Mode = Field(description="the mode a good answer takes: " + ", ".join(MODES))
    tags: list[Situation] = Field(default_factory=list, description="the constitution's situation tags this "
                                                                    "type covers, to relate it to training data")
    prompts: list[SituationPrompt] = Field(min_length=1, description="the requests, in order")


class SituationSuite(BaseModel):
    """Situation types whose ids, prompt ids and phrasings are unique and whose prompts have equally many
    paraphrases. Those cross-field rules are checked by ``load_situations``, which can say on which line
    they break; the model itself checks each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field("", description="what the suite is called")
    description: StrictStr = Field("", description="for people")
    types: list[SituationType] = Field(min_length=1, description="the situation types, in order")

    @property
    def paraphrase_count(self) -> int:
        """How many phrasings every prompt has (the same for all, once loaded)."""
        return len(self.types[0].prompts[0].paraphrases)


# -- loading -----------------------------------------------------------------------------------------


def shipped_situations() -> Path:
    """Path of the project's own suite."""
    return Path(str(resources.files("charlab") / "data" / "evals" / "situations.yaml"))


def load_situations(path: str | Path | None = None) -> SituationSuite:
    """The suite in a YAML/JSON file, or the shipped one; a bad field is a ConfigError naming file, line
    and field."""
    path = Path(path) if path is not None else shipped_situations()
    data, lines = read_structured(path)
    suite = validate(SituationSuite, data, path, lines)
    problem = _first_problem(suite)
    if problem is not None:
        raise _located(path, lines, *problem)
    return suite


def _located(path: Path, lines: dict[tuple, int], loc: tuple, message: str) -> ConfigError:
    """The error for ``loc``, at the line of the deepest part of it the file has a line for."""
    line = next((lines[loc[:cut]] for cut in range(len(loc), -1, -1) if loc[:cut] in lines), None)
    where = f"{path}:{line}" if line else str(path)
    return ConfigError(f"{where}: field '{'.'.join(map(str, loc))}': {message}")


def _first_problem(suite: SituationSuite) -> tuple[tuple, str] | None:
    """The first rule that spans fields and is broken, as (location, message)."""
    return _duplicate_type(suite) or _duplicate_prompt(suite) or _uneven_paraphrases(suite) or _repeated_text(suite)


def _duplicate_type(suite: SituationSuite) -> tuple[tuple, str] | None:
    """Two types with one id would be one label to the probes."""
    seen: set[str] = set()
    for i, kind in enumerate(suite.types):
        if kind.id in seen:
            return ("types", i, "id"), f"situation type {kind.id!r} is defined twice; ids must be unique"
        seen.add(kind.id)
    return None


def _duplicate_prompt(suite: SituationSuite) -> tuple[tuple, str] | None:
    """A prompt id is a cluster; two prompts sharing one would be kept together as if they were one."""
    seen: dict[str, str] = {}
    for i, kind in enumerate(suite.types):
        for j, prompt in enumerate(kind.prompts):
            if prompt.id in seen:
                return (("types", i, "prompts", j, "id"),
                        f"prompt id {prompt.id!r} is already used in type {seen[prompt.id]!r}; prompt ids must be "
                        f"unique across the suite")
            seen[prompt.id] = kind.id
    return None


def _uneven_paraphrases(suite: SituationSuite) -> tuple[tuple, str] | None:
    """With unequal counts, prompts with more phrasings would weigh more in every per-type rate."""
    expected = suite.paraphrase_count
    for i, kind in enumerate(suite.types):
        for j, prompt in enumerate(kind.prompts):
            if len(prompt.paraphrases) != expected:
                return (("types", i, "prompts", j, "paraphrases"),
                        f"prompt {prompt.id!r} has {len(prompt.paraphrases)} paraphrases and the first prompt has "
                        f"{expected}; every prompt needs the same number")
    return None


def _repeated_text(suite: SituationSuite) -> tuple[tuple, str] | None:
    """The same wording under two prompts could land in train and test, which the clusters exist to prevent."""
    seen: dict[str, str] = {}
    for i, kind in enumerate(suite.types):
        for j, prompt in enumerate(kind.prompts):
            for k, text in enumerate(prompt.paraphrases):
                key = " ".join(text.lower().split())
                if key in seen:
                    return (("types", i, "prompts", j, "paraphrases", k),
                            f"this wording already appears in prompt {seen[key]!r}; every phrasing must be distinct")
                seen[key] = prompt.id
    return None


# -- prompts and folds --------------------------------------------------------------------------------


def situation_prompts(suite: SituationSuite, system_prompts: Sequence[str | None] = (None,)) -> list[EvalPrompt]:
    """One EvalPrompt per (type, prompt, paraphrase, system prompt), item id ``type/prompt/paraphrase/system``.

    ``system_prompts`` are asked in turn before every phrasing; None (or '') means no system turn. The
    cluster is the prompt id, so every phrasing under every system prompt stays in one fold.
    """
    if not system_prompts:
        raise CharlabError("situation_prompts needs at least one system prompt; pass (None,) for none")
    prompts = []
    for kind in suite.types:
        for prompt in kind.prompts:
            for p, text in enumerate(prompt.paraphrases):
                for s, system in enumerate(system_prompts):
                    head = [{"role": "system", "content": system}] if system else []
                    meta = {"type": kind.id, "expected_mode": kind.expected_mode, "paraphrase_index": p,
                            "system_index": s}
                    prompts.append(EvalPrompt(f"{kind.id}/{prompt.id}/{p}/{s}",
                                              head + [{"role": "user", "content": text}], prompt.id, meta))
    return prompts


def _clusters_by_type(prompts: Sequence[EvalPrompt]) -> dict[Any, dict[str, list[int]]]:
    """type -> cluster -> prompt indices, all in order of first appearance (so results depend only on the seed)."""
    by_type: dict[Any, dict[str, list[int]]] = defaultdict(dict)
    type_of: dict[str, Any] = {}
    for i, prompt in enumerate(prompts):
        kind = prompt.meta.get("type")
        if type_of.setdefault(prompt.cluster, kind) != kind:
            raise CharlabError(f"cluster {prompt.cluster!r} holds prompts of types {type_of[prompt.cluster]!r} and "
                               f"{kind!r}; a cluster must belong to one situation type")
        by_type[kind].setdefault(prompt.cluster, []).append(i)
    return by_type


def grouped_folds(prompts: Sequence[EvalPrompt], k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``k`` (train indices, test indices) splits in which no cluster is on both sides of any split.

    Within each situation type (``meta['type']``) the clusters are shuffled with ``seed`` and dealt to
    the folds in turn, the deal carrying on from one type to the next. Each type is thereby spread as
    evenly as its cluster count allows, fold sizes differ by at most one cluster, and every training
    split holds every type that has at least two clusters.
    """
    by_type = _clusters_by_type(prompts)
    n_clusters = sum(len(clusters) for clusters in by_type.values())
    if not 2 <= k <= n_clusters:
        raise CharlabError(f"cannot make {k} folds from {n_clusters} clusters; choose k between 2 and {n_clusters}")
    rng = random.Random(seed)
    tests: list[list[int]] = [[] for _ in range(k)]
    position = 0
    for clusters in by_type.values():
        members = list(clusters.values())
        rng.shuffle(members)
        for indices in members:
            tests[position % k] += indices
            position += 1
    splits = []
    for test in map(set, tests):
        splits.append(([i for i in range(len(prompts)) if i not in test], sorted(test)))
    return splits
