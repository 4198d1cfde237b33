"""Batches of padded waveforms for training, by total duration, resumable exactly.

The sampler is lhotse's DynamicBucketingSampler (cuts of similar duration share a batch,
each batch holds at most ``max_batch_duration`` seconds of audio, every rank gets its own
disjoint batches); collation is separate, in :class:`AudioDataset`, which receives a
whole batch of cuts, so that padding is decided once per batch, not per item. :class:`AudioLoader` ties them together across
epochs and counts the batches it has handed out, so its ``state_dict`` is exact whatever
the number of prefetching workers.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from lhotse.utils import fastcopy

from .audio import SAMPLE_RATE, BadAudio, load_mono

log = logging.getLogger("bestrq.data")


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """In a loader worker: leave SIGTERM to the trainer, and be killed as soon as the process that
    forked it dies (Linux).

    A scheduler (or the end of a session) sends SIGTERM to every process of a job: a worker killed
    by it made the trainer fail at its next batch ("DataLoader worker ... is killed by signal"),
    before the checkpoint its own SIGTERM handler was about to save. The trainer stops its workers
    itself. A worker otherwise notices its trainer is gone only at its next status check, seconds
    later, and holds the trainer's memory and open files until then."""
    import ctypes
    import signal
    import sys

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the worker's own status check remains
        return
    if os.getppid() != parent:  # the trainer died before the line above: nothing will signal it now
        os._exit(0)


@dataclass
class Skipped:
    cut_id: str
    path: str
    reason: str


@dataclass
class AudioBatch:
    waveforms: torch.Tensor  # (B, S) float32, zero-padded on the right
    lengths: torch.Tensor  # (B,) int64, valid samples per row
    cut_ids: list[str]
    skipped: list[Skipped] = field(default_factory=list)  # bad items left out of this batch

    def __len__(self) -> int:
        return len(self.cut_ids)

    def pin_memory(self) -> AudioBatch:
        """The batch in page-locked memory (the DataLoader calls this with ``pin_memory``), so that
        its copy to a GPU with ``non_blocking=True`` overlaps the step under way."""
        return replace(self, waveforms=self.waveforms.pin_memory(), lengths=self.lengths.pin_memory())


def collate(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (S,) arrays into (B, S) float32 and their (B,) int64 lengths."""
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.int64)
    out = torch.zeros(len(waves), int(lengths.max()) if waves else 0, dtype=torch.float32)
    for i, w in enumerate(waves):
        out[i, : w.shape[0]] = torch.from_numpy(w)
    return out, lengths


class AudioDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one batch) to an :class:`AudioBatch`.

    Clips longer than ``max_duration`` are randomly cropped; the crop depends only on
    (seed, epoch, cut id), so it is the same in every worker and after a resume. Bad
    audio (unreadable, empty, non-finite, shorter than ``min_duration``) is left out with
    a warning naming the file, and listed in ``AudioBatch.skipped``.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, max_duration: float | None = None,
                 min_duration: float = 0.1, seed: int = 0) -> None:
        self.sample_rate = sample_rate
        self.max_duration = max_duration
        self.min_samples = max(1, int(min_duration * sample_rate))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _crop(self, cut):
        if self.max_duration is None or cut.duration <= self.max_duration:
            return cut
        rng = random.Random(f"{self.seed}/{self.epoch}/{cut.id}")
        offset = rng.uniform(0.0, cut.duration - self.max_duration)
        return cut.truncate(offset=offset, duration=self.max_duration, preserve_id=True)

    def __getitem__(self, cuts: CutSet) -> AudioBatch:
        waves, ids, skipped = [], [], []
        for cut in cuts:
            try:
                waves.append(load_mono(self._crop(cut), self.sample_rate, self.min_samples))
                ids.append(cut.id)
            except BadAudio as e:
                log.warning("skipping %s (cut %s): %s", e.path, cut.id, e.reason)
                skipped.append(Skipped(cut.id, e.path, e.reason))
        waveforms, lengths = collate(waves)
        return AudioBatch(waveforms, lengths, ids, skipped)


WHOLE = "bestrq_whole_duration"  # in the custom field of a cut the sampler sees shortened
BINS_FROM = 10_000  # cuts read to set the duration buckets' edges (lhotse's default)


class AudioLoader:
    """Duration-bucketed batches over epochs for one rank; ``state_dict`` resumes exactly.

    Iterating yields AudioBatch objects forever (epoch after epoch); ``epoch`` and
    ``position`` (batches handed out in this epoch) are the state. ``cuts`` may be lazy
    (:func:`~bestrq.data.manifest.open_split`): the sampler then reads them as it goes, a
    buffer at a time, and nothing here iterates them whole. Cuts shorter than ``min_duration``
    are left out as they are read, and counted: at the end of an epoch rank 0 says how many.
    ``identity`` names the cuts for a resume (a position means nothing in another split); by
    default it is a hash of every cut's id and duration, which reads them all.

    A sharded split (at least as many shards as processes) is read by shard: in each epoch every
    rank reads its own shards, in an order drawn from (seed, epoch), and samples them alone. The
    ranks' epochs then hold different numbers of batches; each rank goes on to its next epoch
    when its own ends. With fewer shards than processes, every rank reads them all and takes
    its share of the batches, as for a plain split.
    """

    def __init__(self, cuts: CutSet, dataset: AudioDataset, *, max_batch_duration: float,
                 num_buckets: int = 10, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, drop_last: bool = True, pin_memory: bool = False,
                 min_duration: float = 0.0, identity: str | None = None, name: str = "cuts",
                 too_short: str = "") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.cuts = cuts
        self.dataset = dataset
        self.max_batch_duration = max_batch_duration
        self.num_buckets = num_buckets
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.min_duration = min_duration
        self.name = name
        self.too_short = too_short or f"{min_duration:g}s"
        self.epoch = 0
        self.position = 0
        self._told_short = False
        if identity is None:
            identity = hashlib.sha1("\n".join(f"{c.id} {c.duration}" for c in cuts).encode()).hexdigest()
        self.fingerprint = hashlib.sha1(f"{identity} {min_duration} {dataset.max_duration}".encode()).hexdigest()[:16]

    def _rank_cuts(self, epoch: int) -> tuple[CutSet, int, int]:
        """(the cuts this rank's sampler reads in ``epoch``, the sampler's world size and rank): this
        rank's own shards alone, or every cut, shared out by the sampler."""
        data = self.cuts.data
        own = data.for_rank(self.rank, self.world_size, epoch, self.seed if self.shuffle else None) \
            if hasattr(data, "for_rank") else None
        return (self.cuts, self.world_size, self.rank) if own is None else (CutSet(own), 1, 0)

    def usable_cuts(self, counts: list[int] | None = None, epoch: int | None = None) -> CutSet:
        """The cuts long enough to train on, as this rank's sampler sees them in ``epoch`` (default: the
        current one): a clip longer than the dataset's max_duration counts as max_duration, to which it is
        cropped, so that batches are packed by the audio they will hold (:meth:`epoch_batches` gives the
        dataset the whole clip back). ``counts``: [cuts read, cuts left out as too short], added to as the
        cuts are read."""
        shortest, cap = self.min_duration, self.dataset.max_duration

        def keep(cut) -> bool:
            if counts is not None:
                counts[0] += 1
                counts[1] += cut.duration < shortest
            return cut.duration >= shortest

        def shorten(cut):  # the sampler runs in this process: a closure is fine (no pickling)
            if cut.duration <= cap:
                return cut
            return fastcopy(cut, duration=cap, custom={**(cut.custom or {}), WHOLE: cut.duration})

        usable = self._rank_cuts(self.epoch if epoch is None else epoch)[0].filter(keep)
        return usable if cap is None else usable.map(shorten)

    @staticmethod
    def _whole(cut):
        if not cut.custom or WHOLE not in cut.custom:
            return cut
        custom = {k: v for k, v in cut.custom.items() if k != WHOLE}
        return fastcopy(cut, duration=cut.custom[WHOLE], custom=custom or None)

    def _sampler(self, epoch: int, counts: list[int] | None = None) -> DynamicBucketingSampler | DynamicCutSampler:
        _, world_size, rank = self._rank_cuts(epoch)
        common = {"max_duration": self.max_batch_duration, "shuffle": self.shuffle, "drop_last": self.drop_last,
                  "seed": self.seed, "world_size": world_size, "rank": rank}
        cuts = self.usable_cuts(counts, epoch)  # read once, by the sampler: the counts are the epoch's
        first = list(itertools.islice(self.usable_cuts(epoch=epoch), BINS_FROM))  # the buckets' edges, as lhotse finds them
        with warnings.catch_warnings():  # a small split read into memory, on purpose
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet")
            if len(first) < self.num_buckets:  # too few cuts to bucket
                sampler = DynamicCutSampler(cuts, **common)
            else:
                bins = estimate_duration_buckets(first, num_buckets=self.num_buckets)
                sampler = DynamicBucketingSampler(cuts, duration_bins=bins, **common)
        sampler.set_epoch(epoch)
        return sampler

    def epoch_batches(self, counts: list[int] | None = None) -> Iterator[CutSet]:
        """The cut batches of the current epoch for this rank, from ``position`` on."""
        # a generator driving the sampler with next() alone: lhotse's samplers are their own
        # iterators and restart whenever iter() is called on them (by the DataLoader, by
        # `for` or `yield from`), which would undo the fast-forward
        def batches(sampler: DynamicBucketingSampler | DynamicCutSampler, skip: int) -> Iterator[CutSet]:
            it = iter(sampler)
            for _ in range(skip):  # fast-forward: metadata only, no audio is read
                if next(it, None) is None:
                    return
            while (batch := next(it, None)) is not None:  # the whole clips, for the dataset's random crop
                yield CutSet.from_cuts(self._whole(c) for c in batch)

        return batches(self._sampler(self.epoch, counts), self.position)

    def _tell_short(self, counts: list[int]) -> None:
        if counts[1] and self.rank == 0 and not self._told_short:
            log.warning("%s: left out %d of %d cuts shorter than %s", self.name, counts[1], counts[0], self.too_short)
            self._told_short = True

    def __iter__(self) -> Iterator[AudioBatch]:
        while True:
            self.dataset.set_epoch(self.epoch)
            counts = [0, 0]  # the whole epoch's, a resumed one's too: the fast-forward reads its start
            loader = torch.utils.data.DataLoader(
                self.dataset, sampler=self.epoch_batches(counts), batch_size=None,
                num_workers=self.num_workers, persistent_workers=False, pin_memory=self.pin_memory,
                # its own generator: a DataLoader otherwise draws its worker seed from the global
                # RNG, which the trainer restores on resume (dropout) and must not share
                generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch),
                worker_init_fn=functools.partial(die_with_parent, os.getpid()),
            )
            yielded, usable, whole_epoch, example = 0, 0, self.position == 0, None
            for batch in loader:
                self.position += 1
                yielded += 1
                usable += len(batch) > 0
                example = example or next(iter(batch.skipped), None)
                yield batch
            self._tell_short(counts)
            if whole_epoch and yielded and not usable:  # every clip bad: another epoch would only repeat it
                raise ValueError(f"no usable audio in a whole epoch of {counts[0] - counts[1]} cuts on rank "
                                 f"{self.rank}: every clip was skipped, e.g. {example.path}: "
                                 f"{example.reason.splitlines()[0]}")
            # nothing at all this epoch, not merely a resumed one at its end
            if not yielded and next(iter(self._sampler(self.epoch)), None) is None:
                kept = list(self.usable_cuts())  # this split fills no batch: it is small
                if self.drop_last:  # too little audio for one full batch: keep the partial ones, from now on
                    log.warning("%d cuts (%.0f s of audio) fill no whole batch of max_batch_duration=%gs on "
                                "rank %d of %d: using partial batches too", len(kept),
                                sum(c.duration for c in kept), self.max_batch_duration, self.rank,
                                self.world_size)
                    self.drop_last = False
                    continue
                raise ValueError(f"no batch in an epoch: {len(kept)} cuts for rank {self.rank} of "
                                 f"{self.world_size} processes; a split needs at least one cut per process")
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "world_size": self.world_size, "rank": self.rank, "cuts": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data loader: saved {key}={state[key]}, "
                                 f"now {getattr(self, key)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
