"""SpeechBrain's CSV manifests (``$data_root``, emotion, intent, segments): reading and writing."""

from __future__ import annotations

import ast
import csv
import io
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
)

log = logging.getLogger("bestrq.data")


_SB_TEXT = ("wrd", "words", "transcript", "text")


_SB_WAV = ("wav", "path", "file_path", "audio")


def _sb_intent(row: dict) -> str | None:
    if row.get("intent"):
        return row["intent"]
    if not row.get("semantics"):
        return None
    try:  # SLURP and Fluent Speech Commands recipes store a Python dict literal
        sem = ast.literal_eval(row["semantics"])
    except (ValueError, SyntaxError):
        return None
    if not isinstance(sem, dict):
        return None
    if "scenario" in sem and "action" in sem:
        return f"{sem['scenario']}_{sem['action']}"
    parts = [str(sem[k]) for k in ("action", "object", "location") if k in sem]
    return "_".join(parts) or None


def from_speechbrain(src: Path, report: ImportReport, jobs: int = 4, data_root: str | None = None,
                     **_) -> dict[str, CutSet]:
    out = {}
    for table in table_files(src, ".csv"):
        root = data_root or str(table.parent)
        reader = csv.DictReader(io.StringIO(read_text(table), newline=""))
        header = reader.fieldnames or []
        wav_col = next((c for c in _SB_WAV if c in header), None)
        if "ID" not in header or wav_col is None:
            raise ManifestError(f"{table}:1: needs an 'ID' column and one of {_SB_WAV}; has {header}")
        try:
            rows = list(enumerate(reader, start=2))
        except csv.Error as e:
            raise ManifestError(f"{table}:{reader.line_num}: not a CSV table ({e})") from None
        paths = {}  # resolved audio path -> recording id
        row_paths = []
        for lineno, row in rows:
            extra = row.get(None) or []  # csv gives extra fields the key None and missing ones the value None
            missing = sum(v is None for k, v in row.items() if k is not None)
            if extra or missing:
                n = len(header) + len(extra) - missing
                raise ManifestError(f"{table}:{lineno}: {n} field{'s' * (n != 1)}, the header has {len(header)}")
            if not row.get("ID") or not row.get(wav_col):
                raise ManifestError(f"{table}:{lineno}: empty 'ID' or {wav_col!r}")
            path = row[wav_col].replace("$data_root", root).replace("{data_root}", root)
            paths.setdefault(path, str(Path(path).with_suffix("")).lstrip("/").replace("/", "_"))
            row_paths.append(path)
        recs = read_recordings(((rid, Path(p)) for p, rid in paths.items()), report, jobs)
        cuts = []
        for (lineno, row), path in zip(rows, row_paths):
            rec = recs.get(paths[path])
            if rec is None:
                continue
            start, duration = 0.0, rec.duration
            if row.get("start") and row.get("stop"):  # segments, in samples
                try:
                    start = int(float(row["start"])) / rec.sampling_rate
                    duration = int(float(row["stop"])) / rec.sampling_rate - start
                except ValueError:
                    raise ManifestError(f"{table}:{lineno}: 'start'/'stop' must be sample numbers") from None
                if not 0 <= start < start + duration <= rec.duration + 1 / rec.sampling_rate:
                    raise ManifestError(f"{table}:{lineno}: segment {row['start']}-{row['stop']} (samples) is not "
                                        f"inside {path} ({rec.num_samples} samples)")
            custom = {k: v for k, v in (("emotion", row.get("emo") or row.get("emotion")),
                                        ("intent", _sb_intent(row))) if v}
            text = next((row[c] for c in _SB_TEXT if row.get(c)), None)
            sup = SupervisionSegment(id=row["ID"], recording_id=rec.id, start=start, duration=duration,
                                     text=text, speaker=row.get("spk_id") or None, custom=custom or None)
            cuts.append(make_cut(rec, [sup], start=start, duration=duration, cut_id=row["ID"]))
        out[table.stem] = CutSet.from_cuts(cuts)
    return out


def write_speechbrain(cuts: CutSet, table: str | os.PathLike, data_root: str | None = None) -> Path:
    """A SpeechBrain CSV (ID, duration, wav, spk_id, wrd, emo, intent)."""
    table = Path(table)
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ID", "duration", "wav", "spk_id", "wrd", "emo", "intent"])
        for c in cuts:
            sup = c.supervisions[0] if c.supervisions else None
            custom = (sup.custom or {}) if sup else {}
            path = str(Path(audio_source(c)).resolve())
            if data_root:
                path = path.replace(str(Path(data_root).resolve()), "$data_root", 1)
            w.writerow([c.id, f"{c.duration:.4f}", path, (sup.speaker if sup else "") or "",
                        (sup.text if sup else "") or "", custom.get("emotion", ""), custom.get("intent", "")])
    return table
