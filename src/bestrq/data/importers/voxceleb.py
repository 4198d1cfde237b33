"""VoxCeleb1: the verification test speakers as split ``sv`` with its trials, the others by ``iden_split.txt``."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from lhotse import CutSet, MonoCut, SupervisionSegment

from ..manifest import ManifestError
from .common import (
    ImportReport,
    make_cut,
    read_recordings,
    read_text,
)

log = logging.getLogger("bestrq.data")


def _voxceleb_id(path: str | Path) -> str:
    """``id10270/x6uYqmx31kE/00001.wav`` (or a longer path ending so) -> ``id10270-x6uYqmx31kE-00001``."""
    parts = Path(path).with_suffix("").parts[-3:]
    return "-".join(parts)


def from_voxceleb1(src: Path, report: ImportReport, jobs: int = 4, **_) -> dict[str, CutSet]:
    files = {_voxceleb_id(p): p for p in sorted(src.rglob("*.wav")) if re.fullmatch(r"id\d+", p.parent.parent.name)}
    if not files:
        raise ManifestError(f"{src}: no VoxCeleb1 audio (expected .../wav/id10001/VIDEO/00001.wav)")
    trial_file = next((p for name in ("veri_test2.txt", "veri_test.txt") for p in sorted(src.rglob(name))), None)
    if trial_file is None:
        raise ManifestError(f"{src}: no trial list (veri_test2.txt or veri_test.txt) for speaker verification")
    trials = []
    for lineno, line in enumerate(read_text(trial_file).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ManifestError(f"{trial_file}:{lineno}: expected '1|0 id/video/n.wav id/video/n.wav'")
        trials.append((fields[0], _voxceleb_id(fields[1]), _voxceleb_id(fields[2])))
    sv_ids = {i for _, a, b in trials for i in (a, b)}
    sv_speakers = {i.split("-")[0] for i in sv_ids}
    split_of = {}
    iden = next(iter(sorted(src.rglob("iden_split.txt"))), None)
    if iden is not None:
        names = {"1": "train", "2": "dev", "3": "test"}
        for lineno, line in enumerate(read_text(iden).splitlines(), 1):
            fields = line.split()
            if fields and (len(fields) != 2 or fields[0] not in names):
                raise ManifestError(f"{iden}:{lineno}: expected '1|2|3 id/video/n.wav'")
            if fields:
                split_of[_voxceleb_id(fields[1])] = names[fields[0]]
    else:  # no identification split: about 5% of the files each for dev and test, by a hash of their names
        for i in files:
            h = int(hashlib.sha1(i.encode()).hexdigest(), 16) % 20
            split_of[i] = "dev" if h == 0 else "test" if h == 1 else "train"
    if iden is not None and (absent := sorted(set(split_of) - files.keys())):
        log.warning("%s: %d of its %d files are not under %s (left out), e.g. %s", iden, len(absent), len(split_of),
                    src, absent[0])
    wanted = {i: p for i, p in files.items() if i in sv_ids or (i.split("-")[0] not in sv_speakers and i in split_of)}
    recs = read_recordings(wanted.items(), report, jobs)
    out: dict[str, list[MonoCut]] = {}
    for i, rec in recs.items():
        sup = SupervisionSegment(id=i, recording_id=i, start=0.0, duration=rec.duration, speaker=i.split("-")[0])
        out.setdefault("sv" if i in sv_ids else split_of[i], []).append(make_cut(rec, [sup]))
    missing = sv_ids - recs.keys()
    if missing:
        raise ManifestError(f"{trial_file}: {len(missing)} files of the trial list are missing or unreadable, "
                            f"e.g. {min(missing)}")
    report.files["sv_trials.txt"] = "".join(f"{t} {a} {b}\n" for t, a, b in trials)
    return {split: CutSet.from_cuts(cuts) for split, cuts in sorted(out.items())}
