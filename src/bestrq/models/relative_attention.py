"""Self-attention with a clipped relative-key bias, query block by query block: memory linear in T.

The bias of query i and key j is q_i . E[clip(j - i, -left, right)] / sqrt(hd): one learned vector
per clipped distance (transformers' ``relative_key``). Materialised, it is a (B, H, T, T) tensor
per layer, kept for the backward pass, which rules out fused kernels and grows with the square
of the clip length. Here no (B, H, T, T) tensor exists: queries are taken ``block`` at a time
against every key, with an online softmax, and the backward pass recomputes each block's scores
from q, k, v, E and the saved log-sum-exp instead of keeping them (FlashAttention's schedule,
written with PyTorch operations). Peak memory holds one block's (B, H, block, T) scores.

Attention dropout draws each block's mask from a generator seeded once per call, so the
backward pass redraws the same masks. Scores and softmax statistics are fp32.
"""

from __future__ import annotations

import torch

BLOCK = 256  # queries per block: (B, H, 256, T) fp32 scores at a time
CPU_BLOCKS = 4  # on a CPU, only clips of more than this many blocks take this path (below)


def applies(frames: int, device: torch.device) -> bool:
    """Whether a clip of ``frames`` takes the query-block path: on a GPU, above one block; on a CPU,
    where memory is rarely the limit and the blocks' extra passes cost time (a bestrq_tiny step on
    15 s clips: 0.65 s against 0.54 s materialised), above CPU_BLOCKS blocks (41 s at 40 ms)."""
    return frames > BLOCK * (CPU_BLOCKS if device.type == "cpu" else 1)


def _distances(start: int, stop: int, t: int, left: int, right: int, device: torch.device) -> torch.Tensor:
    """(stop - start, T) index of each (query, key) pair's clipped distance into E's rows."""
    queries = torch.arange(start, stop, device=device)
    keys = torch.arange(t, device=device)
    return (keys[None, :] - queries[:, None]).clamp(-left, right) + left


def _scores(q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, index: torch.Tensor,
            key_padding: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, Q, T) fp32 scores of a block of queries q (B, H, Q, hd) against every key."""
    content = q @ k.transpose(-2, -1)  # (B, H, Q, T)
    per_distance = q @ weight.T  # (B, H, Q, P)
    bias = per_distance.gather(-1, index.expand(*q.shape[:2], *index.shape))
    scores = (content + bias).to(torch.promote_types(q.dtype, torch.float32)) * scale
    return scores.masked_fill(key_padding[:, None, None, :], float("-inf"))


def _keep(shape: torch.Size, p: float, seed: int, start: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed + start)
    return torch.rand(shape, generator=generator, device=device) >= p


class _RelativeKeyAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, weight, key_padding, left, right, p, seed, block):
        b, h, t, hd = q.shape
        scale = hd ** -0.5
        out = torch.empty_like(q)
        lse = torch.empty(b, h, t, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
        for start in range(0, t, block):
            stop = min(start + block, t)
            index = _distances(start, stop, t, left, right, q.device)
            s = _scores(q[:, :, start:stop], k, weight, index, key_padding, scale)
            m = s.amax(dim=-1, keepdim=True)
            m = m.masked_fill(m == float("-inf"), 0.0)  # a query with no key to attend (a clip of length 0)
            e = (s - m).exp()
            total = e.sum(dim=-1, keepdim=True)
            # its log-sum-exp +inf: its weights are 0, forward (0 / 1) and backward (exp(-inf))
            lse[:, :, start:stop] = (m + total.log()).squeeze(-1).masked_fill(total.squeeze(-1) == 0, float("inf"))
            probs = e / total.clamp(min=torch.finfo(e.dtype).tiny)
            if p > 0:
                probs = probs * _keep(probs.shape, p, seed, start, q.device) / (1 - p)
            out[:, :, start:stop] = (probs.to(v.dtype) @ v).to(out.dtype)
        ctx.save_for_backward(q, k, v, weight, key_padding, out, lse)
        ctx.config = (left, right, p, seed, block)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, weight, key_padding, out, lse = ctx.saved_tensors
        left, right, p, seed, block = ctx.config
        t, hd = q.shape[2:]
        scale = hd ** -0.5
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
        grad_out = grad_out.contiguous()
        delta = (grad_out.to(acc) * out.to(acc)).sum(dim=-1)  # (B, H, T): rowsum(dO * O)
        dq, dk, dv = (torch.zeros_like(x, dtype=acc) for x in (q, k, v))
        dweight = torch.zeros_like(weight, dtype=acc)
        vf, kf, wf = v.to(acc), k.to(acc), weight.to(acc)
        for start in range(0, t, block):
            stop = min(start + block, t)
            qb, go = q[:, :, start:stop], grad_out[:, :, start:stop].to(acc)
            index = _distances(start, stop, t, left, right, q.device)
            probs = (_scores(qb, k, weight, index, key_padding, scale) - lse[:, :, start:stop, None]).exp()
            dprobs = go @ vf.transpose(-2, -1)  # (B, H, Q, T)
            if p > 0:
                keep = _keep(probs.shape, p, seed, start, q.device) / (1 - p)
                dv += (probs * keep).transpose(-2, -1) @ go
                dprobs = dprobs * keep
            else:
                dv += probs.transpose(-2, -1) @ go
            ds = probs * (dprobs - delta[:, :, start:stop, None]) * scale  # d(scores before scaling)
            ds = ds.masked_fill(key_padding[:, None, None, :], 0.0)
            qbf = qb.to(acc)
            dk += ds.transpose(-2, -1) @ qbf
            # the bias: each pair's gradient summed per clipped distance, (B, H, Q, P)
            per_distance = torch.zeros(*ds.shape[:3], weight.shape[0], dtype=acc, device=q.device)
            per_distance.scatter_add_(-1, index.expand(*ds.shape[:2], *index.shape), ds)
            dq[:, :, start:stop] = ds @ kf + per_distance @ wf
            dweight += (per_distance.transpose(-2, -1) @ qbf).sum(dim=(0, 1))
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dweight.to(weight.dtype),
                None, None, None, None, None, None)


def relative_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
                           key_padding: torch.Tensor, left: int, right: int, p: float = 0.0,
                           block: int = BLOCK) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias) v for q, k, v (B, H, T, hd), ``weight`` (left + right + 1, hd)
    the distance embeddings, ``key_padding`` (B, T) True on padding; dropout ``p`` on the weights."""
    seed = int(torch.randint(2**62, (), generator=None)) if p > 0 else 0  # a CPU draw: no device sync
    return _RelativeKeyAttention.apply(q, k, v, weight.to(q.dtype), key_padding, left, right, p, seed, block)
