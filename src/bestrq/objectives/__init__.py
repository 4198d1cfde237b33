"""Pre-training objectives. Each is one module: ``forward(waveforms, lengths, generator, step)``
returns an Output with ``loss``, ``accuracy``, ``masked_frames``, ``frames`` and ``scalars()``;
``encode(waveforms, lengths)`` returns every layer's hidden states; ``output_lengths(lengths)``
its frames for clips of ``lengths`` samples; ``sample_rate`` is the audio rate it expects;
``baseline_name``, ``baseline_counts(out, device)`` and ``baseline_accuracy(counts)`` give
the validation baseline that its accuracy is read against. The training loop knows only this
interface."""

from __future__ import annotations

import torch
from torch import nn

from ..config import PretrainConfig


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The objective module a config names, with its encoder."""
    if cfg.objective == "wav2vec2":
        from .wav2vec2 import build_wav2vec2

        return build_wav2vec2(cfg)
    from .bestrq import build_bestrq

    return build_bestrq(cfg)


def min_samples(model: nn.Module) -> int:
    """The shortest clip, in samples, that gives ``model``'s encoder one frame (880 for BEST-RQ's 4 x 10 ms)."""
    frames = model.output_lengths(torch.arange(1, 2**16))
    if not (frames >= 1).any():
        raise ValueError("the encoder makes no frame of a clip of 4 s")
    return int((frames >= 1).nonzero()[0]) + 1
