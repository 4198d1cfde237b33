"""IEMOCAP: the four usual emotions, one session each for test and dev."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from lhotse import CutSet, MonoCut, SupervisionSegment

from ..manifest import ManifestError
from .common import (
    ImportReport,
    make_cut,
    read_recordings,
)

log = logging.getLogger("bestrq.data")


IEMOCAP_EMOTIONS = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}


def from_iemocap(src: Path, report: ImportReport, jobs: int = 4, test_session: int = 5, **_) -> dict[str, CutSet]:
    if test_session not in range(1, 6):
        raise ValueError(f"test_session must be 1 to 5, got {test_session}")
    dev_session = test_session - 1 if test_session > 1 else 5
    labels, texts, other = {}, {}, 0
    for table in sorted(src.glob("Session*/dialog/EmoEvaluation/*.txt")):
        for m in re.finditer(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t", table.read_text(errors="replace"), re.MULTILINE):
            if not re.fullmatch(r"Ses0[1-5][FM]_\S+_[FM]\S*", m.group(1)):
                raise ManifestError(f"{table}: {m.group(1)!r} is not an IEMOCAP utterance name (Ses01F_impro01_M003)")
            if m.group(2) in IEMOCAP_EMOTIONS:
                labels[m.group(1)] = IEMOCAP_EMOTIONS[m.group(2)]
            else:
                other += 1
    if not labels:
        raise ManifestError(f"{src}: no IEMOCAP labels (expected Session1/dialog/EmoEvaluation/*.txt)")
    for table in sorted(src.glob("Session*/dialog/transcriptions/*.txt")):
        for m in re.finditer(r"^(\S+) \[[\d.]+-[\d.]+\]: (.*)$", table.read_text(errors="replace"), re.MULTILINE):
            texts[m.group(1)] = m.group(2).strip()
    paths = {}
    for utt in labels:
        path = src / f"Session{int(utt[3:5])}" / "sentences" / "wav" / utt.rsplit("_", 1)[0] / f"{utt}.wav"
        if path.exists():
            paths[utt] = path
        else:
            report.skipped.append((str(path), "missing"))
            log.warning("skipping %s: missing", path)
    if other:
        log.warning("%s: left out %d utterances labelled with none of %s", src, other, ", ".join(IEMOCAP_EMOTIONS))
    out: dict[str, list[MonoCut]] = {}
    for utt, rec in read_recordings(paths.items(), report, jobs).items():
        session = int(utt[3:5])
        split = "test" if session == test_session else "dev" if session == dev_session else "train"
        speaker = utt[:5] + utt.rsplit("_", 1)[1][0]  # Ses01F_impro01_M003 -> Ses01M, the speaking actor
        sup = SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration, text=texts.get(utt),
                                 speaker=speaker, custom={"emotion": labels[utt]})
        out.setdefault(split, []).append(make_cut(rec, [sup]))
    return {split: CutSet.from_cuts(cuts) for split, cuts in sorted(out.items())}
