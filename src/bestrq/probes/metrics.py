"""Downstream metrics: CTC greedy decoding, WER/CER, equal error rate, accuracy, macro-F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """(B, T, C) frame scores and (B,) valid lengths -> label sequences.

    Best class per frame, then repeats merged and blanks removed, in that order: "a a _ a"
    reads "aa", "a a a" reads "a".
    """
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    out = []
    for row, n in zip(best, lengths.tolist()):
        row = row[:n]
        keep = torch.ones_like(row, dtype=torch.bool)
        keep[1:] = row[1:] != row[:-1]
        out.append([int(c) for c in row[keep & (row != blank)]])
    return out


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER (edit operations over reference words / characters), with jiwer."""
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        raise ValueError("no non-empty reference to score")
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


def utterance_errors(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """Per utterance, the character and word edit operations and reference lengths (jiwer's counts):
    ``{"cer": {"errors": [...], "length": [...]}, "wer": {...}}``. Their sums give :func:`error_rates`
    exactly, so a bootstrap over utterances resamples the corpus metric. Empty references are left out."""
    import jiwer

    out = {"cer": {"errors": [], "length": []}, "wer": {"errors": [], "length": []}}
    for r, h in zip(refs, hyps):
        if not r.strip():
            continue
        for key, counts in (("cer", jiwer.process_characters(r, h)), ("wer", jiwer.process_words(r, h))):
            out[key]["errors"].append(counts.substitutions + counts.deletions + counts.insertions)
            out[key]["length"].append(counts.substitutions + counts.deletions + counts.hits)
    return out


def equal_error_rate(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The error rate where false acceptances equal false rejections (labels: 1 target, 0 non-target).

    Sweeps every threshold between sorted scores: accept when score >= threshold. The EER is
    read where the two rates cross, interpolating linearly between the two thresholds that
    bracket the crossing.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-D and of the same length")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0 or n_pos + n_neg != len(y):
        raise ValueError("the EER needs target (1) and non-target (0) trials, and nothing else")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # thresholds at every distinct score, from the highest (accept only the best) down
    last = np.r_[s[1:] != s[:-1], True]  # the last trial of each run of equal scores
    accepted_pos = np.cumsum(y)[last]
    accepted_neg = np.cumsum(1 - y)[last]
    frr = np.r_[1.0, 1.0 - accepted_pos / n_pos]  # threshold above every score: nothing accepted
    far = np.r_[0.0, accepted_neg / n_neg]
    i = int(np.argmax(far >= frr))  # first threshold where false acceptance catches up
    if i == 0:
        return float(frr[0])
    # between threshold i-1 (far < frr) and i (far >= frr): where the straight lines cross
    d0, d1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def accuracy(pred: Sequence[int], target: Sequence[int]) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if len(target) else float("nan")


def macro_f1(pred: Sequence[int], target: Sequence[int], num_classes: int) -> float:
    """Unweighted mean over the classes present in ``target`` or ``pred`` of each class's F1."""
    pred, target = np.asarray(pred), np.asarray(target)
    f1s = []
    for c in range(num_classes):
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")
