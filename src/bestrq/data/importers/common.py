"""What the importers share: reading recordings (skipping bad files), cuts, tables' text, held-out ids."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from ..audio import MISSING, length_problem, rate_problem
from ..manifest import ManifestError

log = logging.getLogger("bestrq.data")


AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif")


@dataclass
class ImportReport:
    splits: dict[str, int] = field(default_factory=dict)  # split -> cuts written
    hours: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    files: dict[str, str] = field(default_factory=dict)  # other files to write beside the manifests


def make_cut(rec: Recording, sups: list[SupervisionSegment], start: float = 0.0,
         duration: float | None = None, cut_id: str | None = None) -> MonoCut:
    return MonoCut(id=cut_id or rec.id, start=start, duration=rec.duration if duration is None else duration,
                   channel=rec.channel_ids[0], recording=rec, supervisions=sups)


def read_text(path: Path) -> str:
    """A table's text; a file that is not UTF-8 is a ManifestError naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ManifestError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}): save the table as UTF-8"
                            ) from None


UNUSABLE = "missing, unreadable, empty, truncated or of an implausible sample rate"  # the files skipped


SKIP_WARNINGS = 10  # skipped files named one by one; the rest are counted


def read_recordings(items: Iterable[tuple[str, Path]], report: ImportReport, jobs: int) -> dict[str, Recording]:
    """Recordings from (id, path) pairs, reading only headers (and each file's last sample); the files that
    are missing, unreadable, empty, truncated or of a sample rate outside MIN_RATE..MAX_RATE are skipped."""
    return {rec.id: rec for rec in stream_recordings(items, report, jobs)}


def stream_recordings(items: Iterable[tuple[str, Path]], report: ImportReport, jobs: int,
                       chunk: int = 1024) -> Iterator[Recording]:
    """As :func:`read_recordings`, in the order given, ``chunk`` files at a time: a folder of any
    size is read holding one chunk's recordings."""

    def one(item):
        rec_id, path = item
        if not Path(path).is_file():
            return (str(path), MISSING if not Path(path).exists() else "not a file")
        try:
            rec = Recording.from_file(path, recording_id=rec_id)
        except Exception as e:  # any decoder failure: skip the file
            return (str(path), f"unreadable ({type(e).__name__}: {e})")
        if rec.num_samples == 0:
            return (str(path), "empty audio (0 samples)")
        why = rate_problem(rec.sampling_rate) or length_problem(str(path))
        return (str(path), why) if why else rec

    items = iter(items)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        while batch := list(itertools.islice(items, chunk)):
            for result in pool.map(one, batch):
                if isinstance(result, Recording):
                    yield result
                    continue
                if len(report.skipped) < SKIP_WARNINGS:
                    log.warning("skipping %s: %s", *result)
                report.skipped.append(result)


def from_manifests(recordings: RecordingSet, supervisions: SupervisionSet | None) -> CutSet:
    by_rec: dict[str, list[SupervisionSegment]] = {}
    for sup in supervisions or []:
        by_rec.setdefault(sup.recording_id, []).append(sup)
    return CutSet.from_cuts(make_cut(rec, by_rec.get(rec.id, [])) for rec in recordings)


def held_out(ids: Iterable[str], fraction: float) -> set[str]:
    """``fraction`` of ``ids`` (rounded, at least one of ten or more), chosen by a hash of each id:
    the same ids whatever their order, and adding files moves few of them."""
    ids = sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    n = round(fraction * len(ids))
    if fraction > 0 and len(ids) >= 10:
        n = max(n, 1)
    return set(ids[:n])


def table_files(src: Path, suffix: str) -> list[Path]:
    if src.is_file():
        return [src]
    files = sorted(src.glob(f"*{suffix}"))
    if not files:
        raise ManifestError(f"{src}: no {suffix} manifests found")
    return files


def text_of(cut) -> str | None:
    return cut.supervisions[0].text if cut.supervisions else None
