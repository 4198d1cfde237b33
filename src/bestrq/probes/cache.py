"""Hidden states of a frozen encoder, extracted once per split and read back by every probe.

    cache/<split>/states.bin    every layer of every frame, frame-major: (total frames, L, D)
    cache/<split>/index.json    the encoder it came from, the shape, and each cut's frame range

The file is memory-mapped, so a probe holds only its current batch in memory and the OS
decides what stays cached. A cache made by another encoder (or with other settings) is not
reused: it is extracted again. Bad audio is skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.audio import BadAudio, load_mono
from ..data.loader import collate
from .encoders import Encoder

log = logging.getLogger(__name__)
CACHE_FORMAT = "bestrq-hidden-states/1"
DTYPES = {"float16": np.float16, "float32": np.float32}


def encode_cuts(encoder: Encoder, cuts: list, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of a batch of cuts, on the fly: ((L, B, T, D) float32, (B,) lengths).

    The uncached path (and what the cache stores): one padded forward pass of the encoder.
    """
    return encode_waves(encoder, [load_mono(c, encoder.sample_rate) for c in cuts], device)


def encode_waves(encoder: Encoder, waves: list[np.ndarray], device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    waveforms, lengths = collate(waves)
    out = encoder.encode(waveforms.to(device), lengths.to(device))
    return torch.stack([h.float() for h in out.hidden_states]), out.lengths.cpu()


@dataclass
class HiddenStates:
    """One split's cached states; ``batch`` returns the same layout as :func:`encode_cuts`."""

    folder: Path
    ids: list[str]
    ranges: dict[str, tuple[int, int]]
    states: np.ndarray  # (total, L, D) memmap
    skipped: list[dict]

    @property
    def num_layers(self) -> int:
        return self.states.shape[1]

    @property
    def dim(self) -> int:
        return self.states.shape[2]

    def frame_rate(self, durations: dict[str, float]) -> float:
        """Frames per second of audio, over the cuts of ``durations`` found here."""
        frames = sum(b - a for i, (a, b) in self.ranges.items() if i in durations)
        seconds = sum(d for i, d in durations.items() if i in self.ranges)
        return frames / max(seconds, 1e-9)

    def __contains__(self, cut_id: str) -> bool:
        return cut_id in self.ranges

    def batch(self, cut_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        spans = [self.ranges[i] for i in cut_ids]
        lengths = torch.tensor([b - a for a, b in spans], dtype=torch.int64)
        out = torch.zeros(self.num_layers, len(spans), int(lengths.max()), self.dim)
        for j, (a, b) in enumerate(spans):
            out[:, j, : b - a] = torch.from_numpy(np.array(self.states[a:b], dtype=np.float32)).transpose(0, 1)
        return out, lengths


def _fingerprint(encoder: Encoder, dtype: str) -> dict:
    """What makes two extractions the same: the encoder, its weights (or seed) and the stored precision."""
    info = encoder.info
    return {"encoder": encoder.spec, "name": encoder.name, "step": info.get("step"), "seed": info.get("seed"),
            "weights": info.get("weights_id"), "dtype": dtype}


def open_cache(folder: str | os.PathLike) -> HiddenStates:
    folder = Path(folder)
    index = json.loads((folder / "index.json").read_text())
    n, num_layers, dim = index["shape"]
    states = np.memmap(folder / "states.bin", dtype=DTYPES[index["key"]["dtype"]], mode="r",
                       shape=(n, num_layers, dim))
    ranges = {k: (int(a), int(b)) for k, (a, b) in index["ranges"].items()}
    return HiddenStates(folder, list(ranges), ranges, states, index.get("skipped", []))


def extract(encoder: Encoder, cuts, folder: str | os.PathLike, *, device: torch.device | str = "cpu",
            batch_seconds: float = 60.0, dtype: str = "float16", progress: bool = True) -> HiddenStates:
    """The split's hidden states under ``folder``: reused when the same encoder made them."""
    folder = Path(folder)
    key = _fingerprint(encoder, dtype)
    index_path = folder / "index.json"
    if index_path.is_file():
        try:
            if json.loads(index_path.read_text()).get("key") == key:
                return open_cache(folder)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: extract again
    folder.mkdir(parents=True, exist_ok=True)
    cuts = sorted(cuts, key=lambda c: c.duration)  # similar lengths together: little padding
    batches, current, total = [], [], 0.0
    for cut in cuts:
        if current and total + cut.duration > batch_seconds:
            batches.append(current)
            current, total = [], 0.0
        current.append(cut)
        total += cut.duration
    if current:
        batches.append(current)

    ranges: dict[str, tuple[int, int]] = {}
    skipped: list[dict] = []
    offset, shape = 0, None
    tmp = folder / f".states.bin.{os.getpid()}"
    with open(tmp, "wb") as fh:
        for batch in tqdm(batches, desc=f"extract {folder.name}", unit="batch", disable=not progress):
            good, waves = [], []
            for cut in batch:
                try:
                    waves.append(load_mono(cut, encoder.sample_rate))
                    good.append(cut)
                except BadAudio as e:  # skipped and counted: one bad file costs only itself
                    log.warning("skipping %s (cut %s): %s", e.path, cut.id, e.reason)
                    skipped.append({"cut": cut.id, "file": e.path, "reason": e.reason})
            if not good:
                continue
            hidden, lengths = encode_waves(encoder, waves, device)  # (L, B, T, D)
            hidden = hidden.transpose(0, 1).transpose(1, 2).cpu().numpy().astype(DTYPES[dtype])  # (B, T, L, D)
            shape = hidden.shape[2:]
            for cut, h, n in zip(good, hidden, lengths.tolist()):
                fh.write(np.ascontiguousarray(h[:n]).tobytes())
                ranges[cut.id] = (offset, offset + n)
                offset += n
    if shape is None:
        raise ValueError(f"{folder}: no usable audio among {len(cuts)} cuts ({len(skipped)} skipped)")
    os.replace(tmp, folder / "states.bin")
    index = {"format": CACHE_FORMAT, "key": key, "shape": [offset, *shape], "ranges": ranges, "skipped": skipped}
    tmp_index = folder / f".index.json.{os.getpid()}"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, index_path)
    return open_cache(folder)
