"""Streaming encoders: chunked attention hides the future, and training draws chunkings reproducibly."""

from __future__ import annotations

import random

import pytest
import torch

from bestrq.config import ConfigError, load_config
from bestrq.models.chunking import Chunking, ChunkSpec, attention_mask
from bestrq.objectives import build_model

SMALL = ["encoder.d_model=32", "encoder.num_layers=2", "encoder.num_heads=2", "encoder.ffn_dim=64",
         "quantizer.codebook_size=64"]


def _model(*extra: str, train_batches: int = 1):
    cfg = load_config("bestrq_tiny_streaming", [*SMALL, *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    for i in range(train_batches):  # global feature statistics, from a batch
        model(0.1 * torch.randn(2, 32000), torch.tensor([32000, 24000]), torch.Generator().manual_seed(i), 0)
    return model.eval()


def test_a_chunk_sees_its_own_chunk_and_the_left_ones_only():
    allowed = Chunking(2, left=1).allowed(6, torch.device("cpu")).int()
    assert allowed.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
                                [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert Chunking(4).allowed(6, torch.device("cpu")).int().tolist()[5] == [1, 1, 1, 1, 1, 1]
    # a padded query may attend anywhere (no empty row, hence no NaN); valid queries keep their chunks
    pad = torch.tensor([[False, False, True, True, True, True]])
    mask = attention_mask(Chunking(1, left=0), pad)[0, 0]
    assert mask[:2].int().tolist() == [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]] and mask[2:].all()


@pytest.mark.parametrize("position", ["relative_key", "rotary"])
def test_chunked_attention_hides_everything_after_a_frames_chunk(position):
    model = _model(f"encoder.position={position}")
    wave = 0.1 * torch.randn(1, 40000, generator=torch.Generator().manual_seed(1))
    changed = wave.clone()
    first_unseen = 640 * 8 + 240  # the first sample of frame 8's fbank frames (frames 0-7: chunks 0 and 1)
    changed[:, first_unseen:] = 0.1 * torch.randn(1, 40000 - first_unseen)
    lengths = torch.tensor([40000])
    a = model.encode(wave, lengths, Chunking(4, left=1)).hidden_states
    b = model.encode(changed, lengths, Chunking(4, left=1)).hidden_states
    for x, y in zip(a, b):
        assert torch.equal(x[:, :8], y[:, :8])  # chunks 0 and 1 wait for nothing after them
        assert not torch.allclose(x[:, 8:12], y[:, 8:12])  # chunk 2 sees the change
    full = model.encode(changed, lengths).hidden_states
    assert not torch.allclose(full[-1][:, :8], b[-1][:, :8])  # full context does look ahead


def test_a_batch_with_chunked_attention_equals_each_utterance_alone():
    model = _model()
    gen = torch.Generator().manual_seed(2)
    clips = [0.1 * torch.randn(n, generator=gen) for n in (40000, 23000, 9000)]
    batch = torch.zeros(3, 40000)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = c
    lengths = torch.tensor([len(c) for c in clips])
    chunkings = [Chunking(3, left=2), None, Chunking(5)]  # one per utterance
    together = model.encode(batch, lengths, chunkings)
    for i, c in enumerate(clips):
        alone = model.encode(c[None], lengths[i : i + 1], chunkings[i])
        t = int(alone.lengths[0])
        for x, y in zip(together.hidden_states, alone.hidden_states):
            assert torch.allclose(x[i, :t], y[0], atol=1e-5)
            assert torch.isfinite(x).all()


def test_training_draws_its_chunkings_from_the_step_seed(monkeypatch):
    spec = ChunkSpec(0.6, (8, 32), 0.75, (2, 32), "batch")
    draws = [spec.draw(random.Random(seed)) for seed in range(400)]
    chunked = [d for d in draws if d is not None]
    assert 0.5 < len(chunked) / 400 < 0.7 and 0.65 < sum(d.left is not None for d in chunked) / len(chunked) < 0.85
    assert {d.frames for d in chunked} <= set(range(8, 33)) and min(d.frames for d in chunked) == 8
    assert draws == [spec.draw(random.Random(seed)) for seed in range(400)]  # a resume draws them again

    model = _model("encoder.chunk_prob=1", "encoder.chunk_per=utterance").train()
    seen = []
    forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda *a, chunking=None: seen.append(chunking) or forward(*a))
    for seed in (5, 5, 6):
        model(0.1 * torch.randn(3, 16000), torch.tensor([16000] * 3), torch.Generator().manual_seed(seed), 0)
    assert all(isinstance(c, list) and len(c) == 3 and all(isinstance(x, Chunking) for x in c) for c in seen)
    assert seen[0] == seen[1] != seen[2]
    model.eval()
    model.encode(0.1 * torch.randn(1, 16000), torch.tensor([16000]))
    assert seen[-1] is None  # inference: full context unless asked


@pytest.mark.parametrize("preset, setting, message", [
    ("bestrq_tiny_streaming", "features.normalization=utterance", "needs features.normalization global or none"),
    ("bestrq_tiny_streaming", "encoder.frontend=conv2d", "needs encoder.frontend stack"),
    ("bestrq_tiny_streaming", "encoder.kind=transformer", "needs encoder.kind conformer"),
    ("bestrq_tiny_streaming", "encoder.chunk_frames=[32,8]", "must be \\[smallest, largest\\]"),
    ("wav2vec2_tiny", "encoder.streaming=true", "needs encoder.kind conformer"),
    ("wav2vec2_tiny", "encoder.streaming=true encoder.kind=conformer", "needs wav2vec2.conv_norm layer"),
    ("wav2vec2_fbank_tiny", "encoder.streaming=true encoder.kind=conformer",
     "needs features.normalization global or none"),
])
def test_a_streaming_config_that_would_look_ahead_is_refused(preset, setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset, setting.split())
