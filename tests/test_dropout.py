"""The CPU dropout: the drop rate, the scaling and the gradient of nn.Dropout, from a cheaper mask."""

import pytest
import torch
import torch.nn.functional as F

from bestrq.models.dropout import Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_every_16_bit_lane_drops_at_the_asked_rate(p):
    """Each of the four lanes of a 64-bit draw is uniform: a lane that always kept its sign bit
    (as int64 ``random_()`` without a range does) would drop at p - 0.5 or 0 and fail here."""
    torch.manual_seed(0)
    n = 400_000
    mask, scale = keep_mask(torch.Size([n, 4]), p)
    dropped = (~mask).double().mean(dim=0)  # per lane
    tolerance = 5 * (p * (1 - p) / n) ** 0.5
    assert (dropped - p).abs().max() < tolerance, dropped
    assert scale == pytest.approx(1 / (1 - p), rel=1e-4)


def test_output_and_gradient_are_the_input_masked_and_rescaled():
    torch.manual_seed(0)
    x = torch.randn(300, 2048, dtype=torch.float32).abs().add_(0.1).requires_grad_()
    y = dropout(x, 0.25)
    kept = y != 0
    assert 0.24 < 1 - kept.float().mean().item() < 0.26
    scale = (y[kept] / x[kept]).detach()
    assert torch.allclose(scale, torch.full_like(scale, 1 / 0.75), rtol=1e-4)
    grad = torch.randn_like(x)
    y.backward(grad)
    assert torch.equal(x.grad == 0, ~kept | (grad == 0))
    assert torch.allclose(x.grad[kept], grad[kept] * scale)
    # the expectation is the input's: the mean of many draws approaches it
    torch.manual_seed(1)
    mean = torch.stack([dropout(x.detach()[:8], 0.25) for _ in range(2000)]).mean(0)
    assert torch.allclose(mean, x.detach()[:8], rtol=0.12)


def test_seeded_like_nn_dropout_and_identity_when_not_training():
    x = torch.randn(64, 576)
    torch.manual_seed(3)
    a = Dropout(0.1)(x)
    torch.manual_seed(3)
    b = Dropout(0.1)(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
    layer = Dropout(0.1).eval()
    assert layer(x) is x
    assert dropout(x, 0.0) is x
    # other dtypes use PyTorch's own dropout (bit-identical under the same seed)
    h = x.double()
    torch.manual_seed(4)
    ours = dropout(h, 0.3)
    torch.manual_seed(4)
    assert torch.equal(ours, F.dropout(h, 0.3, True))


@pytest.mark.parametrize("mask_kind", ["bool", "bias"])
def test_attention_is_sdpa_with_the_cheaper_dropout(mask_kind):
    """The CPU path computes SDPA's math: with a rate that drops nothing it equals SDPA, and
    averaged over many draws of a real rate it approaches SDPA without dropout."""
    from bestrq.models.dropout import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 8) for _ in range(3))
    keep = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    keep[1, ..., 13:] = False  # the second utterance is 13 frames long
    mask = keep if mask_kind == "bool" else torch.randn(2, 3, 20, 20).masked_fill(~keep, float("-inf"))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(attention(q, k, v, mask, 1e-9), reference, atol=1e-5)  # rounds to no drop
    draws = torch.stack([attention(q, k, v, mask, 0.3) for _ in range(3000)])
    assert not torch.allclose(draws[0], reference, atol=1e-3)
    assert torch.allclose(draws.mean(0), reference, atol=0.06)
