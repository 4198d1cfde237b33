"""wav2vec 2.0's TSV manifests with ``.wrd`` or ``.ltr`` transcripts: reading, and writing them back."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lhotse import CutSet, SupervisionSegment

from ..audio import audio_source
from ..manifest import ManifestError
from .common import (
    ImportReport,
    make_cut,
    read_recordings,
    read_text,
    table_files,
    text_of,
)

log = logging.getLogger("bestrq.data")


def _fairseq_labels(tsv: Path, n: int) -> list[str] | None:
    wrd, ltr = tsv.with_suffix(".wrd"), tsv.with_suffix(".ltr")
    if wrd.exists():
        lines = read_text(wrd).splitlines()
    elif ltr.exists():  # "H E L L O | W O R L D |"
        lines = [" ".join("".join(line.split()).split("|")).strip()
                 for line in read_text(ltr).splitlines()]
    else:
        return None
    if len(lines) != n:
        raise ManifestError(f"{wrd if wrd.exists() else ltr}: {len(lines)} transcripts for {n} audio lines in {tsv}")
    return lines


def from_fairseq(src: Path, report: ImportReport, jobs: int = 4, **_) -> dict[str, CutSet]:
    out = {}
    for tsv in table_files(src, ".tsv"):
        lines = read_text(tsv).splitlines()
        while lines and not lines[-1].strip():  # blank lines at the end (an editor's)
            lines.pop()
        if not lines:
            raise ManifestError(f"{tsv}:1: empty file (expected the audio root folder)")
        root = Path(lines[0].strip())
        entries = []
        for lineno, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip().isdigit():
                raise ManifestError(f"{tsv}:{lineno}: expected 'relative/path<TAB>num_samples', got {line!r}")
            entries.append((fields[0], int(fields[1])))
        labels = _fairseq_labels(tsv, len(entries))
        recs = read_recordings(((str(Path(rel).with_suffix("")), root / rel) for rel, _ in entries), report, jobs)
        cuts, differ = [], []
        for i, (rel, n) in enumerate(entries):
            rec = recs.get(str(Path(rel).with_suffix("")))
            if rec is None:
                continue
            if rec.num_samples != n:
                differ.append(f"{rel}: {n} in the table, {rec.num_samples} in the file")
            sups = [] if labels is None else [SupervisionSegment(
                id=rec.id, recording_id=rec.id, start=0.0, duration=rec.duration, text=labels[i])]
            cuts.append(make_cut(rec, sups))
        if differ:  # a stale table, or another root: the audio's own length is what is used
            log.warning("%s: %d files are not the length the table gives (the files' own lengths are used), e.g. %s",
                        tsv, len(differ), differ[0])
        out[tsv.stem] = CutSet.from_cuts(cuts)
    return out


def write_fairseq(cuts: CutSet, tsv: str | os.PathLike) -> Path:
    """A wav2vec 2.0 TSV (and a ``.wrd`` beside it when the cuts have text)."""
    tsv = Path(tsv)
    paths = [Path(audio_source(c)).resolve() for c in cuts]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    tsv.parent.mkdir(parents=True, exist_ok=True)
    lines = [str(root)] + [f"{p.relative_to(root)}\t{c.num_samples}" for p, c in zip(paths, cuts)]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [text_of(c) for c in cuts]
    if all(t is not None for t in texts):
        tsv.with_suffix(".wrd").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return tsv
