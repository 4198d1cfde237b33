"""Any lhotse recipe's output: recording and supervision manifests paired by split."""

from __future__ import annotations

import logging
from pathlib import Path

from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest

from ..manifest import ManifestError
from .common import (
    ImportReport,
    from_manifests,
    read_text,
)

log = logging.getLogger("bestrq.data")


def _lhotse_manifest(path: Path, kind: type):
    """A lhotse manifest of ``kind``; a ManifestError names the file if it is not one."""
    try:
        manifest = load_manifest(path)
    except Exception as e:  # noqa: BLE001 - lhotse raises many kinds on a bad file
        raise ManifestError(f"{path}: not a lhotse manifest ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, kind):
        raise ManifestError(f"{path}: expected a lhotse {kind.__name__}, got a {type(manifest).__name__}")
    return manifest


def from_lhotse(src: Path, report: ImportReport, **_) -> dict[str, CutSet]:
    out = {}
    for rec_path in sorted(src.glob("*recordings_*.jsonl*")):
        split = rec_path.name.split("recordings_", 1)[1].split(".jsonl", 1)[0]
        sup_path = rec_path.with_name(rec_path.name.replace("recordings_", "supervisions_"))
        recordings = _lhotse_manifest(rec_path, RecordingSet)
        supervisions = _lhotse_manifest(sup_path, SupervisionSet) if sup_path.exists() else None
        orphans = sorted({s.recording_id for s in supervisions or []} - set(recordings.ids))
        if orphans:
            log.warning("%s: supervisions of %d recordings not in %s are left out, e.g. %s",
                        sup_path, len(orphans), rec_path.name, orphans[0])
        out[split] = from_manifests(recordings, supervisions)
    if not out:
        raise ManifestError(f"{src}: no lhotse '*recordings_<split>.jsonl.gz' manifests found")
    trials = src / "sv_trials.txt"
    if trials.is_file():  # a bestrq corpus's verification trials (bestrq synth, an earlier prepare): kept
        report.files[trials.name] = read_text(trials)
    return out
