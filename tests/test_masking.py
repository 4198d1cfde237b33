"""Span masks: per utterance, never on padding, at each preset's expected fraction."""

from __future__ import annotations

import pytest
import torch

from bestrq.masking import MaskSpec, preset, span_mask


def lengths_for(n: int, lo: int, hi: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(lo, hi, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["speechbrain", "original"])
def test_masks_never_touch_padding_and_match_the_expected_fraction(name):
    spec = preset(name)
    lengths = lengths_for(2000, 200, 500)  # 8-20 s utterances at 40 ms
    mask = span_mask(lengths, 520, spec, torch.Generator().manual_seed(1))
    pad = torch.arange(520)[None, :] >= lengths[:, None]
    assert not mask[pad].any()
    measured = mask.sum().item() / lengths.sum().item()
    assert abs(measured - spec.expected_fraction()) <= 0.02, (measured, spec.expected_fraction())


def test_preset_fractions_are_the_references():
    assert preset("speechbrain").expected_fraction() == pytest.approx(0.60)
    assert preset("original").expected_fraction() == pytest.approx(1 - 0.99**40)  # ~0.33


def test_each_utterance_is_masked_by_its_own_length():
    """A batch-shared mask sized by the shortest clip would leave the long ones almost unmasked."""
    lengths = torch.tensor([20] + [400] * 63)
    mask = span_mask(lengths, 400, preset("speechbrain"), torch.Generator().manual_seed(2))
    long_fraction = mask[1:].sum().item() / (63 * 400)
    assert abs(long_fraction - 0.6) < 0.02
    assert 0 < mask[0].sum().item() <= 20
    assert not torch.equal(mask[1], mask[2])  # different spans per utterance


def test_aligned_spans_fill_whole_slots():
    mask = span_mask(torch.tensor([400, 37]), 400, MaskSpec("aligned", 0.15, 4), torch.Generator().manual_seed(3))
    slots = mask.view(2, 100, 4)
    assert torch.all(slots.all(-1) | ~slots.any(-1))  # every 4-frame slot fully in or out
    assert mask[1, 36:].sum() == 0  # frame 36 is in no whole slot of a 37-frame utterance


def test_masks_are_reproducible_from_the_generator_and_vectorised_over_edge_cases():
    lengths = torch.tensor([0, 1, 3, 50])
    spec = preset("original")
    a = span_mask(lengths, 50, spec, torch.Generator().manual_seed(4))
    b = span_mask(lengths, 50, spec, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not a[0].any()
    sb = span_mask(lengths, 50, preset("speechbrain"), torch.Generator().manual_seed(4))
    assert not sb[:3].any()  # no whole 4-frame slot in utterances of 0-3 frames
    assert sb[3].sum() > 0


def test_independent_spans_run_span_frames():
    spec = MaskSpec("independent", 0.01, 10)
    mask = span_mask(torch.tensor([1000]), 1000, spec, torch.Generator().manual_seed(5))[0].int()
    starts = torch.nonzero(torch.diff(mask, prepend=torch.zeros(1, dtype=torch.int32)) == 1).flatten()
    ends = torch.nonzero(torch.diff(mask, append=torch.zeros(1, dtype=torch.int32)) == -1).flatten()
    runs = ends - starts + 1
    inside = ends < 999  # a span may be cut short by the utterance's end
    assert len(runs) > 3 and torch.all(runs[inside] >= 10)
