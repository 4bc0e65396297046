"""Is a model context-sensitive? Metrics over one model's answers to the situation suite.

Two kinds of evidence, each with an interval that respects the suite's clustering (a prompt's
paraphrases and system prompts share nearly all their content, so the prompt id is the unit
that intervals resample and folds keep together):

* discrimination: does the model tell the situation types apart? A linear probe decodes the
  type from activations (``probe_accuracy``); an F-like ratio says how far apart the types sit
  relative to their spread (``variance_ratio``); the judged response modes should carry the
  type (``nmi_estimate``) and match the mode each type calls for (``expected_mode_rate``).
* consistency: answers that should not differ do not. Paraphrases of one request, and one
  phrasing under different persona system prompts, should get the same mode
  (``mode_agreement``) and similar projections on the assistant axis (``projection_spread``).

``context_scores`` computes all of them for one model from per-row columns. Everything here is
pure: tensors and lists in, frozen dataclasses out, the same numbers for the same seed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charlab.analysis.stats import Z95, Estimate, cluster_bootstrap_mean, wilson

CONFIDENCE = 0.95
Split = tuple[Sequence[int], Sequence[int]]

_NAN = Estimate(math.nan, math.nan, math.nan, 0)


# -- shared helpers -----------------------------------------------------------------------------------


def _codes(keys: Sequence[Hashable]) -> tuple[np.ndarray, list[Hashable]]:
    """Integer code per key and the distinct keys, in order of first appearance (so order never
    depends on hashing)."""
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(key, len(index)) for key in keys], dtype=np.int64)
    return codes, list(index)


def _owner(members: np.ndarray, owners: Sequence[Hashable], names: list[Hashable], what: str) -> list[Hashable]:
    """The single owner of each unit (e.g. the type of each cluster); a unit with two is an error,
    because the bootstrap would have to split it."""
    result: dict[int, Hashable] = {}
    for unit, owner in zip(members.tolist(), owners):
        if result.setdefault(unit, owner) != owner:
            raise ValueError(f"{what} {names[unit]!r} holds both {result[unit]!r} and {owner!r}")
    return [result[unit] for unit in range(len(names))]


def _resampled_weights(strata: Sequence[int], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples, clusters]`` multiplicities; each resample redraws every stratum's clusters with
    replacement, so each stratum keeps its size (and its presence)."""
    strata = np.asarray(strata)
    weights = np.zeros((resamples, len(strata)))
    rows = np.arange(resamples)[:, None]
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        draws = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        np.add.at(weights, (rows, draws), 1.0)
    return weights


def _with_interval(samples: np.ndarray, n: int) -> Estimate:
    """``samples[0]`` is the point estimate (all weights one), the rest are bootstrap resamples."""
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples[1:], [tail, 100 - tail]) if len(samples) > 1 else (samples[0],) * 2
    return Estimate(float(samples[0]), float(low), float(high), n)


def _as_array(features: torch.Tensor) -> np.ndarray:
    return features.detach().to("cpu", torch.float64).numpy()


def _check_lengths(**columns: Sequence) -> int:
    sizes = {name: len(column) for name, column in columns.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"columns differ in length: {sizes}")
    return next(iter(sizes.values()))


# -- the probe ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LinearProbe:
    """Multinomial logistic regression on features standardized with its training rows' statistics."""

    classes: tuple[str, ...]
    mean: torch.Tensor  # [D] training rows' mean
    scale: torch.Tensor  # [D] training rows' standard deviation, 1 where a feature is constant
    weight: torch.Tensor  # [D, classes]
    bias: torch.Tensor  # [classes]

    def predict(self, features: torch.Tensor) -> list[str]:
        logits = ((features.detach().to("cpu", torch.float64) - self.mean) / self.scale) @ self.weight + self.bias
        return [self.classes[i] for i in logits.argmax(dim=1).tolist()]


def fit_probe(features: torch.Tensor, labels: Sequence[str], *, l2: float = 1e-2, steps: int = 200) -> LinearProbe:
    """Fit by full-batch L-BFGS from zero weights, in float64 on the CPU, so a refit is identical.

    The loss is the mean cross-entropy plus ``l2`` times the squared weights (the bias is not
    penalized); ``steps`` caps the L-BFGS iterations. Standardizing first puts every feature on
    one scale, so one ``l2`` suits activations of any magnitude.
    """
    if len(labels) != len(features) or not labels:
        raise ValueError(f"need one label per row and at least one row; got {len(labels)} for {len(features)}")
    x = features.detach().to("cpu", torch.float64)
    classes = tuple(sorted(set(labels)))
    y = torch.tensor([classes.index(label) for label in labels])
    mean, scale = x.mean(dim=0), x.std(dim=0, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    z = (x - mean) / scale
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(classes, mean, scale, weight.detach(), bias.detach())


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated decoding of the situation type; every row is predicted by the fold that held it out."""

    accuracy: Estimate  # share of rows decoded right; interval from resampling clusters (prompts)
    chance: float  # share of the most frequent label: what always guessing it would score
    labels: tuple[str, ...]  # sorted; the order of ``confusion``
    per_label: Mapping[str, Estimate]  # accuracy among the rows of each label (its recall)
    confusion: tuple[tuple[int, ...], ...]  # [true][predicted] row counts
    fold_sizes: tuple[tuple[int, int], ...]  # (training rows, test rows) per split
    predictions: tuple[str, ...]  # the held-out prediction for each row


def _check_folds(folds: Sequence[Split], clusters: Sequence[Hashable]) -> None:
    """Refuse splits that would let the probe be tested on what it was trained on, or skip a row."""
    n = len(clusters)
    tested = np.zeros(n, dtype=np.int64)
    for j, (train, test) in enumerate(folds):
        if len(train) == 0:
            raise ValueError(f"split {j} has no training rows")
        bad = [i for i in (*train, *test) if not 0 <= i < n]
        if bad:
            raise ValueError(f"split {j} has row index {bad[0]}, outside 0..{n - 1}")
        shared = {clusters[i] for i in train} & {clusters[i] for i in test}
        if shared:
            raise ValueError(f"cluster {min(map(str, shared))!r} is on both sides of split {j}")
        np.add.at(tested, np.asarray(test, dtype=np.int64), 1)
    for i in np.flatnonzero(tested != 1).tolist():
        raise ValueError(f"row {i} (cluster {clusters[i]!r}) is in {tested[i]} test folds; every row must be in "
                         f"exactly one")


def probe_accuracy(features: torch.Tensor, labels: Sequence[str], folds: Sequence[Split],
                   clusters: Sequence[Hashable], *, l2: float = 1e-2, steps: int = 200, resamples: int = 1000,
                   seed: int = 0) -> ProbeResult:
    """How well a linear probe decodes ``labels`` from ``features`` ``[N, D]``, out of fold.

    ``folds`` are (train, test) index lists such as ``evals.situations.grouped_folds`` gives: every
    row must be tested exactly once and no cluster may sit on both sides of a split (a ValueError
    names the offending cluster). Each split fits its own probe, standardized with its training
    rows only; a label missing from a training split simply cannot be predicted there.
    """
    n = _check_lengths(features=features, labels=labels, clusters=clusters)
    _check_folds(folds, clusters)
    predictions: list[str] = [""] * n
    for train, test in folds:
        if len(test):
            probe = fit_probe(features[list(train)], [labels[i] for i in train], l2=l2, steps=steps)
            for i, guess in zip(test, probe.predict(features[list(test)])):
                predictions[i] = guess
    correct = [float(guess == label) for guess, label in zip(predictions, labels)]
    names = tuple(sorted(set(labels)))
    confusion = [[0] * len(names) for _ in names]
    for guess, label in zip(predictions, labels):
        confusion[names.index(label)][names.index(guess)] += 1
    per_label = {}
    for name in names:
        rows = [i for i in range(n) if labels[i] == name]
        per_label[name] = cluster_bootstrap_mean([correct[i] for i in rows], [clusters[i] for i in rows],
                                                 resamples=resamples, seed=seed)
    return ProbeResult(
        accuracy=cluster_bootstrap_mean(correct, clusters, resamples=resamples, seed=seed),
        chance=max(Counter(labels).values()) / n,
        labels=names,
        per_label=per_label,
        confusion=tuple(map(tuple, confusion)),
        fold_sizes=tuple((len(train), len(test)) for train, test in folds),
        predictions=tuple(predictions),
    )


# -- separation of the types --------------------------------------------------------------------------


def variance_ratio(features: torch.Tensor, labels: Sequence[str], clusters: Sequence[Hashable]) -> Estimate:
    """Between-type over within-type scatter, each per degree of freedom (the one-way ANOVA F, summed
    over feature dimensions):

        [sum_k n_k ||mu_k - mu||^2 / (K - 1)]  /  [sum_i ||x_i - mu_k(i)||^2 / (N - K)]

    Around 1 when the types are no further apart than chance makes them; large when activations
    sort by type. The interval is a delete-one-prompt jackknife (normal, around the estimate, not
    below 0). A bootstrap does not suit this statistic: a resample with repeated prompts has type
    means that wander more, which inflates the between-type scatter, so its percentile interval
    can miss the estimate altogether. With fewer than two types, or no more rows than types, the
    value is nan. A cluster holding two types is a ValueError.
    """
    n = _check_lengths(features=features, labels=labels, clusters=clusters)
    type_codes, types = _codes(labels)
    if len(types) < 2 or n <= len(types):
        return Estimate(math.nan, math.nan, math.nan, n)
    cluster_codes, names = _codes(clusters)
    type_of_cluster = np.array(_owner(cluster_codes, type_codes.tolist(), names, "cluster"))
    x = _as_array(features)
    x = x - x.mean(axis=0)  # the ratio ignores a shift; centring keeps the sums below from cancelling
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, cluster_codes, x)
    stats = _ScatterStats(np.bincount(cluster_codes).astype(float), sums @ sums.T,
                          np.bincount(cluster_codes, weights=(x * x).sum(axis=1)), type_of_cluster)
    value = float(stats.ratio(np.ones((1, len(names))))[0])
    left_out = np.ones((len(names), len(names))) - np.eye(len(names))
    singles = np.bincount(type_of_cluster, minlength=len(types)) < 2  # dropping a type's only prompt removes it
    left_out = left_out[~singles[type_of_cluster]]
    if len(left_out) < 2:
        return Estimate(value, math.nan, math.nan, n)
    with np.errstate(invalid="ignore"):
        values = stats.ratio(left_out)
    spread = math.sqrt((len(values) - 1) / len(values) * float(((values - values.mean()) ** 2).sum()))
    half = Z95 * spread  # CONFIDENCE is 0.95
    return Estimate(value, max(0.0, value - half), value + half, n)


@dataclass(frozen=True, eq=False)
class _ScatterStats:
    """Per-cluster sufficient statistics, from which any reweighting of whole clusters gives both scatters."""

    counts: np.ndarray  # [C] rows per cluster
    gram: np.ndarray  # [C, C] dot products of the clusters' feature sums
    squares: np.ndarray  # [C] summed squared norms of the cluster's rows
    types: np.ndarray  # [C] type code of each cluster

    def ratio(self, weights: np.ndarray) -> np.ndarray:
        """The F-like ratio for each row of cluster multiplicities ``weights`` ``[R, C]``."""
        k = int(self.types.max()) + 1
        rows = weights @ self.counts
        explained = np.zeros(len(weights))  # sum_k ||S_k||^2 / n_k
        for kind in range(k):
            w = weights[:, self.types == kind]
            explained += ((w @ self.gram[np.ix_(self.types == kind, self.types == kind)]) * w).sum(axis=1) / (
                w @ self.counts[self.types == kind])
        between = explained - ((weights @ self.gram) * weights).sum(axis=1) / rows
        within = weights @ self.squares - explained
        with np.errstate(divide="ignore", invalid="ignore"):
            return (between / (k - 1)) / (within / (rows - k))


# -- modes against situations --------------------------------------------------------------------------


def _nmi_from_counts(table: np.ndarray) -> np.ndarray:
    """NMI of contingency tables ``[..., A, B]``; 0 where either side holds a single label."""
    p = table / table.sum(axis=(-2, -1), keepdims=True)
    pa, pb = p.sum(axis=-1), p.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ha = -np.where(pa > 0, pa * np.log(pa), 0.0).sum(axis=-1)
        hb = -np.where(pb > 0, pb * np.log(pb), 0.0).sum(axis=-1)
        mi = np.where(p > 0, p * np.log(p / (pa[..., :, None] * pb[..., None, :])), 0.0).sum(axis=(-2, -1))
        nmi = np.where((ha > 0) & (hb > 0), mi / ((ha + hb) / 2), 0.0)
    return np.clip(nmi, 0.0, 1.0)


def _table(a: Sequence[Hashable], b: Sequence[Hashable], units: np.ndarray, n_units: int) -> np.ndarray:
    """``[units, A, B]`` co-occurrence counts of the two labelings, per unit."""
    a_codes, a_names = _codes(a)
    b_codes, b_names = _codes(b)
    table = np.zeros((n_units, len(a_names), len(b_names)))
    np.add.at(table, (units, a_codes, b_codes), 1.0)
    return table


def normalized_mutual_information(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Mutual information over the mean of the two entropies: 1 when the labelings are the same
    partition, 0 when independent.

    When either labeling has a single label it carries no information, and the value is 0 (even
    when both do; scikit-learn reports 1 for that case). Empty input gives nan.
    """
    n = _check_lengths(a=a, b=b)
    if n == 0:
        return math.nan
    return float(_nmi_from_counts(_table(a, b, np.zeros(n, dtype=np.int64), 1))[0])


def nmi_estimate(situations: Sequence[Hashable], modes: Sequence[str | None], clusters: Sequence[Hashable], *,
                 resamples: int = 1000, seed: int = 0) -> Estimate:
    """NMI between situation types and judged modes over the rows with a readable (non-None) mode.

    The interval resamples clusters and recomputes NMI on the pooled rows. The plug-in NMI is
    biased upward on small samples (chance co-occurrences look like information), so compare
    models at equal sizes.
    """
    _check_lengths(situations=situations, modes=modes, clusters=clusters)
    keep = [i for i, mode in enumerate(modes) if mode is not None]
    if not keep:
        return _NAN
    units, names = _codes([clusters[i] for i in keep])
    table = _table([situations[i] for i in keep], [modes[i] for i in keep], units, len(names))
    weights = np.vstack([np.ones(len(names)), _resampled_weights(np.zeros(len(names)), resamples,
                                                                 np.random.default_rng(seed))])
    pooled = (weights @ table.reshape(len(names), -1)).reshape(len(weights), *table.shape[1:])
    return _with_interval(_nmi_from_counts(pooled), len(keep))


@dataclass(frozen=True)
class ModeRate:
    """The share of readable answers in the expected mode, and how many answers could not be read."""

    rate: Estimate  # cluster bootstrap over prompts when clusters are given, else Wilson
    unreadable: int


def expected_mode_rate(modes: Sequence[str | None], expected: Sequence[str],
                       unreadable: Collection[str] = (), *, clusters: Sequence[Hashable] | None = None,
                       resamples: int = 1000, seed: int = 0) -> ModeRate:
    """Rate of ``modes[i] == expected[i]``; None and any label in ``unreadable`` (e.g. a judge's
    'unclear') are left out of the rate and counted instead.

    Paraphrases of one prompt are not independent answers, so with ``clusters`` the interval
    resamples whole prompts (cluster bootstrap); without them it is a Wilson interval, which
    treats answers as independent and is narrower.
    """
    _check_lengths(modes=modes, expected=expected, **({"clusters": clusters} if clusters is not None else {}))
    keep = [i for i, mode in enumerate(modes) if mode is not None and mode not in unreadable]
    hits = [float(modes[i] == expected[i]) for i in keep]
    if clusters is None:
        rate = wilson(int(sum(hits)), len(keep))
    else:
        rate = cluster_bootstrap_mean(hits, [clusters[i] for i in keep], resamples=resamples, seed=seed)
    return ModeRate(rate, len(modes) - len(keep))


# -- consistency --------------------------------------------------------------------------------------


def _group_clusters(group_codes: np.ndarray, group_names: list[Hashable],
                    clusters: Sequence[Hashable] | None) -> list[Hashable]:
    """The cluster each group resamples with: its own when ``clusters`` is None."""
    if clusters is None:
        return list(range(len(group_names)))
    return _owner(group_codes, clusters, group_names, "group")


def mode_agreement(modes: Sequence[str | None], groups: Sequence[Hashable], *,
                   clusters: Sequence[Hashable] | None = None, resamples: int = 1000, seed: int = 0) -> Estimate:
    """Within each group of answers that should agree, the share of pairs of readable modes that
    are equal; averaged over groups, each group weighing the same.

    Groups with fewer than two readable modes are skipped; ``n`` counts the groups used. The
    interval resamples groups, or, given per-row ``clusters``, whole clusters of groups (groups
    cut from one prompt are not independent). A group spanning two clusters is a ValueError.
    """
    _check_lengths(modes=modes, groups=groups, **({"clusters": clusters} if clusters is not None else {}))
    group_codes, names = _codes(groups)
    owners = _group_clusters(group_codes, names, clusters)
    readable: list[list[str]] = [[] for _ in names]
    for code, mode in zip(group_codes.tolist(), modes):
        if mode is not None:
            readable[code].append(mode)
    values, used = [], []
    for code, labels in enumerate(readable):
        if len(labels) >= 2:
            same = sum(c * (c - 1) for c in Counter(labels).values())
            values.append(same / (len(labels) * (len(labels) - 1)))
            used.append(owners[code])
    return cluster_bootstrap_mean(values, used, resamples=resamples, seed=seed)


@dataclass(frozen=True)
class ProjectionSpread:
    """How much of the projections' variance lies between groups, and how far answers move from
    their group's reference answer."""

    icc: Estimate  # one-way ICC(1); n counts the groups
    shift: Estimate | None  # mean of (value - reference value) per group; None without a reference


def _icc(weights: np.ndarray, sizes: np.ndarray, sums: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """ICC(1) for each row of group multiplicities ``weights`` ``[R, G]``, from per-group sizes,
    sums and sums of squares."""
    rows, groups = weights @ sizes, weights.sum(axis=1)
    explained = weights @ (sums * sums / sizes)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (explained - (weights @ sums) ** 2 / rows) / (groups - 1)
        within = (weights @ squares - explained) / (rows - groups)
        typical = (rows - (weights @ (sizes * sizes)) / rows) / (groups - 1)
        return (between - within) / (between + (typical - 1) * within)


def projection_spread(values: Sequence[float], groups: Sequence[Hashable], reference: Sequence[bool] | None = None,
                      *, clusters: Sequence[Hashable] | None = None, resamples: int = 1000,
                      seed: int = 0) -> ProjectionSpread:
    """Spread of axis projections across and within groups of answers that should match.

    ICC(1) = (MSB - MSW) / (MSB + (n0 - 1) MSW), with MSB and MSW the between- and within-group
    mean squares and n0 the typical group size (exact for unequal sizes). Near 1 when group
    members project alike, near 0 (or below) when they vary as much as the groups do; nan with
    fewer than two groups or no group of two. ``reference`` marks at most one row per group (say,
    the answer without a persona); the shift is each group's mean of (value - its reference),
    averaged over the groups that have a reference and another row. Intervals resample groups,
    or whole ``clusters`` of them, as in ``mode_agreement``.
    """
    columns = {"values": values, "groups": groups, "reference": reference, "clusters": clusters}
    _check_lengths(**{name: column for name, column in columns.items() if column is not None})
    group_codes, names = _codes(groups)
    owners = _group_clusters(group_codes, names, clusters)
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean() if len(x) else x
    sizes = np.bincount(group_codes, minlength=len(names)).astype(float)
    sums = np.bincount(group_codes, weights=x, minlength=len(names))
    squares = np.bincount(group_codes, weights=x * x, minlength=len(names))
    owner_codes, owner_names = _codes(owners)
    draws = _resampled_weights(np.zeros(len(owner_names)), resamples, np.random.default_rng(seed))
    weights = np.vstack([np.ones(len(names)), draws[:, owner_codes]])
    icc = _with_interval(_icc(weights, sizes, sums, squares), len(names)) if len(names) else _NAN
    if reference is None:
        return ProjectionSpread(icc, None)
    return ProjectionSpread(icc, _shift(values, group_codes, names, reference, owners, resamples, seed))


def _shift(values: Sequence[float], group_codes: np.ndarray, names: list[Hashable], reference: Sequence[bool],
           owners: list[Hashable], resamples: int, seed: int) -> Estimate:
    """Mean over groups of (value - the group's reference value), with a bootstrap interval."""
    anchors: dict[int, float] = {}
    for code, value, is_reference in zip(group_codes.tolist(), values, reference):
        if is_reference:
            if code in anchors:
                raise ValueError(f"group {names[code]!r} has more than one reference row")
            anchors[code] = float(value)
    moves: dict[int, list[float]] = {}
    for code, value, is_reference in zip(group_codes.tolist(), values, reference):
        if not is_reference and code in anchors:
            moves.setdefault(code, []).append(float(value) - anchors[code])
    codes = sorted(moves)
    return cluster_bootstrap_mean([sum(moves[c]) / len(moves[c]) for c in codes], [owners[c] for c in codes],
                                  resamples=resamples, seed=seed)


# -- everything for one model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextScores:
    """Every context-sensitivity metric for one model on the situation suite.

    Discrimination (probe, variance ratio, mode NMI, expected-mode rate) uses the rows without a
    persona (system index 0) unless asked otherwise, so persona prompts neither add near-copies
    of each prompt nor dilute the types; consistency uses every row.
    """

    rows: int  # rows the discrimination metrics used
    probe: ProbeResult | None  # None without activations
    variance_ratio: Estimate | None  # None without activations
    mode_nmi: Estimate  # NMI(situation type, judged mode)
    expected_mode: ModeRate
    paraphrase_agreement: Estimate  # same mode across paraphrases, per (prompt, system prompt)
    persona_agreement: Estimate  # same mode across system prompts, per (prompt, paraphrase)
    paraphrase_projection: ProjectionSpread | None  # groups (prompt, system prompt); no shift
    persona_projection: ProjectionSpread | None  # groups (prompt, paraphrase); shift from system index 0


def context_scores(features: torch.Tensor | None, types: Sequence[str], clusters: Sequence[str],
                   paraphrases: Sequence[int], systems: Sequence[int], modes: Sequence[str | None],
                   expected: Sequence[str], projections: Sequence[float] | None = None, *,
                   folds: Sequence[Split] | None = None, all_systems: bool = False,
                   unreadable: Collection[str] = (), l2: float = 1e-2, steps: int = 200, resamples: int = 1000,
                   seed: int = 0) -> ContextScores:
    """All metrics from per-row columns in one order (one row per answer, e.g. per ``situation_prompts``
    item): ``features`` ``[N, D]`` at one layer or None, the type, prompt cluster, paraphrase
    index, system index, judged mode (None when the judge gave none), expected mode, and the axis
    projection (or None for no projections).

    ``folds`` index all N rows (``grouped_folds`` over the same prompts) and are needed with
    features; they are narrowed to the discrimination rows, which keeps clusters whole. Modes
    listed in ``unreadable`` count as None everywhere. Paraphrase groups are (cluster, system
    index); persona groups are (cluster, paraphrase index) with system index 0 as the reference;
    every interval resamples prompt clusters.
    """
    columns = {"types": types, "clusters": clusters, "paraphrases": paraphrases, "systems": systems,
               "modes": modes, "expected": expected, "features": features, "projections": projections}
    _check_lengths(**{name: column for name, column in columns.items() if column is not None})
    read = [mode if mode is not None and mode not in unreadable else None for mode in modes]
    keep = [i for i in range(len(types)) if all_systems or systems[i] == 0]
    kinds, prompts = [types[i] for i in keep], [clusters[i] for i in keep]
    probe = ratio = None
    if features is not None:
        if folds is None:
            raise ValueError("context_scores needs folds to probe the features")
        probe = probe_accuracy(features[keep], kinds, _narrow(folds, keep), prompts, l2=l2, steps=steps,
                               resamples=resamples, seed=seed)
        ratio = variance_ratio(features[keep], kinds, prompts)
    by_paraphrase, by_persona = list(zip(clusters, systems)), list(zip(clusters, paraphrases))
    bootstrap = {"clusters": clusters, "resamples": resamples, "seed": seed}
    return ContextScores(
        rows=len(keep),
        probe=probe,
        variance_ratio=ratio,
        mode_nmi=nmi_estimate(kinds, [read[i] for i in keep], prompts, resamples=resamples, seed=seed),
        expected_mode=expected_mode_rate([read[i] for i in keep], [expected[i] for i in keep], clusters=prompts,
                                         resamples=resamples, seed=seed),
        paraphrase_agreement=mode_agreement(read, by_paraphrase, **bootstrap),
        persona_agreement=mode_agreement(read, by_persona, **bootstrap),
        paraphrase_projection=None if projections is None else projection_spread(projections, by_paraphrase,
                                                                                 **bootstrap),
        persona_projection=None if projections is None else projection_spread(
            projections, by_persona, [system == 0 for system in systems], **bootstrap),
    )


def _narrow(folds: Sequence[Split], keep: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """The splits restricted to the rows in ``keep``, renumbered to positions in it."""
    position = {row: j for j, row in enumerate(keep)}
    return [([position[i] for i in train if i in position], [position[i] for i in test if i in position])
            for train, test in folds]
