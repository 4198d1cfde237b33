"""Dropout with a cheaper mask on the CPU.

PyTorch's CPU dropout draws one Bernoulli float per element (``bernoulli_``): at the paper's
size that was 12% of a BEST-RQ training step on a 2-core CPU, most of it on the 2048-wide
feed-forward activations. Here one 64-bit random integer gives the keep-or-drop decision of
four elements (a 16-bit lane each, compared with a threshold), which is about four times
faster to draw, and the mask is kept as booleans for the backward pass. :func:`attention`
does the same for the dropout on attention weights.

The drop probability is ``p`` rounded to a multiple of 1/65536 (at most 7.7e-6 away), and the
survivors are scaled by the inverse of the exact keep probability, so the expectation is
unchanged. Masks come from PyTorch's default generator, as ``nn.Dropout``'s do, so seeding
and checkpointed RNG states work the same. On other devices, in low precision, and under
``torch.compile`` (which generates and fuses its own masks) this is ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LANES = 65536  # a 16-bit lane takes 2**16 values


def keep_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape``, each element kept with probability ``1 - round(p * 2**16) / 2**16``.

    Returns (mask, 1 / keep probability). Four elements per 64-bit draw: every 16-bit lane of
    a uniform int64 is uniform on -32768 .. 32767 (drawn over the full signed range, so the
    sign lane is not biased as ``random_()``'s non-negative default would make it).
    """
    drop = round(p * _LANES)
    n = torch.Size(shape).numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, 2 ** 63 - 1)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes >= drop - _LANES // 2, _LANES / (_LANES - drop)


class _MaskedScale(torch.autograd.Function):
    """x * mask * scale, with the boolean mask saved (not the input) for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x.mul(mask).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        mask, = ctx.saved_tensors
        return grad.mul(mask).mul_(ctx.scale), None, None


def _cheap(x: torch.Tensor, p: float) -> bool:
    """Whether the cheaper mask applies: fp32 on the CPU, 0 < p < 1, not being compiled."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and 0.0 < p < 1.0
            and not torch.compiler.is_compiling())


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the cheaper mask for fp32 tensors on the CPU."""
    if not training or p == 0.0:
        return x
    if not _cheap(x, p):
        return F.dropout(x, p, training)
    mask, scale = keep_mask(x.shape, p, x.device)
    return _MaskedScale.apply(x, mask, scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)`` (B, H, T, hd).

    With dropout on the CPU, PyTorch computes attention by its math path anyway, with a
    Bernoulli mask on the (B, H, T, T) weights; this is the same math with :func:`dropout`'s
    mask. ``mask``: boolean (True = attend) or an additive float bias, as for SDPA.
    """
    if not _cheap(q, p):  # also p == 0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return dropout(scores.softmax(dim=-1), p) @ v


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout`'s cheaper CPU mask; same arguments, no state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
