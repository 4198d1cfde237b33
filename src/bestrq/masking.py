"""Span masks for masked prediction, per utterance, vectorised, from lengths and a generator.

Masks live on the target grid: one position per stacked 40 ms frame, the frames the
encoder predicts. Each utterance is masked according to its own length, and padding is
never masked. (SpeechBrain's BEST-RQ draws one set of span starts for the whole batch,
sized by its shortest clip, so long clips in a batch with a short one are barely masked.)

Two ways to place spans, matching the two references:

``aligned`` (the paper's code, Whetten et al. 2024): the utterance is cut into slots of
``span`` frames; ``round(prob * length)`` distinct slots, at least one, are masked. Spans
never overlap, so the masked fraction is ``prob * span`` (0.15 * 4 = 60 %, as that code's
documentation states), capped by the number of whole slots.

``independent`` (Chiu et al. 2022): every frame starts a span with probability ``prob``;
spans may overlap and run to the utterance's end. Away from the edges a frame is masked
with probability ``1 - (1 - prob) ** span``.

Shapes: B batch, T frames (target grid); lengths (B,) int64; masks (B, T) bool, True = masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("aligned", "independent")
PRESETS = ("speechbrain", "original")  # see preset()


@dataclass(frozen=True)
class MaskSpec:
    """How to mask, in target frames (40 ms with 4x stacking)."""

    mode: str
    prob: float
    span: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"masking mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.prob <= 1:
            raise ValueError(f"masking prob must be in (0, 1], got {self.prob}")
        if self.span < 1:
            raise ValueError(f"masking span must be >= 1 frame, got {self.span}")

    def expected_fraction(self) -> float:
        """Fraction of a long utterance's frames that are masked on average."""
        if self.mode == "aligned":
            return min(1.0, self.prob * self.span)
        return 1.0 - (1.0 - self.prob) ** self.span


def preset(name: str, frames_per_target: int = 4) -> MaskSpec:
    """Named masking schemes. ``frames_per_target`` 10 ms frames make one target frame."""
    if name == "speechbrain":
        # start prob 0.15, spans of 4 target frames aligned to 4-frame slots: the paper's code
        return MaskSpec("aligned", 0.15, 4)
    if name == "original":
        # prob 0.01 per 10 ms frame, 400 ms spans (Chiu et al. 2022, section 3), on the target grid
        return MaskSpec("independent", 1.0 - 0.99**frames_per_target, max(1, 40 // frames_per_target))
    raise ValueError(f"unknown masking preset {name!r}: choose {' or '.join(PRESETS)}")


def span_mask(lengths: torch.Tensor, num_frames: int, spec: MaskSpec,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, num_frames) bool mask, True on masked frames, never on padding."""
    device = lengths.device
    b = lengths.shape[0]
    frames = torch.arange(num_frames, device=device)  # (T,)
    valid = frames[None, :] < lengths[:, None]  # (B, T)
    if spec.mode == "independent":
        starts = (torch.rand(b, num_frames, generator=generator, device=device) < spec.prob) & valid
        # frame t is masked if a span started within the last `span` frames: a windowed count
        count = starts.long().cumsum(dim=1)
        before = torch.nn.functional.pad(count, (spec.span, 0))[:, :num_frames]
        return (count - before > 0) & valid

    slots = torch.div(lengths, spec.span, rounding_mode="floor")  # whole slots per utterance, (B,)
    num_slots = max(1, num_frames // spec.span)
    # round(prob * length) with a random rounding direction, as the paper's code: >= 1, <= slots
    u = torch.rand(b, generator=generator, device=device)
    n_spans = torch.floor(spec.prob * lengths.double() + u.double()).long().clamp(min=1)
    n_spans = torch.minimum(n_spans, slots)
    # pick n_spans distinct slots per row: rank random keys, invalid slots sorted last
    keys = torch.rand(b, num_slots, generator=generator, device=device)
    keys = keys.masked_fill(torch.arange(num_slots, device=device)[None, :] >= slots[:, None], 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, slots): each slot's rank
    chosen = rank < n_spans[:, None]
    mask = chosen.repeat_interleave(spec.span, dim=1)[:, :num_frames]
    if mask.shape[1] < num_frames:
        mask = torch.nn.functional.pad(mask, (0, num_frames - mask.shape[1]))
    return mask & valid
