"""Writing a split as shards, in lhotse's Shar layout, for corpora read from network storage.

A sharded split is a folder ``{split}/`` of shards ``cuts.000000.jsonl.gz`` (the cuts, labels
included) and ``recording.000000.tar`` (each cut's audio as ``{cut id}.flac``, followed by
``{cut id}.json``, the recording's description), as lhotse's ``CutSet.to_shar`` writes them and
``CutSet.from_shar`` reads them. Each cut's audio is what training reads of it: every channel
averaged, at the recording's own rate, as 16-bit FLAC (a window of a long file holds just the
window); its recording is named after the cut. Training reads a shard's cuts in sequence and
each cut's audio from the tar by offset (:func:`bestrq.data.audio.shard_audio`); with at
least as many shards as processes, each process reads its own shards.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf
from lhotse import AudioSource, fastcopy

from .audio import SHARD, BadAudio, audio_source, decode
from .manifest import CUTS, RECORDINGS, SHARD_AUDIO, SHARD_CUTS, SUPERVISIONS, ManifestError, is_sharded

DEFAULT_SHARD_SIZE = 1000  # cuts per shard: 30-s windows make about 0.5 GB of FLAC per tar


def _encode(cut) -> tuple[object, bytes, bytes] | BadAudio:
    """(the cut as its shard describes it, its FLAC, its recording's JSON), or why its audio is unusable."""
    try:
        audio, rate = decode(cut)
        flac = io.BytesIO()
        sf.write(flac, audio, rate, format="FLAC", subtype="PCM_16")
    except BadAudio as e:
        return e
    except Exception as e:  # noqa: BLE001 - the encoder refuses what it cannot store (e.g. a rate above FLAC's)
        return BadAudio(audio_source(cut), f"cannot be stored as FLAC ({type(e).__name__}: {e})")
    duration = audio.shape[0] / rate
    recording = fastcopy(cut.recording, id=cut.id, sources=[AudioSource(type=SHARD, channels=[0], source="")],
                         channel_ids=[0], num_samples=audio.shape[0], duration=duration, transforms=None)
    supervisions = [fastcopy(s, channel=0, recording_id=cut.id) for s in cut.supervisions]
    shard_cut = fastcopy(cut, start=0, duration=duration, channel=0, recording=recording, supervisions=supervisions)
    return shard_cut, flac.getvalue(), (json.dumps(recording.to_dict()) + "\n").encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _encoded(cuts: Iterable, jobs: int) -> Iterator[tuple[object, bytes, bytes] | BadAudio]:
    """_encode of every cut, in order, ``jobs`` at a time; a bounded number of cuts in flight."""
    cuts = iter(cuts)
    with ThreadPoolExecutor(max(jobs, 1)) as pool:  # decoding and encoding release the GIL
        while chunk := list(itertools.islice(cuts, 16 * max(jobs, 1))):
            yield from pool.map(_encode, chunk)


def write_shards(folder: str | os.PathLike, split: str, cuts: Iterable, shard_size: int = DEFAULT_SHARD_SIZE,
                 jobs: int = 1, skipped: list[tuple[str, str]] | None = None, progress=None) -> tuple[int, float]:
    """Write one split as shards of ``shard_size`` cuts into ``folder/split/``, holding a few cuts at a
    time; returns (cuts written, seconds of audio). Unusable audio is left out and its (path, reason)
    appended to ``skipped``. The shards are written beside the folder and replace it only once all are
    whole; an earlier plain manifest of the split is then removed. ``progress``: called with each cut's
    duration."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    folder = Path(folder)
    target, partial = folder / split, folder / f".{split}.partial"
    if target.exists() and not (target.is_dir() and (is_sharded(target) or not any(target.iterdir()))):
        raise ManifestError(f"{target}: exists and is not a sharded split; write the shards into another folder")
    shutil.rmtree(partial, ignore_errors=True)  # what a crash left
    partial.mkdir(parents=True)
    n, seconds = 0, 0.0
    try:
        with contextlib.ExitStack() as shard:  # the current shard's two files: closed when it is full, and at the end
            for item in _encoded(cuts, jobs):
                if isinstance(item, BadAudio):
                    if skipped is not None:
                        skipped.append((item.path, item.reason))
                    continue
                cut, flac, recording = item
                if n % shard_size == 0:
                    shard.close()
                    cut_file = shard.enter_context(
                        gzip.open(partial / SHARD_CUTS.format(n // shard_size), "wt", encoding="utf-8"))
                    tar = shard.enter_context(tarfile.open(partial / SHARD_AUDIO.format(n // shard_size), "w"))
                _add(tar, f"{cut.id}.flac", flac)
                _add(tar, f"{cut.id}.json", recording)
                cut_file.write(json.dumps(cut.to_dict(), ensure_ascii=False) + "\n")
                n += 1
                seconds += cut.duration
                if progress is not None:
                    progress(cut.duration)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not n:
        shutil.rmtree(partial)
        return 0, 0.0
    old = folder / f".{split}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    for name in (CUTS, RECORDINGS, SUPERVISIONS):  # the plain form of the split, now replaced
        (folder / name.format(split=split)).unlink(missing_ok=True)
    return n, seconds
