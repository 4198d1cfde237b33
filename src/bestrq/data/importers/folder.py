"""A folder of audio, unlabelled (pre-training data): long files cut into windows; train and dev."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from lhotse import CutSet, MonoCut

from ..manifest import ManifestError
from .common import (
    AUDIO_EXTENSIONS,
    ImportReport,
    held_out,
    make_cut,
    stream_recordings,
)

log = logging.getLogger("bestrq.data")


def from_folder(src: Path, report: ImportReport, jobs: int = 4, max_duration: float = 30.0,
                dev_fraction: float = 0.02, **_) -> dict[str, CutSet]:
    if not 0 <= dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    if not max_duration >= 0:
        raise ValueError(f"max_duration must be >= 0 seconds (0: never cut), got {max_duration}")
    # the paths and ids of every file (strings), never their recordings or cuts all at once: each
    # split is read and written file by file (prepare() writes what these generators yield)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ManifestError(f"{src}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    ids = [str(p.relative_to(src).with_suffix("")) for p in files]
    dev = held_out(ids, dev_fraction)  # whole files, so that no recording is on both sides

    def split_cuts(in_dev: bool) -> Iterator[MonoCut]:
        items = ((i, p) for i, p in zip(ids, files) if (i in dev) == in_dev)
        for rec in stream_recordings(items, report, jobs):
            cut = make_cut(rec, [])
            yield from (cut.cut_into_windows(duration=max_duration) if max_duration else [cut])

    return {"train": split_cuts(False), "dev": split_cuts(True)}
