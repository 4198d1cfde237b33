"""Confidence intervals for probe results: a bootstrap over test items, combined with the seed spread.

A probe's test metric is a function of per-item outcomes, which every probe result keeps in its
``sheet`` (one per test metric):

    accuracy    {"correct": [0|1, ...]}                      mean of correct
    cer, wer    {"errors": [...], "length": [...]}           sum(errors) / sum(length), per utterance
    eer         {"scores": [...], "labels": [1|0, ...]}      equal error rate over the trials
    macro_f1    {"pred": [...], "target": [...]}             mean F1 over the classes

A sheet may also name each item's ``unit`` (``{"unit": [speaker, ...]}``): then the bootstrap draws
whole units with replacement, each with all its items, as items of one speaker are not independent;
"items" below are then units. The probes name speakers for the speaker tasks only (verification: the
speaker of each trial's first utterance, a one-way grouping, as a speaker also takes part in other
speakers' non-target trials); ASR, emotion and intent still resample utterances, though the test
utterances of one speaker are alike too.

A model probed with k seeds has one sheet per seed, over the same test items. Its value is the
mean over the seeds of the whole-test metric, and its 95% interval is that of this k-seed mean.
Items and seeds are crossed (every seed scores every item), so the mean varies with three
things: the test items drawn, the seeds' overall effect (one probe run better than another on
every item), and each seed's item-by-item luck. The interval holds all three:

- Each replicate resamples the test items with replacement and takes the mean over the seeds
  of the metric on them. The spread of these draws holds the items' variance and the seeds'
  item-by-item part, once.
- The seeds' overall effect is added to each draw: sqrt(s_seed^2 / k) times a Student t draw
  with k - 1 degrees of freedom (s_seed^2 comes from k values, so a normal draw would make the
  interval too narrow). s_seed^2 is the seeds' variance net of their item-by-item part:
  var(seed values) - (mean over seeds of each one's item-bootstrap variance - the mean's)
  * k / (k - 1), floored at 0. Resampling both seeds and items instead would count the
  item-by-item part twice, and with a handful of seeds resampling them is coarse.

One seed gives an interval over items only. In simulations with 3 seeds and 300 items (tests/
test_stats.py) the intervals cover the true value 93-95% of the time, whether the seeds'
effect is nil or twice the test sample's standard error; with one seed and 40 speakers of 20
utterances, drawing speakers covers it 94% of the time, drawing utterances 73%.

A difference between two models resamples the same items for both (a paired bootstrap) and
adds each model's seed effect, drawn on its own (Welch-Satterthwaite degrees of freedom).

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
    the outcomes of one unit are alike, and resampling them as if independent makes intervals too narrow."""
    n = len(next(iter(sheet.values())))
    if "unit" not in sheet:
        return list(rng.integers(n, size=(replicates, n)))
    _, group = np.unique(sheet["unit"], return_inverse=True)
    members = [np.flatnonzero(group == g) for g in range(group.max() + 1)]
    return [np.concatenate([members[g] for g in rng.integers(len(members), size=len(members))])
            for _ in range(replicates)]


def _units(*arrays: dict[str, np.ndarray]) -> None:
    """Every sheet names the same unit for each item, or none does."""
    first = arrays[0].get("unit")
    for a in arrays[1:]:
        unit = a.get("unit")
        if (first is None) != (unit is None) or (first is not None and not np.array_equal(first, unit)):
            raise ValueError("score sheets of the same test items name different units (or only some name one)")


def _size(sheets: list[dict[str, np.ndarray]]) -> int:
    sizes = {len(next(iter(s.values()))) for s in sheets}
    if len(sizes) != 1:
        raise ValueError(f"the seeds' score sheets cover different numbers of test items: {sorted(sizes)}")
    return sizes.pop()


@dataclass(frozen=True)
class Estimate:
    value: float  # mean over seeds of the whole-test metric
    ci: tuple[float, float]  # 95% interval
    seeds: list[float]  # each seed's whole-test metric
    n: int  # test items (trials for the EER)
    ci90: tuple[float, float]  # 90% interval, for the two one-sided tests of equivalence


def _draws(metric: str, arrays: list[dict[str, np.ndarray]], seed_values: list[float], items: list[np.ndarray]
           ) -> tuple[np.ndarray, float]:
    """Each replicate's k-seed mean over the resampled ``items``, and the seeds' effect variance.

    ``seed_values`` are the seeds' whole-test metrics; ``items`` holds one resample of item indices
    per replicate; replicates where the metric is undefined (an EER over trials of one kind) come out as NaN."""
    per = np.array([[_metric_of(metric, a, idx) for a in arrays] for idx in items])  # replicate x seed
    k = len(arrays)
    means = per.mean(axis=1)
    if k == 1:
        return means, 0.0
    ok = ~np.isnan(per).any(axis=1)
    within = (per[ok].var(axis=0, ddof=1).mean() - means[ok].var(ddof=1)) * k / (k - 1)
    seed_var = float(np.var(seed_values, ddof=1) - within)
    return means, seed_var / k if seed_var > 1e-12 else 0.0  # seeds that agree up to rounding: none


def _welch_df(*parts: tuple[float, int]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of (variance, seeds) parts; 1 at least."""
    num = sum(v for v, _ in parts) ** 2
    den = sum(v * v / (k - 1) for v, k in parts if k > 1)
    return max(num / den, 1.0) if den > 0 else 1.0


def estimate(metric: str, sheets: Sequence[dict], replicates: int = 1000, seed: int = 0) -> Estimate:
    """The metric with its 95% interval from one model's sheets (one per probe seed)."""
    arrays = [_arrays(s) for s in sheets]
    if not arrays:
        raise ValueError("no score sheet to estimate from")
    n = _size(arrays)
    _units(*arrays)
    whole = np.arange(n)
    per_seed = [_metric_of(metric, a, whole) for a in arrays]
    rng = np.random.default_rng(seed)
    means, seed_var = _draws(metric, arrays, per_seed, _resamples(rng, arrays[0], replicates))
    draws = means + np.sqrt(seed_var) * rng.standard_t(max(len(arrays) - 1, 1), size=replicates)
    return Estimate(float(np.mean(per_seed)), _interval(metric, draws), per_seed, n,
                    _interval(metric, draws, level=0.9))


def difference(metric: str, a: Sequence[dict], b: Sequence[dict], replicates: int = 1000, seed: int = 0
               ) -> Estimate:
    """Model a's metric minus model b's, with a paired 95% interval (both scored on the same test items)."""
    arrays_a, arrays_b = [_arrays(s) for s in a], [_arrays(s) for s in b]
    n = _size(arrays_a)
    if _size(arrays_b) != n:
        raise ValueError(f"the two models were tested on different numbers of items ({n} and {_size(arrays_b)})")
    whole = np.arange(n)
    values_a = [_metric_of(metric, x, whole) for x in arrays_a]
    values_b = [_metric_of(metric, y, whole) for y in arrays_b]
    per_seed = [x - y for x, y in zip(values_a, values_b)]
    value = float(np.mean(values_a) - np.mean(values_b))
    _units(*arrays_a, *arrays_b)
    rng = np.random.default_rng(seed)
    items = _resamples(rng, arrays_a[0], replicates)
    means_a, var_a = _draws(metric, arrays_a, values_a, items)
    means_b, var_b = _draws(metric, arrays_b, values_b, items)
    df = _welch_df((var_a, len(arrays_a)), (var_b, len(arrays_b)))
    draws = means_a - means_b + np.sqrt(var_a + var_b) * rng.standard_t(df, size=replicates)
    return Estimate(value, _interval(metric, draws, difference=True), per_seed, n,
                    _interval(metric, draws, difference=True, level=0.9))


def verdict(d: Estimate, metric: str, margin: float) -> str:
    """Model a against model b, from their difference ``d`` (a minus b) and a ``margin`` in the metric's units,
    fixed before the run: one of :data:`VERDICTS`.

    equivalent: the 90% interval inside (-margin, +margin), two one-sided tests at 5%; this comes first, as
    the claim a comparison of "similar quality" makes (a difference can be shown and still be within it).
    better, worse: otherwise, the 95% interval leaves 0 on a's good (bad) side.
    inconclusive: neither; the data cannot tell."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin!r}")
    if -margin < d.ci90[0] and d.ci90[1] < margin:
        return "equivalent"
    lo, hi = d.ci
    if lo <= 0 <= hi:
        return "inconclusive"
    return "better" if (hi < 0) == (metric in LOWER_IS_BETTER) else "worse"
