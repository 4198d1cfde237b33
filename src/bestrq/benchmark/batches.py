"""The benchmark's batches: clips of a corpus (or noise of speech-like lengths), in random order or
bucketed by length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# lhotse looks for torchaudio once, at import: before any stand-in exists (peers.py)
from ..data.manifest import load_split


@dataclass
class Batch:
    waves: torch.Tensor  # (B, S)
    lengths: torch.Tensor  # (B,)

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / 16000


def make_batches(corpus: Path, n: int, seconds: float, seed: int, bucketed: bool = False
                 ) -> tuple[list[Batch], str]:
    """``n`` batches of about ``seconds`` of audio: demo-corpus clips if there, else noise of speech-like lengths.

    Clips come in random order, so a batch mixes lengths and is often half padding. With
    ``bucketed`` the clips are sorted by length first, as a duration-bucketing sampler would
    group them (``bestrq pretrain`` uses lhotse's), so there is little padding.
    """
    g = torch.Generator().manual_seed(seed)
    clips: list[torch.Tensor] = []
    source = f"random noise clips of 2-10 s (no corpus at {corpus})"
    if (corpus / "cuts_train.jsonl.gz").exists():
        cuts = list(load_split(str(corpus), "train"))
        order = torch.randperm(len(cuts), generator=g).tolist()
        need = n * seconds * 1.2
        for i in order:
            audio = torch.from_numpy(cuts[i].load_audio()[0].copy()).float()
            clips.append(audio[: 10 * 16000])
            if sum(c.numel() for c in clips) / 16000 > need:
                break
        source = f"clips of the corpus at {corpus}"
    if bucketed:
        clips.sort(key=len, reverse=True)  # popped from the end: shortest first
    batches, pending = [], []
    while len(batches) < n:
        if not clips:
            clips = [0.1 * torch.randn(int(16000 * (2 + 8 * torch.rand(1, generator=g).item())), generator=g)
                     for _ in range(200)]
            if bucketed:
                clips.sort(key=len, reverse=True)
        pending.append(clips.pop())
        if sum(c.numel() for c in pending) >= seconds * 16000:
            lengths = torch.tensor([c.numel() for c in pending])
            waves = torch.zeros(len(pending), int(lengths.max()))
            for j, c in enumerate(pending):
                waves[j, : c.numel()] = c
            batches.append(Batch(waves, lengths))
            pending = []
    return batches, source
