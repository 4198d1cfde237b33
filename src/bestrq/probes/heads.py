"""What a probe learns on top of a frozen encoder: a weighted sum of its layers and a small head.

Shapes: L hidden states (front-end output, then every layer), B batch, T frames, D width,
C classes. ``lengths`` (B,) counts valid frames; padding never reaches a pooled statistic
or an LSTM state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..features import padding_mask


class WeightedLayerSum(nn.Module):
    """softmax(w) . hidden states: a convex combination of the L layers, weights learned.

    Weights start equal (SUPERB's protocol). Each layer is first normalised over D without
    parameters, so a layer's weight is not decided by its scale. ``only``: hidden state
    ``only`` alone (a fixed one-hot weight, nothing learned), for layer-by-layer analysis.
    """

    def __init__(self, num_layers: int, normalize: bool = True, only: int | None = None) -> None:
        super().__init__()
        if only is not None and not 0 <= only < num_layers:
            raise ValueError(f"layer {only}: the encoder has hidden states 0 to {num_layers - 1}")
        logits = torch.zeros(num_layers)
        if only is not None:
            logits.fill_(-math.inf)[only] = 0.0
        self.logits = nn.Parameter(logits, requires_grad=only is None)
        self.normalize = normalize

    @property
    def weights(self) -> torch.Tensor:
        return self.logits.softmax(dim=0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (L, B, T, D) -> (B, T, D)
        if hidden.shape[0] != self.logits.shape[0]:
            raise ValueError(f"expected {self.logits.shape[0]} hidden states, got {hidden.shape[0]}")
        hidden = hidden.float()
        if self.normalize:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        return torch.einsum("l,lbtd->btd", self.weights, hidden)


def mean_std(x: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) -> (B, 2D): mean and standard deviation over the valid frames, optionally weighted.

    ``weights`` (B, T, 1 or D) sum to 1 over valid frames of each utterance.
    """
    valid = (~padding_mask(lengths, x.shape[1]))[..., None].to(x.dtype)  # (B, T, 1)
    if weights is None:
        weights = valid / lengths.clamp(min=1)[:, None, None].to(x.dtype)
    mean = (weights * x).sum(dim=1)
    var = (weights * (x - mean[:, None]).square()).sum(dim=1)
    return torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=-1)


class AttentiveStatsPooling(nn.Module):
    """Attention over frames (one weight per frame and channel), then weighted mean and std.

    As ECAPA-TDNN's pooling (Desplanques et al., 2020) without its global-context input.
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, 2D)
        scores = self.attention(x).masked_fill(padding_mask(lengths, x.shape[1])[..., None], float("-inf"))
        return mean_std(x, lengths, scores.softmax(dim=1))


class BiLSTM(nn.Module):
    """Bidirectional LSTM over the valid frames only (packed), (B, T, D) -> (B, T, 2H)."""

    def __init__(self, dim: int, hidden: int, num_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.output_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


class CTCHead(nn.Module):
    """ASR: BiLSTM layers over ``stack`` input frames at a time, then ``upsample`` labels (characters + blank) per step.

    CTC needs at least one output frame per character (two between repeated ones). Speech in
    the demo corpus runs at up to ~21 characters per second, more than a 40 ms encoder's 25
    frames, so the head emits ``upsample`` labels per LSTM step (one linear layer, reshaped).
    The probe stacks faster encoders down to 25 Hz (an LSTM step is sequential and costly on
    a CPU) and upsamples to 50 labels per second, so every encoder is read alike (SUPERB keeps
    the encoder's rate; its speech is slower). Returns (B, T', C) log-probabilities and (B,) lengths.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int = 256, num_layers: int = 2,
                 dropout: float = 0.1, stack: int = 1, upsample: int = 1) -> None:
        super().__init__()
        if stack < 1 or upsample < 1:
            raise ValueError(f"stack ({stack}) and upsample ({upsample}) must be >= 1")
        self.stack, self.upsample, self.num_classes = stack, upsample, num_classes
        self.rnn = BiLSTM(dim * stack, hidden, num_layers, dropout)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(self.rnn.output_dim, num_classes * upsample)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        if self.stack > 1:  # (B, T, D) -> (B, T/s, s D); a partial last group is zero-padded
            x = F.pad(x, (0, 0, 0, (-t) % self.stack)).reshape(b, -1, self.stack * d)
            lengths = torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")
        y = self.out(self.dropout(self.rnn(x, lengths)))  # (B, T', u C)
        y = y.reshape(b, -1, self.num_classes)  # (B, u T', C): each frame's u labels in order
        return y.log_softmax(dim=-1), lengths * self.upsample
class SpeakerHead(nn.Module):
    """Attentive statistics pooling -> embedding -> speaker classes.

    ``embed`` gives the embedding that verification scores by cosine; ``forward`` the logits.
    """

    def __init__(self, dim: int, num_classes: int, embedding_dim: int = 128) -> None:
        super().__init__()
        self.pooling = AttentiveStatsPooling(dim)
        self.embedding = nn.Sequential(nn.Linear(2 * dim, embedding_dim), nn.LayerNorm(embedding_dim))
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.pooling(x, lengths))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.embed(x, lengths)))


class PooledClassifier(nn.Module):
    """Utterance classes from mean+std statistics: linear (``mlp_hidden=0``) or a one-hidden-layer MLP.

    ``lstm_hidden > 0`` puts a BiLSTM before the pooling (the intent task's option).
    """

    def __init__(self, dim: int, num_classes: int, mlp_hidden: int = 0, lstm_hidden: int = 0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.rnn = BiLSTM(dim, lstm_hidden, 1) if lstm_hidden else None
        width = 2 * (self.rnn.output_dim if self.rnn else dim)
        self.classifier = (nn.Sequential(nn.Dropout(dropout), nn.Linear(width, mlp_hidden), nn.ReLU(),
                                         nn.Dropout(dropout), nn.Linear(mlp_hidden, num_classes))
                           if mlp_hidden else nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.rnn is not None:
            x = self.rnn(x, lengths)
        return self.classifier(mean_std(x, lengths))
