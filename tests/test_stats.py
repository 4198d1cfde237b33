"""Confidence intervals of probe results: per-item score sheets and the bootstrap over items and seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bestrq.probes.metrics import equal_error_rate, error_rates, macro_f1, utterance_errors
from bestrq.probes.stats import difference, estimate, verdict


def test_per_utterance_errors_sum_to_the_corpus_error_rates():
    refs = ["the cat sat on the mat", "a dog", "hello world", "  ", "abc"]
    hyps = ["the cat sit on mat", "a dog", "helo wrld and", "x", ""]
    sheets = utterance_errors(refs, hyps)
    corpus = error_rates(refs, hyps)
    for metric in ("cer", "wer"):
        s = sheets[metric]
        assert len(s["errors"]) == 4  # the blank reference is left out, as error_rates does
        assert sum(s["errors"]) / sum(s["length"]) == pytest.approx(corpus[metric])
        assert estimate(metric, [s], replicates=100).value == pytest.approx(corpus[metric])


def test_the_bootstrap_interval_of_an_accuracy_matches_the_binomial_one():
    rng = np.random.default_rng(0)
    n, p = 400, 0.7
    correct = (rng.random(n) < p).astype(int).tolist()
    e = estimate("accuracy", [{"correct": correct}], replicates=2000)
    acc = np.mean(correct)
    half = 1.96 * math.sqrt(acc * (1 - acc) / n)  # the normal approximation, 4.5 points here
    assert e.value == pytest.approx(acc) and e.n == n
    assert e.ci[0] == pytest.approx(acc - half, abs=0.01) and e.ci[1] == pytest.approx(acc + half, abs=0.01)
    perfect = estimate("accuracy", [{"correct": [1] * 50}], replicates=200)
    assert perfect.value == 1.0 and perfect.ci == (1.0, 1.0)


def test_the_seed_spread_widens_the_interval():
    """Probes that disagree between seeds are less certain than any one seed's test sample says."""
    rng = np.random.default_rng(1)
    u = rng.random(1000)
    sheets = [{"correct": (u < p).astype(int).tolist()} for p in (0.5, 0.65, 0.8)]
    one = estimate("accuracy", sheets[:1], replicates=1000)
    three = estimate("accuracy", sheets, replicates=1000)
    assert three.value == pytest.approx(0.65, abs=0.02)
    assert three.runs == pytest.approx([np.mean(u < p) for p in (0.5, 0.65, 0.8)])
    assert three.ci[0] < 0.55 and three.ci[1] > 0.75  # the seeds' effect, from 3 values, is uncertain
    assert three.ci[1] - three.ci[0] > 3 * (one.ci[1] - one.ci[0])
    # two seeds leave one degree of freedom: the interval is wide, but stays within what an accuracy can be
    two = estimate("accuracy", sheets[::2], replicates=1000)
    assert 0.0 <= two.ci[0] < 0.5 and 0.8 < two.ci[1] <= 1.0


def test_seeds_that_agree_give_the_interval_of_one():
    """Identical sheets have no seed effect and no item-by-item seed luck: the items' interval only."""
    rng = np.random.default_rng(4)
    sheet = {"correct": (rng.random(400) < 0.7).astype(int).tolist()}
    assert estimate("accuracy", [sheet] * 3).ci == estimate("accuracy", [sheet]).ci
    assert difference("accuracy", [sheet] * 3, [sheet] * 3).ci == (0.0, 0.0)


def _coverage(seed_sd: float, sims: int = 300, seeds: int = 3, n: int = 300) -> float:
    """How often the k-seed interval covers the probe's true accuracy, in a simulated crossed design.

    Items have a difficulty (their chance of being right), each probe seed shifts every item's
    chance by the same amount, and each (item, seed) outcome is a coin flip: the three sources
    of variance of a probe's test accuracy. The true accuracy is the mean difficulty, 0.7."""
    rng = np.random.default_rng(5)
    hits = 0
    for s in range(sims):
        chance = rng.beta(7, 3, size=n)
        sheets = [{"correct": (rng.random(n) < np.clip(chance + rng.normal(0, seed_sd), 0, 1)).astype(int)}
                  for _ in range(seeds)]
        lo, hi = estimate("accuracy", sheets, replicates=200, seed=s).ci
        hits += lo <= 0.7 <= hi
    return hits / sims


@pytest.mark.parametrize("seed_sd", [0.0, 0.04])
def test_the_interval_of_a_three_seed_mean_covers_the_truth_95_percent_of_the_time(seed_sd):
    """With no seed effect, resampling seeds as well as items would count the item-by-item luck
    twice (coverage near 100%); with a seed effect of twice the test sample's standard error, a
    normal draw of the 3-seed variance would cover about 85%. 300 simulations: 95% +- 2.5 points."""
    assert 0.9 <= _coverage(seed_sd) <= 0.985


def test_a_paired_difference_is_zero_for_equal_models_and_excludes_zero_for_a_clear_gap():
    rng = np.random.default_rng(2)
    base = (rng.random(500) < 0.6).astype(int)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:60]] = 1  # 60 more right answers on the same items: +12 points
    same = difference("accuracy", [{"correct": base.tolist()}], [{"correct": base.tolist()}], replicates=300)
    assert same.value == 0 and same.ci == (0.0, 0.0)
    gap = difference("accuracy", [{"correct": better.tolist()}], [{"correct": base.tolist()}], replicates=300)
    assert gap.value == pytest.approx(0.12) and 0.08 < gap.ci[0] < 0.12 < gap.ci[1] < 0.16
    reverse = difference("accuracy", [{"correct": base.tolist()}], [{"correct": better.tolist()}], replicates=300)
    assert verdict(gap, "accuracy", 0.03) == "better" and verdict(reverse, "accuracy", 0.03) == "worse"
    # lower is better for error rates: the model with fewer errors is the better one
    fewer, more = [{"errors": [1] * 100, "length": [10] * 100}], [{"errors": [5] * 100, "length": [10] * 100}]
    assert verdict(difference("cer", fewer, more, replicates=100), "cer", 0.015) == "better"
    assert verdict(difference("cer", more, fewer, replicates=100), "cer", 0.015) == "worse"
    # macro-F1 re-scored from a sheet is metrics.macro_f1 of the whole test set
    pred, target = [0, 1, 2, 2, 1, 0, 3], [0, 1, 1, 2, 1, 2, 0]
    assert estimate("macro_f1", [{"pred": pred, "target": target}], replicates=100).value == pytest.approx(
        macro_f1(pred, target, 4))


def test_the_eer_estimate_is_the_eer_of_the_trials():
    rng = np.random.default_rng(3)
    labels = [1] * 300 + [0] * 300
    scores = (np.array(labels) * 1.0 + rng.standard_normal(600)).tolist()
    e = estimate("eer", [{"scores": scores, "labels": labels}], replicates=300)
    assert e.value == pytest.approx(equal_error_rate(scores, labels))
    assert e.ci[0] < e.value < e.ci[1] and e.ci[1] - e.ci[0] < 0.1


def test_sheets_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="different numbers of test items"):
        estimate("accuracy", [{"correct": [1, 0]}, {"correct": [1, 0, 1]}])
    with pytest.raises(ValueError, match="differ in length"):
        estimate("eer", [{"scores": [0.1, 0.2], "labels": [1]}])


def _difference_of(ci: tuple[float, float], ci90: tuple[float, float]):
    from bestrq.probes.stats import Estimate

    return Estimate(sum(ci90) / 2, ci, [], 100, ci90)


def test_a_comparison_ends_in_one_of_four_verdicts():
    inside = _difference_of((-0.012, 0.011), (-0.009, 0.008))  # 90% interval within a 0.01 margin
    assert verdict(inside, "accuracy", 0.01) == "equivalent"
    assert verdict(inside, "accuracy", 0.005) == "inconclusive"  # holds 0: no difference shown, nor alike
    shown_and_small = _difference_of((0.002, 0.008), (0.003, 0.007))
    assert verdict(shown_and_small, "accuracy", 0.01) == "equivalent"  # equivalence is read first
    assert verdict(shown_and_small, "accuracy", 0.005) == "better"
    assert verdict(shown_and_small, "cer", 0.005) == "worse"  # more errors
    assert verdict(_difference_of((-0.09, -0.02), (-0.08, -0.03)), "eer", 0.01) == "better"
    assert verdict(_difference_of((-0.09, -0.02), (-0.08, -0.03)), "accuracy", 0.01) == "worse"
    nan = float("nan")  # every resample undefined (e.g. an EER over trials of one kind): no firm verdict
    assert verdict(_difference_of((nan, nan), (nan, nan)), "eer", 0.01) == "inconclusive"
    assert verdict(_difference_of((nan, nan), (nan, nan)), "accuracy", 0.01) == "inconclusive"
    with pytest.raises(ValueError, match="margin"):
        verdict(inside, "accuracy", 0.0)


def test_equivalence_is_rarely_declared_at_the_margin_and_differences_rarely_at_zero():
    """Two one-sided tests at 5%: where the true difference is the margin, "equivalent" comes out at most
    about 5% of the time; where it is 0, "better" or "worse" about 5% of the time each (100 simulated
    studies each, 2000 test items, accuracies near 0.7, margin 3 points)."""
    def rates(delta: float) -> dict[str, float]:
        rng, counts = np.random.default_rng(round(1000 * delta) + 7), {}
        for s in range(100):
            b = (rng.random(2000) < 0.7).astype(int).tolist()
            a = (rng.random(2000) < 0.7 + delta).astype(int).tolist()
            v = verdict(difference("accuracy", [{"correct": a}], [{"correct": b}], replicates=200, seed=s),
                        "accuracy", 0.03)
            counts[v] = counts.get(v, 0) + 1
        return {k: counts.get(k, 0) / 100 for k in ("better", "worse", "equivalent", "inconclusive")}

    at_margin, at_zero = rates(0.03), rates(0.0)
    assert at_margin["equivalent"] <= 0.08, at_margin
    assert at_zero["better"] + at_zero["worse"] <= 0.12 and at_zero["equivalent"] >= 0.15, at_zero


def _unit_coverage(by_unit: bool, sims: int = 300, speakers: int = 40, per: int = 20) -> float:
    """How often the interval covers the true accuracy (0.7) when items come in units that differ: 40
    speakers of 20 test utterances each, each speaker's chance of a right answer drawn from Beta(7, 3)."""
    rng = np.random.default_rng(11)
    hits = 0
    for s in range(sims):
        chance = np.repeat(rng.beta(7, 3, size=speakers), per)
        sheet = {"correct": (rng.random(speakers * per) < chance).astype(int).tolist()}
        if by_unit:
            sheet["unit"] = [f"spk{i // per}" for i in range(speakers * per)]
        lo, hi = estimate("accuracy", [sheet], replicates=200, seed=s).ci
        hits += lo <= 0.7 <= hi
    return hits / sims


def test_resampling_the_speakers_covers_the_truth_where_resampling_utterances_does_not():
    """Utterances of one speaker are alike: resampled as if independent, the interval covers the truth
    73% of the time here (its standard error about 1.6x too small: the design effect is about 2.7); resampled
    speaker by speaker, with all their utterances, 94%. 300 simulations: 95% +- 2.5 points."""
    assert _unit_coverage(by_unit=False) < 0.85
    assert 0.9 <= _unit_coverage(by_unit=True) <= 0.985
    a = {"correct": [1, 0, 1, 1], "unit": ["s1", "s1", "s2", "s2"]}
    with pytest.raises(ValueError, match="different units"):
        difference("accuracy", [a], [{**a, "unit": ["s1", "s2", "s1", "s2"]}])
    with pytest.raises(ValueError, match="different units"):
        difference("accuracy", [a], [{"correct": [1, 1, 1, 0]}])


def _run_coverage(runs: int, seeds: int, run_sd: float, sims: int = 300, probe_sd: float = 0.01,
                  grouped: bool = True) -> float:
    """How often the interval covers the true accuracy when pre-training runs differ.

    40 speakers of 10 test utterances; each run shifts every item's chance by one draw of ``run_sd``
    (its pre-training seed), each probe of it by a smaller draw (its probe seed); the true accuracy is
    the expectation over speakers, items, runs and probes: 0.7. The test sample's standard error is
    about 0.028, so ``run_sd`` 0.056 is a run effect of twice it."""
    rng = np.random.default_rng(11)
    speaker = np.repeat(np.arange(40), 10)
    hits = 0
    for s in range(sims):
        chance = 0.7 + rng.normal(0, 0.1, 40)[speaker] + rng.normal(0, 0.1, speaker.size)
        sheets, labels = [], []
        for r in range(runs):
            shift = rng.normal(0, run_sd)
            for _ in range(seeds):
                p = np.clip(chance + shift + rng.normal(0, probe_sd), 0, 1)
                sheets.append({"correct": (rng.random(speaker.size) < p).astype(int), "unit": speaker})
                labels.append(r)
        lo, hi = estimate("accuracy", sheets, replicates=200, seed=s, runs=labels if grouped else None).ci
        hits += lo <= 0.7 <= hi
    return hits / sims


@pytest.mark.parametrize("seeds", [1, 2])
def test_the_interval_over_three_pretraining_runs_covers_the_truth_with_a_run_effect(seeds):
    """Three pre-training runs (each probed with 1 or 2 seeds), a run effect of twice the test sample's
    standard error: the interval of the 3-run mean covers the truth about 95% of the time, where one
    run's interval, over its test sample only, covers it far less (about 50%). 300 simulations."""
    assert 0.9 <= _run_coverage(3, seeds, run_sd=0.056) <= 0.985
    assert _run_coverage(1, 1, run_sd=0.056, sims=150) < 0.75


def test_probe_seeds_of_a_run_are_not_taken_for_runs():
    """Two probes of each of 3 runs share their run's effect: grouped by run, the interval covers the truth
    93% of the time here; taken as 6 independent runs, 86%, the runs' spread underestimated."""
    assert 0.9 <= _run_coverage(3, 2, run_sd=0.056, probe_sd=0.03) <= 0.985
    assert _run_coverage(3, 2, run_sd=0.056, probe_sd=0.03, grouped=False) < 0.9


def _paired_runs(sims: int = 300) -> tuple[float, float, float]:
    """A pre-trained model against its own initial weights, 3 runs: each run's init shifts both models alike
    (sd 0.056), pre-training adds 0.05 and a little of its own (sd 0.01). How often the run-by-run interval of
    the difference covers 0.05, and the mean widths of that interval and of the unpaired one."""
    rng = np.random.default_rng(3)
    speaker = np.repeat(np.arange(40), 10)
    hits, widths = 0, []
    for s in range(sims):
        chance = 0.65 + rng.normal(0, 0.08, 40)[speaker] + rng.normal(0, 0.08, speaker.size)
        a, b = [], []
        for _ in range(3):
            init = rng.normal(0, 0.056)
            for sheets, shift in ((a, init + 0.05 + rng.normal(0, 0.01)), (b, init)):
                p = np.clip(chance + shift, 0, 1)
                sheets.append({"correct": (rng.random(speaker.size) < p).astype(int), "unit": speaker})
        paired = difference("accuracy", a, b, replicates=200, seed=s, runs_a=[0, 1, 2], runs_b=[0, 1, 2],
                            paired_runs=True).ci
        apart = difference("accuracy", a, b, replicates=200, seed=s, runs_a=[0, 1, 2], runs_b=[0, 1, 2]).ci
        hits += paired[0] <= 0.05 <= paired[1]
        widths.append((paired[1] - paired[0], apart[1] - apart[0]))
    w = np.mean(widths, axis=0)
    return hits / sims, float(w[0]), float(w[1])


def test_a_model_against_its_own_initial_weights_is_compared_run_by_run():
    """What a run's init gives both models cancels in their run-by-run difference: the interval still covers
    the truth (97% of the time here), and is less than half as wide as one that draws each model's runs
    apart. 300 simulations."""
    coverage, paired, apart = _paired_runs()
    assert 0.9 <= coverage <= 0.985 and paired < 0.7 * apart
    x = {"correct": [1, 0]}
    with pytest.raises(ValueError, match="paired runs"):
        difference("accuracy", [x, x], [x, x], runs_a=[0, 1], runs_b=[0, 2], paired_runs=True)


def test_a_trial_comes_once_per_pair_of_drawn_copies_of_its_two_speakers():
    """Verification trials cross two speakers: a draw of speakers keeps a same-speaker trial once per copy
    of its speaker, a trial of two speakers once per pair of their copies."""
    from bestrq.probes.stats import _resamples

    sheet = {"scores": np.zeros(4), "labels": np.array([1, 0, 0, 1]), "unit": np.array(["a", "a", "b", "c"]),
             "unit2": np.array(["a", "b", "c", "c"])}  # trials a-a, a-b, b-c, c-c
    again = np.random.default_rng(0)  # the same draws of the speakers a, b, c
    for idx in _resamples(np.random.default_rng(0), sheet, 50):
        a, b, c = np.bincount(again.integers(3, size=3), minlength=3)
        assert np.bincount(idx, minlength=4).tolist() == [a, a * b, b * c, c]
