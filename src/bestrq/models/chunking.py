"""Chunked attention for streaming encoders (dynamic chunk training, Zhang et al. 2020, as
SpeechBrain's streaming Conformer uses it).

Frames are cut into chunks of ``frames`` encoder frames (from the first frame of the
utterance). A frame attends to every frame of its own chunk and of the ``left`` chunks before
it (all earlier chunks with ``left`` None), never to a later chunk: its output waits at most
for the end of its chunk. The depthwise convolution only looks left, and the stack front-end
and global feature normalisation are frame by frame, so a chunk's outputs depend on nothing
after it; chunk-by-chunk inference (:mod:`bestrq.inference.streaming`) gives the same outputs.

Training draws a chunking per batch (or per utterance) from a :class:`ChunkSpec`: with
probability ``prob`` chunked attention, of a size drawn from ``frames``; then with probability
``left_prob`` a left context drawn from ``left``. The rest of the batches see full context, so
one model serves both uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Chunking:
    frames: int  # encoder frames per chunk
    left: int | None = None  # chunks of left context; None: every earlier chunk

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.left is not None and self.left < 0):
            raise ValueError(f"a chunking needs frames >= 1 and left >= 0 (or None), got {self}")

    def allowed(self, t: int, device: torch.device) -> torch.Tensor:
        """(T, T) bool: query i may attend to key j."""
        chunk = torch.arange(t, device=device) // self.frames
        behind = chunk[:, None] - chunk[None, :]  # how many chunks the key is behind the query
        ok = behind >= 0
        return ok if self.left is None else ok & (behind <= self.left)


def attention_mask(chunking: Chunking | list[Chunking | None] | None, pad: torch.Tensor) -> torch.Tensor | None:
    """(1 or B, 1, T, T) bool, True where a query may attend to a key, for one chunking of the batch or one
    per utterance (None: full context); None when no row is chunked. Padding queries may attend anywhere:
    their outputs are discarded, and a row with no key at all would give NaN."""
    b, t = pad.shape
    if chunking is None or (isinstance(chunking, list) and all(c is None for c in chunking)):
        return None
    if isinstance(chunking, Chunking):
        allowed = chunking.allowed(t, pad.device)[None]  # (1, T, T)
    else:
        if len(chunking) != b:
            raise ValueError(f"{len(chunking)} chunkings for a batch of {b}")
        full = torch.ones(t, t, dtype=torch.bool, device=pad.device)
        allowed = torch.stack([full if c is None else c.allowed(t, pad.device) for c in chunking])  # (B, T, T)
    return (allowed | pad[:, :, None])[:, None]  # (1 or B, 1, T, T)


@dataclass(frozen=True)
class ChunkSpec:
    """The distribution of chunkings that training draws from (the ``encoder.*`` streaming settings)."""

    prob: float
    frames: tuple[int, int]
    left_prob: float
    left: tuple[int, int]
    per: str = "batch"

    @classmethod
    def of(cls, encoder_cfg) -> ChunkSpec | None:
        e = encoder_cfg
        if not e.streaming:
            return None
        return cls(e.chunk_prob, tuple(e.chunk_frames), e.left_chunks_prob, tuple(e.left_chunks), e.chunk_per)

    def draw(self, rng: random.Random) -> Chunking | None:
        """One chunking, or None for full context."""
        if rng.random() >= self.prob:
            return None
        frames = rng.randint(*self.frames)
        left = rng.randint(*self.left) if rng.random() < self.left_prob else None
        return Chunking(frames, left)

    def draw_batch(self, rng: random.Random, batch: int) -> Chunking | list[Chunking | None] | None:
        return self.draw(rng) if self.per == "batch" else [self.draw(rng) for _ in range(batch)]

    def draw_for_step(self, generator: torch.Generator | None, batch: int
                      ) -> Chunking | list[Chunking | None] | None:
        """A training batch's chunking, drawn on the host from the seed of the step's ``generator`` (no
        device sync; a resume draws it again), or from torch's global generator without one."""
        seed = generator.initial_seed() if generator is not None else int(torch.randint(1 << 62, ()))
        return self.draw_batch(random.Random(seed), batch)
