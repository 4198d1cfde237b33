"""Front-ends: (B, T, F) fbank at 10 ms -> (B, T // 4, D) at 40 ms, with exact lengths.

Both produce exactly ``T // 4`` frames, one per quantizer target, so predictions and
targets line up without trimming rules elsewhere.

``StackedFrames`` (default): stack 4 frames (320 dims), LayerNorm, Linear. This is
Wav2Vec2BertModel's feature projection with a 320-dim input, so a model trained with it
exports to Hugging Face transformers as is.

``Conv2dSubsampling``: two 3x3 convolutions with stride 2 over time and frequency, as the
paper's SpeechBrain recipe (ConvolutionFrontEnd), then a Linear to D.
"""

from __future__ import annotations

import torch
from torch import nn

from ..features import padding_mask, stack_frames
from .dropout import Dropout


class StackedFrames(nn.Module):
    def __init__(self, num_mel_bins: int, d_model: int, stride: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.stride = stride
        self.layer_norm = nn.LayerNorm(num_mel_bins * stride)
        self.projection = nn.Linear(num_mel_bins * stride, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacked, out_lengths = stack_frames(feats, lengths, self.stride)  # (B, T/4, 4F)
        return self.dropout(self.projection(self.layer_norm(stacked))), out_lengths


class Conv2dSubsampling(nn.Module):
    def __init__(self, num_mel_bins: int, d_model: int, channels: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU(),
        )
        freq = (num_mel_bins + 3) // 4  # ceil twice: (F + 1) // 2, then again
        self.projection = nn.Linear(channels * freq, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_lengths = torch.div(lengths, 4, rounding_mode="floor")
        t_out = feats.shape[1] // 4
        # zero everything past each utterance's whole 4-frame groups: alone, it would be cut there
        feats = feats.masked_fill(padding_mask(out_lengths * 4, feats.shape[1])[..., None], 0.0)
        x = self.conv(feats[:, : t_out * 4].unsqueeze(1))  # (B, C, T/4, F/4)
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, T/4, C * F/4)
        return self.dropout(self.projection(x)), out_lengths


class PassThrough(nn.Module):
    """No front-end: the input is already at the model width and frame rate (wav2vec 2.0's projection)."""

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return feats, lengths


FRONTENDS = {"stack": StackedFrames, "conv2d": Conv2dSubsampling}
