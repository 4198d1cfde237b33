"""The random-projection quantizer against brute force, and its per-vector independence."""

from __future__ import annotations

import torch

from bestrq.quantizer import RandomProjectionQuantizer


def test_codes_equal_brute_force_euclidean_nearest_neighbour():
    q = RandomProjectionQuantizer(320, codebook_size=512, codebook_dim=16, num_codebooks=2, seed=3)
    x = torch.randn(4, 60, 320, generator=torch.Generator().manual_seed(0))
    codes = q(x)  # (4, 60, 2)
    for k in range(2):
        z = x.reshape(-1, 320) @ q.projection[k]
        z = z / z.norm(dim=-1, keepdim=True)
        c = q.codebooks[k] / q.codebooks[k].norm(dim=-1, keepdim=True)
        dist = ((z[:, None, :] - c[None, :, :]) ** 2).sum(-1)  # (N, V) Euclidean, brute force
        assert torch.equal(codes[..., k].reshape(-1), dist.argmin(dim=1))


def test_a_frame_gets_the_same_code_alone_in_a_batch_or_among_other_frames():
    """A projection normalised over time (F.normalize's default dim=1 on (B, T, d)) fails this."""
    q = RandomProjectionQuantizer(80, codebook_size=256, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 80, generator=g)
    codes = q(x)
    alone = torch.stack([q(x[b, t].view(1, 1, 80)).view(-1) for b in range(3) for t in range(40)])
    assert torch.equal(codes.view(-1, 1), alone)
    louder = x.clone()
    louder[:, ::2] *= 32.0  # every other frame's scale (a power of 2: exact in fp32) and its neighbours' context
    louder[:, 1::2] = torch.randn(3, 20, 80, generator=g)
    assert torch.equal(q(louder)[:, ::2], codes[:, ::2])  # unit vectors: scale and context do not matter


def test_buffers_are_frozen_seeded_normalised_and_saved():
    a = RandomProjectionQuantizer(320, seed=5)
    b = RandomProjectionQuantizer(320, seed=5)
    c = RandomProjectionQuantizer(320, seed=6)
    assert torch.equal(a.projection, b.projection) and torch.equal(a.codebooks, b.codebooks)
    assert not torch.equal(a.codebooks, c.codebooks)
    assert list(a.parameters()) == []
    assert set(a.state_dict()) == {"projection", "codebooks"}
    torch.testing.assert_close(a.codebooks.norm(dim=-1), torch.ones(1, 8192))
    bound = (6 / (320 + 16)) ** 0.5  # Xavier-uniform
    assert a.projection.abs().max() <= bound and a.projection.abs().max() > 0.95 * bound
    # the codebook is drawn from N(0, 1) before normalising: directions are uniform, so no axis dominates
    assert a.codebooks.mean(dim=(0, 1)).abs().max() < 0.05


def test_chunking_and_layer_norm_option():
    x = torch.randn(2, 300, 320, generator=torch.Generator().manual_seed(2))
    q = RandomProjectionQuantizer(320, codebook_size=1024, seed=1)
    small = RandomProjectionQuantizer(320, codebook_size=1024, seed=1, chunk_frames=7)
    assert torch.equal(q(x), small(x))
    ln = RandomProjectionQuantizer(320, codebook_size=1024, seed=1, input_layer_norm=True)
    shifted = x + 3.0  # LayerNorm removes a per-vector offset; the plain projection does not
    assert torch.equal(ln(shifted), ln(x))
    assert not torch.equal(q(shifted), q(x))


def test_the_code_search_is_exact_fp32_under_autocast_and_tf32(monkeypatch):
    """Near-ties between codes flip in bf16 or TF32, so the targets' search runs with autocast
    off and fp32 matmuls at full precision, whatever the run set (train.precision=bf16 and
    train.tf32 on CUDA); the global matmul precision is put back after."""
    from bestrq import quantizer

    seen, argmax = [], quantizer._argmax_rows

    def spy(scores):
        seen.append((torch.get_float32_matmul_precision(), torch.is_autocast_enabled("cpu"), scores.dtype))
        return argmax(scores)

    monkeypatch.setattr(quantizer, "_argmax_rows", spy)
    q = RandomProjectionQuantizer(80, codebook_size=256, seed=0)
    x = torch.randn(3, 50, 80, generator=torch.Generator().manual_seed(0))
    exact = q(x)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            codes = q(x)
        assert torch.get_float32_matmul_precision() == "medium"  # put back
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(codes, exact)
    assert seen and all(s == ("highest", False, torch.float32) for s in seen), set(seen)
