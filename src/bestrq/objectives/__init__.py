"""Pre-training objectives. Each is one module: ``forward(waveforms, lengths, generator, step)``
returns an Output with ``loss``, ``accuracy``, ``masked_frames``, ``frames`` and ``scalars()``;
``encode(waveforms, lengths)`` returns every layer's hidden states; ``sample_rate`` is the
audio rate it expects; ``baseline_name``, ``baseline_counts(out, device)`` and
``baseline_accuracy(counts)`` give the validation baseline that its accuracy is read against.
The training loop knows only this interface."""

from __future__ import annotations

from torch import nn

from ..config import PretrainConfig


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The objective module a config names, with its encoder."""
    if cfg.objective == "wav2vec2":
        from .wav2vec2 import build_wav2vec2

        return build_wav2vec2(cfg)
    from .bestrq import build_bestrq

    return build_bestrq(cfg)
