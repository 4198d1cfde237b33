"""Confidence intervals for probe results: a bootstrap over test items, combined with the seed spread.

A probe's test metric is a function of per-item outcomes, which every probe result keeps in its
``sheet`` (one per test metric):

    accuracy    {"correct": [0|1, ...]}                      mean of correct
    cer, wer    {"errors": [...], "length": [...]}           sum(errors) / sum(length), per utterance
    eer         {"scores": [...], "labels": [1|0, ...]}      equal error rate over the trials
    macro_f1    {"pred": [...], "target": [...]}             mean F1 over the classes

A model probed with several seeds has one sheet per seed, over the same test items. Its value
is the mean over seeds of the whole-test metric; its 95% interval comes from replicates that
each draw a seed at random and a resample of the test items with replacement, so it holds the
variance of both the test sample and the probe's training. A difference between two models
resamples the same items for both (a paired bootstrap) and draws each model's seed on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import equal_error_rate, macro_f1

LOWER_IS_BETTER = {"cer", "wer", "eer"}


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


def estimate(metric: str, sheets: Sequence[dict], replicates: int = 1000, seed: int = 0) -> Estimate:
    """The metric with its 95% interval from one model's sheets (one per probe seed)."""
    arrays = [_arrays(s) for s in sheets]
    if not arrays:
        raise ValueError("no score sheet to estimate from")
    n = _size(arrays)
    whole = np.arange(n)
    per_seed = [_metric_of(metric, a, whole) for a in arrays]
    rng = np.random.default_rng(seed)
    draws = np.array([_metric_of(metric, arrays[rng.integers(len(arrays))], rng.integers(n, size=n))
                      for _ in range(replicates)])
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return Estimate(float(np.mean(per_seed)), (float(lo), float(hi)), per_seed, n)


def difference(metric: str, a: Sequence[dict], b: Sequence[dict], replicates: int = 1000, seed: int = 0
               ) -> Estimate:
    """Model a's metric minus model b's, with a paired 95% interval (both scored on the same test items)."""
    arrays_a, arrays_b = [_arrays(s) for s in a], [_arrays(s) for s in b]
    n = _size(arrays_a)
    if _size(arrays_b) != n:
        raise ValueError(f"the two models were tested on different numbers of items ({n} and {_size(arrays_b)})")
    whole = np.arange(n)
    per_seed = [_metric_of(metric, x, whole) - _metric_of(metric, y, whole)
                for x, y in zip(arrays_a, arrays_b)]
    value = float(np.mean([_metric_of(metric, x, whole) for x in arrays_a])
                  - np.mean([_metric_of(metric, y, whole) for y in arrays_b]))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(replicates):
        idx = rng.integers(n, size=n)
        x, y = arrays_a[rng.integers(len(arrays_a))], arrays_b[rng.integers(len(arrays_b))]
        draws.append(_metric_of(metric, x, idx) - _metric_of(metric, y, idx))
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return Estimate(value, (float(lo), float(hi)), per_seed, n)


def separated(a: tuple[float, float], b: tuple[float, float], metric: str) -> bool:
    """Whether the model of interval a is better than that of interval b, the intervals not overlapping."""
    if metric in LOWER_IS_BETTER:
        return a[1] < b[0]
    return a[0] > b[1]
