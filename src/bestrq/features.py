"""Waveform -> Kaldi-compatible log-mel filterbank, normalisation and frame stacking, in torch.

Runs on the training device inside the model, so a GPU run never waits on CPU feature
extraction. The fbank follows Kaldi's ``compute-fbank-feats`` with ``snip_edges=true``:
25 ms Povey window every 10 ms, DC removal, pre-emphasis 0.97, a 512-point power
spectrum, triangular mel filters on Kaldi's mel scale (1127 ln(1 + f/700)) between 20 Hz
and Nyquist, and the log floored at float32's epsilon. Waveforms in [-1, 1] are scaled to
the int16 range first, as Kaldi reads them. ``tests/test_features.py`` checks all of this
against kaldi-native-fbank.

The spectrum is computed in float64 and the features returned in float32. In single
precision, a bin 60 dB or more below its frame's loudest carries the rounding noise of the
whole frame (1e-3 in the log, more in digital near-silence); in float64 the features agree
with transformers' float64 ``SeamlessM4TFeatureExtractor`` to ~1e-6, which is what lets an
exported model give the same hidden states there as here. It costs ~35 ms per minute of
audio on this 2-core CPU (a tiny-model step takes ~500 ms) and nothing measurable on a GPU.
Devices without float64 (Apple's MPS) fall back to float32.

Utterance normalisation follows the same extractor: per mel bin, over the valid frames,
the mean and the unbiased variance (+ 1e-7).

Shapes: B batch, S samples, T frames, F mel bins; lengths are (B,) int64.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

NORMALIZATIONS = ("utterance", "global", "none")


def num_frames(lengths: torch.Tensor, frame_length: int, frame_shift: int) -> torch.Tensor:
    """Frames Kaldi makes from ``lengths`` samples with snip_edges: whole windows only."""
    n = torch.div(lengths - frame_length, frame_shift, rounding_mode="floor") + 1
    return n.clamp(min=0)


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) bool, True on padding (frames at or past each utterance's length)."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def _kaldi_mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_freq: float, high_freq: float
                    ) -> torch.Tensor:
    """(fft_size // 2 + 1, num_bins) triangular filters, as Kaldi's MelBanks (Nyquist bin gets 0)."""
    nyquist = sample_rate / 2
    if high_freq <= 0:
        high_freq += nyquist
    if not 0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel range [{low_freq}, {high_freq}] Hz must lie inside [0, {nyquist}] Hz")
    mel_low, mel_high = _kaldi_mel(torch.tensor(low_freq, dtype=torch.float64)), _kaldi_mel(
        torch.tensor(high_freq, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * torch.arange(num_bins, dtype=torch.float64)  # (F,)
    center, right = left + delta, left + 2 * delta
    n_fft_bins = fft_size // 2  # Kaldi leaves out the Nyquist bin
    mel = _kaldi_mel(torch.arange(n_fft_bins, dtype=torch.float64) * sample_rate / fft_size)[:, None]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.where(mel <= center, up, down).clamp(min=0)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros_like(weights))
    return torch.cat([weights, weights.new_zeros(1, num_bins)])  # (fft_size//2 + 1, F) float64


def povey_window(n: int) -> torch.Tensor:
    """Kaldi's default window: a Hann window (over n - 1) raised to 0.85, float64."""
    i = torch.arange(n, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(2 * math.pi * i / (n - 1))).pow(0.85)


class LogMelFbank(nn.Module):
    """(B, S) waveforms + (B,) lengths -> (B, T, F) log-mel features + (B,) frame counts.

    Each frame depends only on its own samples, so an utterance gets the same features
    alone or padded in a batch; frames past its length are set to 0.
    """

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 80, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, low_freq: float = 20.0, high_freq: float = 0.0,
                 preemphasis: float = 0.97, waveform_scale: float = 32768.0) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.frame_length = round(sample_rate * frame_length_ms / 1000)
        self.frame_shift = round(sample_rate * frame_shift_ms / 1000)
        self.fft_size = 1 << (self.frame_length - 1).bit_length()  # next power of two
        self.preemphasis = preemphasis
        self.waveform_scale = waveform_scale
        # derived constants, rebuilt from the arguments: not saved in checkpoints
        self.register_buffer("window", povey_window(self.frame_length), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(num_mel_bins, self.fft_size, sample_rate,
                                                          low_freq, high_freq), persistent=False)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return num_frames(lengths, self.frame_length, self.frame_shift)

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if waveforms.dim() != 2 or lengths.shape != waveforms.shape[:1]:
            raise ValueError(f"expected waveforms (B, S) and lengths (B,), got {tuple(waveforms.shape)} "
                             f"and {tuple(lengths.shape)}")
        frame_lengths = self.output_lengths(lengths)  # (B,)
        dtype = torch.float32 if waveforms.device.type == "mps" else torch.float64
        x = waveforms.to(dtype) * self.waveform_scale
        if x.shape[1] < self.frame_length:
            return waveforms.new_zeros(x.shape[0], 0, self.num_mel_bins, dtype=torch.float32), frame_lengths
        frames = x.unfold(1, self.frame_length, self.frame_shift)  # (B, T, frame_length)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC per frame
        # pre-emphasis within the frame; Kaldi treats the sample before the first as itself
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - self.preemphasis * previous) * self.window.to(dtype)
        spectrum = torch.fft.rfft(frames, n=self.fft_size, dim=-1)  # (B, T, fft_size//2 + 1)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(power, self.mel_banks.to(dtype))  # (B, T, F)
        feats = mel.clamp(min=torch.finfo(torch.float32).eps).log().float()
        return feats.masked_fill(padding_mask(frame_lengths, feats.shape[1])[..., None], 0.0), frame_lengths


class FeatureNormalizer(nn.Module):
    """Mean/variance normalisation of (B, T, F) features, over valid frames only.

    ``utterance``: each utterance by its own statistics (stateless): the mean and the
    unbiased variance of each bin over the valid frames, as transformers'
    ``SeamlessM4TFeatureExtractor`` (so exported models see the same input).
    ``global``: by running corpus statistics, accumulated in training mode from the first
    ``global_frames`` valid frames and then frozen; kept in buffers, so they are saved in the
    checkpoint. Under torch.distributed, each batch's sums are summed over the ranks before
    they are added: every rank holds the same statistics, of every rank's frames.
    ``none``: unchanged.
    """

    def __init__(self, num_bins: int, mode: str = "utterance", global_frames: int = 1_000_000,
                 eps: float = 1e-7) -> None:
        super().__init__()
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {mode!r}")
        self.mode, self.global_frames, self.eps = mode, global_frames, eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(num_bins, dtype=torch.float64))
        self.register_buffer("sum_sq", torch.zeros(num_bins, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return feats
        valid = (~padding_mask(lengths, feats.shape[1]))[..., None].to(feats.dtype)  # (B, T, 1)
        if self.mode == "utterance":
            n = valid.sum(dim=1, keepdim=True)  # (B, 1, 1)
            mean = (feats * valid).sum(dim=1, keepdim=True) / n.clamp(min=1)
            var = ((feats - mean).square() * valid).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
            return (feats - mean) * torch.rsqrt(var + self.eps) * valid
        if self.training and self.count < self.global_frames:
            sums = torch.cat([valid.sum().double()[None], (feats * valid).sum(dim=(0, 1)).double(),
                              (feats.square() * valid).sum(dim=(0, 1)).double()])
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(sums)  # every rank adds every rank's frames: the same statistics
            self.count += sums[0]
            self.sum += sums[1 : 1 + self.sum.shape[0]]
            self.sum_sq += sums[1 + self.sum.shape[0] :]
        if self.count == 0:
            raise RuntimeError("global feature normalisation has no statistics yet: run it in training mode "
                               "on some data first (or load a checkpoint that has them)")
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean.square()).clamp(min=0)
        return (feats - mean.float()) * torch.rsqrt(var.float() + self.eps) * valid


def normalised_fbank(fbank: LogMelFbank, normalizer: FeatureNormalizer, waveforms: torch.Tensor,
                     lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) waveforms -> (B, T, F) normalised log-mel features + (B,) frame counts, in fp32
    whatever autocast is on (bf16 features would move the quantizer's targets)."""
    with torch.autocast(waveforms.device.type, enabled=False):
        feats, frame_lengths = fbank(waveforms, lengths)
        return normalizer(feats, frame_lengths), frame_lengths


def stack_frames(feats: torch.Tensor, lengths: torch.Tensor, factor: int = 4
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, F) -> (B, T // factor, factor * F): ``factor`` consecutive frames per vector.

    An utterance keeps its whole groups only (``lengths // factor``), so a 40 ms vector
    never mixes an utterance's last frames with padding.
    """
    b, t, f = feats.shape
    t_out = t // factor
    stacked = whole_groups(feats, factor).reshape(b, t_out, factor * f)
    return stacked, torch.div(lengths, factor, rounding_mode="floor")


def whole_groups(feats: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, ...) -> (B, factor * (T // factor), ...): the frames of whole groups of ``factor``.

    BEST-RQ cuts its features with this before its encoder: compiled with dynamic shapes, a
    graph holds either lengths that are multiples of ``factor`` or lengths that are not, so
    uncut features would compile a second graph.
    """
    return feats[:, : feats.shape[1] // factor * factor]
