"""Simple acoustic statistics and a nearest-centroid classifier, to show that the
synthetic corpus's labels are carried by the audio (not a model of ours: numpy only)."""

from __future__ import annotations

import numpy as np

SR = 16000
N_FFT, HOP, N_MELS, N_MFCC = 400, 160, 40, 13


def _mel_matrix() -> np.ndarray:
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(20.0), hz_to_mel(SR / 2), N_MELS + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(N_FFT, 1.0 / SR)
    fb = np.zeros((N_MELS, bins.size))
    for m in range(N_MELS):
        lo, c, hi = hz[m : m + 3]
        fb[m] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0.0, None)
    return fb


_MEL = _mel_matrix()
_DCT = np.cos(np.pi / N_MELS * (np.arange(N_MELS) + 0.5)[None, :] * np.arange(N_MFCC)[:, None])


def frames(x: np.ndarray, size: int) -> np.ndarray:
    n = 1 + max(0, (len(x) - size) // HOP)
    idx = np.arange(size)[None, :] + HOP * np.arange(n)[:, None]
    return np.pad(x, (0, max(0, size - len(x))))[idx]


def pitch(x: np.ndarray, fmin: float = 60.0, fmax: float = 500.0) -> np.ndarray:
    """Per-frame F0 by normalised autocorrelation (0 where unvoiced)."""
    f = frames(x, 640)  # 40 ms
    f = f - f.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(f, n=2048, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :640]
    ac = ac / np.maximum(ac[:, :1], 1e-9)
    lo, hi = int(SR / fmax), int(SR / fmin)
    lag = lo + ac[:, lo:hi].argmax(axis=1)
    strength = ac[np.arange(len(ac)), lag]
    energy = (f**2).mean(axis=1)
    voiced = (strength > 0.6) & (energy > 0.05 * energy.max())
    f0 = np.where(voiced, SR / lag, 0.0)
    if voiced.sum() > 2:  # fold octave errors back to within an octave of the median
        med = np.median(f0[voiced])
        f0 = np.where(voiced & (f0 > 1.5 * med), f0 / 2, f0)
        f0 = np.where(voiced & (f0 < med / 1.5), f0 * 2, f0)
    return f0


def features(x: np.ndarray) -> np.ndarray:
    """MFCC means and stds, log-energy stats, log-F0 level and spread and the voiced fraction.

    F0 level and spread are the median and the 10-90 percentile range of log F0: robust to
    the tracker's occasional octave errors, which ruin a plain mean and std."""
    f = frames(x, N_FFT) * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(f, axis=1)) ** 2
    logmel = np.log(power @ _MEL.T + 1e-8)
    mfcc = logmel @ _DCT.T
    f0 = pitch(x)
    voiced = f0 > 0
    lf0 = np.log(f0[voiced]) if voiced.any() else np.zeros(1)
    p10, p50, p90 = np.percentile(lf0, [10, 50, 90])
    loge = np.log((f**2).mean(axis=1) + 1e-10)
    return np.concatenate([mfcc.mean(0), mfcc.std(0), [loge.mean(), loge.std(), np.percentile(loge, 90)],
                           [p50, p90 - p10, voiced.mean()]])


class NearestCentroid:
    """Nearest class mean after z-scoring, in the metric of the pooled within-class
    covariance (shrunk towards the identity): linear discriminant analysis.

    ``within`` may come from other classes than the centroids (speaker verification: the
    within-speaker covariance of the training speakers, centroids of unseen ones).
    """

    def __init__(self, shrink: float = 0.1) -> None:
        self.shrink = shrink

    def fit(self, X: np.ndarray, y: list[str], within: tuple[np.ndarray, list[str]] | None = None) -> NearestCentroid:
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-8
        Z = (X - self.mu) / self.sd
        self.labels = sorted(set(y))
        ya = np.array(y)
        self.centroids = np.stack([Z[ya == c].mean(0) for c in self.labels])
        WZ, wy = ((within[0] - self.mu) / self.sd, np.array(within[1])) if within else (Z, ya)
        cov = sum(np.cov(WZ[wy == c].T, bias=True) * (wy == c).sum()
                  for c in set(wy.tolist()) if (wy == c).sum() > 1) / len(wy)
        self.precision = np.linalg.inv((1 - self.shrink) * cov + self.shrink * np.eye(len(cov)))
        return self

    def predict(self, X: np.ndarray) -> list[str]:
        D = (X - self.mu)[:, None, :] / self.sd - self.centroids[None]
        return [self.labels[i] for i in np.einsum("nkd,de,nke->nk", D, self.precision, D).argmin(1)]


def accuracy(pred: list[str], gold: list[str]) -> float:
    return float(np.mean([p == g for p, g in zip(pred, gold)]))
