"""Confidence intervals for probe results: a bootstrap over test units, combined with the runs' spread.

A probe's test metric is a function of per-item outcomes, which every probe result keeps in its
``sheet`` (one per test metric):

    accuracy    {"correct": [0|1, ...]}                      mean of correct
    cer, wer    {"errors": [...], "length": [...]}           sum(errors) / sum(length), per utterance
    eer         {"scores": [...], "labels": [1|0, ...]}      equal error rate over the trials
    macro_f1    {"pred": [...], "target": [...]}             mean F1 over the classes

A sheet may also name each item's ``unit`` (``{"unit": [speaker, ...]}``): then the bootstrap draws
whole units with replacement, each with all its items, as items of one speaker are not independent;
"items" below are then units. The probes name each test utterance's speaker on every task;
verification trials name both speakers (``unit`` and ``unit2``), and a draw of speakers keeps
each trial once per pair of drawn copies of its speakers (see ``_resamples``). Where the corpus
names no speaker, utterances are resampled.

A model is replicated: pre-trained R times (each run its own seed) and each run probed with one or
more seeds, one sheet per probe, all over the same test items. A run's value is the mean over its
seeds of the whole-test metric; the model's value is the mean over its runs, and its 95% interval is
that of this R-run mean. Items and runs are crossed (every probe of every run scores every item), so
the mean varies with three things: the test items drawn, the runs' overall effect (one pre-training
run, or one probe of it, better than another on every item), and each run's item-by-item luck. The
interval holds all three:

- Each replicate resamples the test items with replacement and takes the mean over the runs of
  their metric on them. The spread of these draws holds the items' variance and the runs'
  item-by-item part, once.
- The runs' overall effect is added to each draw: sqrt(s_run^2 / R) times a Student t draw
  with R - 1 degrees of freedom (s_run^2 comes from R values, so a normal draw would make the
  interval too narrow). s_run^2 is the runs' variance net of their item-by-item part:
  var(run values) - (mean over runs of each one's item-bootstrap variance - the mean's)
  * R / (R - 1), floored at 0. It holds the pre-training seed's effect and, through each run's
  mean over its probes, the probe seeds' (their share of a run's value shrinks with more probe
  seeds per run). Resampling both runs and items instead would count the item-by-item part
  twice, and with a handful of runs resampling them is coarse: 3 runs give 10 distinct draws.

Without run labels each sheet is a run of its own: k probe seeds of one pre-trained model are
then the replicates, as for a model with no pre-training (the features alone). In simulations
(tests/test_stats.py) the intervals cover the true value 92-97% of the time: with 3 seeds and
300 items whether the seeds' effect is nil or twice the test sample's standard error; with 3
pre-training runs of 1 or 2 probe seeds each, a run effect of twice that error and 40 speakers
of 10 utterances drawn speaker by speaker (2 probe seeds per run taken as 6 runs: 86%); a
model against its own initial weights, run by run, 97%, with an interval less than half as wide
as when each model's runs are drawn apart; with one seed and 40 speakers of 20 utterances,
drawing speakers covers it 94% of the time, drawing utterances 73%.

A difference between two models resamples the same items for both (a paired bootstrap) and
adds each model's run effect, drawn on its own (Welch-Satterthwaite degrees of freedom); where
the two share their runs (a pre-trained model and its own initial weights), the differences are
taken run by run and their spread is the run effect.

A comparison ends in one of four verdicts (:func:`verdict`), with a margin fixed before the run:
*equivalent* within the margin when the difference's 90% interval lies inside it (two one-sided
tests at 5% each), else *better* or *worse* when its 95% interval leaves 0 on that side, else
*inconclusive*. An interval that holds 0 shows no difference; it never shows that two are alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import equal_error_rate, macro_f1

LOWER_IS_BETTER = {"cer", "wer", "eer"}
BOUNDS = {"accuracy": (0.0, 1.0), "eer": (0.0, 1.0), "macro_f1": (0.0, 1.0), "cer": (0.0, np.inf), "wer": (0.0, np.inf)}


VERDICTS = ("better", "worse", "equivalent", "inconclusive")


def _interval(metric: str, draws: np.ndarray, difference: bool = False, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of ``draws``, kept within what the metric (or a difference of it) can be."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(draws, [tail, 100 - tail])
    low, high = BOUNDS[metric]
    if difference:
        low, high = low - high, high - low
    return float(np.clip(lo, low, high)), float(np.clip(hi, low, high))


def _metric_of(metric: str, sheet: dict[str, np.ndarray], idx: np.ndarray) -> float:
    """``metric`` over the items ``idx`` (with repeats) of one sheet."""
    if metric == "accuracy":
        return float(sheet["correct"][idx].mean())
    if metric in ("cer", "wer"):
        return float(sheet["errors"][idx].sum() / max(sheet["length"][idx].sum(), 1))
    if metric == "eer":
        labels = sheet["labels"][idx]
        if labels.min() == labels.max():  # a resample of one kind only: no EER; rare with hundreds of trials
            return float("nan")
        return equal_error_rate(sheet["scores"][idx], labels)
    if metric == "macro_f1":
        pred, target = sheet["pred"][idx], sheet["target"][idx]
        return macro_f1(pred, target, int(max(pred.max(), target.max())) + 1)
    raise ValueError(f"no bootstrap for metric {metric!r}")


def _arrays(sheet: dict) -> dict[str, np.ndarray]:
    out = {k: np.asarray(v) for k, v in sheet.items()}
    sizes = {len(v) for v in out.values()}
    if len(sizes) != 1:
        raise ValueError(f"a score sheet's lists differ in length: { {k: len(v) for k, v in out.items()} }")
    return out


def _resamples(rng: np.random.Generator, sheet: dict[str, np.ndarray], replicates: int) -> list[np.ndarray]:
    """Each replicate's item indices. Items are drawn with replacement; where the sheet names each item's
    ``unit`` (its speaker, say), whole units are drawn with replacement instead, each with all its items:
    the outcomes of one unit are alike, and resampling them as if independent makes intervals too narrow.

    Where it also names a second unit (``unit2``: a verification trial's two speakers), the units of both
    are drawn together and an item is kept once for each pair of drawn copies of its units: a trial of a
    speaker drawn c times comes c times, one between speakers drawn c and d times c * d times."""
    n = len(next(iter(sheet.values())))
    if "unit" not in sheet:
        return list(rng.integers(n, size=(replicates, n)))
    if "unit2" not in sheet:
        _, group = np.unique(sheet["unit"], return_inverse=True)
        members = [np.flatnonzero(group == g) for g in range(group.max() + 1)]
        return [np.concatenate([members[g] for g in rng.integers(len(members), size=len(members))])
                for _ in range(replicates)]
    names, group = np.unique(np.concatenate([sheet["unit"], sheet["unit2"]]), return_inverse=True)
    first, second = group[:n], group[n:]
    same = first == second
    out = []
    for _ in range(replicates):
        copies = np.bincount(rng.integers(len(names), size=len(names)), minlength=len(names))
        weight = np.where(same, copies[first], copies[first] * copies[second])
        out.append(np.repeat(np.arange(n), weight))
    return out


def _units(*arrays: dict[str, np.ndarray]) -> None:
    """Every sheet names the same units for each item, or none does."""
    for key in ("unit", "unit2"):
        first = arrays[0].get(key)
        for a in arrays[1:]:
            unit = a.get(key)
            if (first is None) != (unit is None) or (first is not None and not np.array_equal(first, unit)):
                raise ValueError("score sheets of the same test items name different units (or only some name one)")


def _size(sheets: list[dict[str, np.ndarray]]) -> int:
    sizes = {len(next(iter(s.values()))) for s in sheets}
    if len(sizes) != 1:
        raise ValueError(f"the seeds' score sheets cover different numbers of test items: {sorted(sizes)}")
    return sizes.pop()


@dataclass(frozen=True)
class Estimate:
    value: float  # mean over the runs of each run's mean over its seeds of the whole-test metric
    ci: tuple[float, float]  # 95% interval
    runs: list[float]  # each run's whole-test metric (mean over its probe seeds)
    n: int  # test items (trials for the EER)
    ci90: tuple[float, float]  # 90% interval, for the two one-sided tests of equivalence


def _groups(n_sheets: int, runs: Sequence | None) -> list[np.ndarray]:
    """The sheet indices of each run, in order of first appearance; each sheet its own run by default."""
    if runs is None:
        return [np.array([i]) for i in range(n_sheets)]
    if len(runs) != n_sheets:
        raise ValueError(f"{len(runs)} run labels for {n_sheets} score sheets")
    labels = list(dict.fromkeys(runs))
    return [np.array([i for i, r in enumerate(runs) if r == label]) for label in labels]


def _per_run(metric: str, arrays: list[dict[str, np.ndarray]], groups: list[np.ndarray], items: list[np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Each replicate's value of each run over the resampled ``items`` (replicate x run), and each run's
    whole-test value: a run's value is the mean over its seeds' sheets. Replicates where the metric is
    undefined (an EER over trials of one kind) come out as NaN."""
    whole = np.arange(len(next(iter(arrays[0].values()))))
    sheet_values = np.array([_metric_of(metric, a, whole) for a in arrays])
    values = np.array([sheet_values[g].mean() for g in groups])
    per_sheet = np.array([[_metric_of(metric, a, idx) for a in arrays] for idx in items])  # replicate x sheet
    return np.stack([per_sheet[:, g].mean(axis=1) for g in groups], axis=1), values


def _run_variance(per: np.ndarray, values: np.ndarray) -> float:
    """The runs' effect variance of their mean (0 for one run): the variance of the runs' values net of
    their item-by-item part, over the number of runs."""
    k = per.shape[1]
    if k == 1:
        return 0.0
    ok = ~np.isnan(per).any(axis=1)
    within = (per[ok].var(axis=0, ddof=1).mean() - per[ok].mean(axis=1).var(ddof=1)) * k / (k - 1)
    run_var = float(np.var(values, ddof=1) - within)
    return run_var / k if run_var > 1e-12 else 0.0  # runs that agree up to rounding: none


def _welch_df(*parts: tuple[float, int]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of (variance, runs) parts; 1 at least."""
    num = sum(v for v, _ in parts) ** 2
    den = sum(v * v / (k - 1) for v, k in parts if k > 1)
    return max(num / den, 1.0) if den > 0 else 1.0


def estimate(metric: str, sheets: Sequence[dict], replicates: int = 1000, seed: int = 0,
             runs: Sequence | None = None) -> Estimate:
    """The metric with its 95% interval from one model's sheets: one per probe of it. ``runs`` names each
    sheet's pre-training run (its probe seeds share one); by default each sheet is a run of its own."""
    arrays = [_arrays(s) for s in sheets]
    if not arrays:
        raise ValueError("no score sheet to estimate from")
    n = _size(arrays)
    _units(*arrays)
    groups = _groups(len(arrays), runs)
    rng = np.random.default_rng(seed)
    per, values = _per_run(metric, arrays, groups, _resamples(rng, arrays[0], replicates))
    draws = per.mean(axis=1) + np.sqrt(_run_variance(per, values)) * rng.standard_t(max(len(groups) - 1, 1),
                                                                                    size=replicates)
    return Estimate(float(values.mean()), _interval(metric, draws), values.tolist(), n,
                    _interval(metric, draws, level=0.9))


def difference(metric: str, a: Sequence[dict], b: Sequence[dict], replicates: int = 1000, seed: int = 0,
               runs_a: Sequence | None = None, runs_b: Sequence | None = None, paired_runs: bool = False
               ) -> Estimate:
    """Model a's metric minus model b's, with a paired 95% interval (both scored on the same test items).

    By default each model's runs are drawn on their own, and ``runs`` holds each run's value of a minus
    the mean of b's. With ``paired_runs`` (the two models name the same runs: BEST-RQ's run R and the
    random init it started from), the difference is taken run by run and its run effect estimated from
    the R differences (R - 1 degrees of freedom): what the runs share cancels; ``runs`` holds the run's
    differences."""
    arrays_a, arrays_b = [_arrays(s) for s in a], [_arrays(s) for s in b]
    n = _size(arrays_a)
    if _size(arrays_b) != n:
        raise ValueError(f"the two models were tested on different numbers of items ({n} and {_size(arrays_b)})")
    _units(*arrays_a, *arrays_b)
    groups_a, groups_b = _groups(len(arrays_a), runs_a), _groups(len(arrays_b), runs_b)
    rng = np.random.default_rng(seed)
    items = _resamples(rng, arrays_a[0], replicates)
    per_a, values_a = _per_run(metric, arrays_a, groups_a, items)
    per_b, values_b = _per_run(metric, arrays_b, groups_b, items)
    if paired_runs:
        labels_a = list(dict.fromkeys(runs_a if runs_a is not None else range(len(arrays_a))))
        labels_b = list(dict.fromkeys(runs_b if runs_b is not None else range(len(arrays_b))))
        if labels_a != labels_b:
            raise ValueError(f"paired runs: the two models name other runs ({labels_a} and {labels_b})")
        per, values = per_a - per_b, values_a - values_b
        draws = per.mean(axis=1) + np.sqrt(_run_variance(per, values)) * rng.standard_t(
            max(len(labels_a) - 1, 1), size=replicates)
        runs = values.tolist()
    else:
        var_a, var_b = _run_variance(per_a, values_a), _run_variance(per_b, values_b)
        df = _welch_df((var_a, len(groups_a)), (var_b, len(groups_b)))
        draws = per_a.mean(axis=1) - per_b.mean(axis=1) + np.sqrt(var_a + var_b) * rng.standard_t(df, size=replicates)
        runs = (values_a - values_b.mean()).tolist()
    value = float(values_a.mean() - values_b.mean())
    return Estimate(value, _interval(metric, draws, difference=True), runs, n,
                    _interval(metric, draws, difference=True, level=0.9))


def verdict(d: Estimate, metric: str, margin: float) -> str:
    """Model a against model b, from their difference ``d`` (a minus b) and a ``margin`` in the metric's units,
    fixed before the run: one of :data:`VERDICTS`.

    equivalent: the 90% interval inside (-margin, +margin), two one-sided tests at 5%; this comes first, as
    the claim a comparison of "similar quality" makes (a difference can be shown and still be within it).
    better, worse: otherwise, the 95% interval leaves 0 on a's good (bad) side.
    inconclusive: neither, or an interval that is not a number (every resample undefined); the data
    cannot tell."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin!r}")
    if np.isnan([*d.ci, *d.ci90]).any():
        return "inconclusive"
    if -margin < d.ci90[0] and d.ci90[1] < margin:
        return "equivalent"
    lo, hi = d.ci
    if lo <= 0 <= hi:
        return "inconclusive"
    return "better" if (hi < 0) == (metric in LOWER_IS_BETTER) else "worse"
