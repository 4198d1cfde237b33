"""Hidden states of a frozen encoder, extracted once per split and read back by every probe.

    cache/<split>/states.bin    every layer of every frame, frame-major: (total frames, L, D)
    cache/<split>/index.json    the encoder it came from, the shape, and each cut's frame range

The file is memory-mapped, so a probe holds only its current batch in memory and the OS
decides what stays cached. A cache made by another encoder (or with other settings) is not
reused: it is extracted again, as is one whose index and states no longer hold together
(a damaged file), with a warning. Bad audio is skipped and counted, never fatal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.audio import load_mono
from ..data.loader import AudioDataset, collate
from ..files import atomic_path, is_count
from .encoders import Encoder

CACHE_FORMAT = "bestrq-hidden-states/1"
log = logging.getLogger(__name__)
DTYPES = {"float16": np.float16, "float32": np.float32}


def by_duration(items: list, seconds: float, generator: torch.Generator | None = None) -> list[list]:
    """Consecutive batches of items (anything with a ``duration``), each cut where it would exceed
    ``seconds`` of audio; shuffled first with a generator, in the given order without one."""
    order = torch.randperm(len(items), generator=generator).tolist() if generator is not None else range(len(items))
    out, current, total = [], [], 0.0
    for i in order:
        if current and total + items[i].duration > seconds:
            out.append(current)
            current, total = [], 0.0
        current.append(items[i])
        total += items[i].duration
    return out + ([current] if current else [])


def encode_cuts(encoder: Encoder | nn.Module, cuts: list, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of a batch of cuts, on the fly: ((L, B, T, D) float32, (B,) lengths).

    The uncached path (and what the cache stores): one padded forward pass of the encoder.
    An :class:`Encoder` runs without gradient; an objective module (fine-tuning) with it.
    """
    return encode_waves(encoder, [load_mono(c, encoder.sample_rate) for c in cuts], device)


def encode_waves(encoder: Encoder | nn.Module, waves: list[np.ndarray], device: torch.device | str = "cpu"
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


def _fingerprint(encoder: Encoder, cuts: list, dtype: str) -> dict:
    """What makes two extractions the same: the encoder, its weights (or seed), the cuts and the precision."""
    info = encoder.info
    ids = hashlib.sha256("\n".join(sorted(c.id for c in cuts)).encode()).hexdigest()[:16]
    key = {"encoder": encoder.spec, "name": encoder.name, "step": info.get("step"), "seed": info.get("seed"),
           "weights": info.get("weights_id"), "cuts": ids, "dtype": dtype}
    if info.get("precision", "fp32") != "fp32":  # fp32 caches keep the key they were written with
        key["precision"] = info["precision"]
    if info.get("chunk_ms") is not None:  # chunked attention: other states (full-context caches keep their key)
        key["chunk_ms"], key["left_chunks"] = info["chunk_ms"], info.get("left_chunks")
    return key


@dataclass(frozen=True)
class CacheIndex:
    """index.json: what the states were extracted with (``key``: encoder, weights, cuts, dtype),
    their shape (frames, layers, width), each cut's frame range and the cuts left out."""

    key: dict
    shape: tuple[int, int, int]
    ranges: dict[str, tuple[int, int]]
    skipped: list[dict]

    @classmethod
    def from_json(cls, data: object, states_path: Path) -> CacheIndex:
        """The index, once it and the states file beside it hold together; else a ValueError saying why."""
        problem = _index_problem(data, states_path)
        if problem:
            raise ValueError(problem)
        return cls(data["key"], tuple(data["shape"]), {k: (a, b) for k, (a, b) in data["ranges"].items()},
                   data["skipped"])

    def to_json(self) -> dict:
        return {"format": CACHE_FORMAT, "key": self.key, "shape": list(self.shape), "ranges": self.ranges,
                "skipped": self.skipped}


def open_cache(folder: str | os.PathLike, index: object = None) -> HiddenStates:
    """A cache folder's states; a ValueError naming the file if its index or states do not hold together.
    ``index``: its index.json as already read, if it was (else it is read here)."""
    folder = Path(folder)
    index_path = folder / "index.json"
    try:
        found = CacheIndex.from_json(_read_index(index_path) if index is None else index, folder / "states.bin")
    except ValueError as e:
        raise ValueError(f"{index_path}: {e}") from None
    states = np.memmap(folder / "states.bin", dtype=DTYPES[found.key["dtype"]], mode="r", shape=found.shape)
    return HiddenStates(folder, list(found.ranges), found.ranges, states, found.skipped)


def _read_index(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # UnicodeDecodeError too
        raise ValueError(f"not JSON ({e})") from None


def _index_problem(index: object, states_path: Path) -> str | None:
    """What is wrong with a cache index and its states file, or None."""
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        return f"not a {CACHE_FORMAT} index"
    key, shape, ranges = index.get("key"), index.get("shape"), index.get("ranges")
    if not isinstance(key, dict) or key.get("dtype") not in DTYPES:
        return "its key names no dtype"
    if not (isinstance(shape, list) and len(shape) == 3 and all(map(is_count, shape)) and min(shape[1:]) > 0):
        return f"its shape is {shape!r}, not [frames, layers, width]"
    size = shape[0] * shape[1] * shape[2] * np.dtype(DTYPES[key["dtype"]]).itemsize
    have = states_path.stat().st_size if states_path.is_file() else None
    if have != size:
        return f"{states_path.name} holds {have} bytes, not the {size} its shape {shape} gives"
    if not isinstance(ranges, dict):
        return "its ranges are not a mapping of cut ids to frames"
    spans = sorted(tuple(r) if isinstance(r, list) and len(r) == 2 and all(map(is_count, r)) else (-1, -1)
                   for r in ranges.values())
    ends = [0] + [b for _, b in spans]  # extraction writes cut after cut: the spans tile the frames
    if ends[-1] != shape[0] or any(not e == a <= b for (a, b), e in zip(spans, ends)):
        return f"its ranges are not each cut's frames, one after another, to the {shape[0]} frames of its shape"
    skipped = index.get("skipped")
    if not (isinstance(skipped, list) and all(isinstance(s, dict) and isinstance(s.get("cut"), str) for s in skipped)):
        return "its skipped is not a list of the cuts left out"
    return None


def output_frames(encoder: Encoder, cuts: list) -> torch.Tensor:
    """The encoder's output frames for each cut, from the manifest's durations (0: too short for one)."""
    samples = torch.tensor([round(c.duration * encoder.sample_rate) for c in cuts], dtype=torch.int64)
    return encoder.output_lengths(samples) if cuts else samples


def _check_space(folder: Path, need: int) -> None:
    """Refuse, before it fills the disk, a cache larger than the free space beside it."""
    free = shutil.disk_usage(folder).free
    if need > 0.98 * free:
        raise OSError(errno.ENOSPC, f"the hidden-state cache of these {folder.name} cuts needs about "
                                    f"{need / 1e9:.1f} GB and {free / 1e9:.1f} GB are free there: free some, or give "
                                    "--out a larger disk", str(folder))
    if need > 1e9:
        log.info("%s: the hidden-state cache takes about %.1f GB", folder, need / 1e9)


def extract(encoder: Encoder, cuts, folder: str | os.PathLike, *, device: torch.device | str = "cpu",
            batch_seconds: float = 60.0, dtype: str = "float16", progress: bool = True) -> HiddenStates:
    """The hidden states of ``cuts`` under ``folder``: reused when the same encoder made them of the same cuts."""
    folder = Path(folder)
    key = _fingerprint(encoder, cuts, dtype)
    index_path = folder / "index.json"
    if index_path.is_file():
        try:
            found = _read_index(index_path)
            if isinstance(found, dict) and found.get("key") == key:
                cache = open_cache(folder, found)
                if set(cache.ranges) | {s["cut"] for s in cache.skipped} != {c.id for c in cuts}:
                    raise ValueError(f"{index_path}: its cut ids are not those of the cuts it was made of")
                return cache
        except (OSError, ValueError) as e:  # damaged: extract again
            log.warning("%s: the cached states are damaged (%s); extracting them again", folder, e)
    folder.mkdir(parents=True, exist_ok=True)
    batches = by_duration(sorted(cuts, key=lambda c: c.duration), batch_seconds)  # similar lengths: little padding
    ranges: dict[str, tuple[int, int]] = {}
    skipped: list[dict] = []
    offset, shape = 0, None
    dataset = AudioDataset(sample_rate=encoder.sample_rate, min_duration=0.0)  # no crop, any length
    frames = int(output_frames(encoder, cuts).clamp(min=0).sum())
    with atomic_path(folder / "states.bin") as tmp, open(tmp, "wb") as fh:
        for cuts_batch in tqdm(batches, desc=f"extract {folder.name}", unit="batch", disable=not progress):
            batch = dataset[cuts_batch]  # bad audio is skipped and counted: one bad file costs only itself
            skipped += [{"cut": s.cut_id, "file": s.path, "reason": s.reason} for s in batch.skipped]
            if not len(batch):
                continue
            out = encoder.encode(batch.waveforms.to(device), batch.lengths.to(device))
            hidden = torch.stack([h.float() for h in out.hidden_states], dim=2)  # (B, T, L, D)
            hidden = hidden.cpu().numpy().astype(DTYPES[dtype])
            if shape is None:  # the first batch gives the size of a frame: will the whole cache fit?
                _check_space(folder, frames * hidden[0, 0].nbytes)
            shape = hidden.shape[2:]
            for cut_id, h, n in zip(batch.cut_ids, hidden, out.lengths.tolist()):
                fh.write(np.ascontiguousarray(h[:n]).tobytes())
                ranges[cut_id] = (offset, offset + n)
                offset += n
        if shape is None:
            raise ValueError(f"{folder}: no usable audio among {len(cuts)} cuts ({len(skipped)} skipped)")
    index = CacheIndex(key, (offset, *shape), ranges, skipped)
    with atomic_path(index_path) as tmp:
        tmp.write_text(json.dumps(index.to_json()))
    return open_cache(folder)  # read back through the same checks
