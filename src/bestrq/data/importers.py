"""``bestrq prepare FORMAT SRC --out DIR``: corpora users already have, into our manifests.

Formats:
  librispeech  the LibriSpeech layout (``SRC/{part}/{speaker}/{chapter}/*.flac`` with
               ``*.trans.txt``), read by lhotse's own recipe; one split per part found
  folder       every audio file under SRC, unlabelled (pre-training data); files longer
               than ``max_duration`` are cut into windows; splits ``train`` and ``dev``
               (``dev_fraction`` of the files, whole files, the same ones on every run)
  fairseq      wav2vec 2.0 TSV manifests (first line the root folder, then
               ``relative/path<TAB>num_samples``), with ``.wrd`` or ``.ltr`` transcripts
               beside them; SRC is one ``.tsv`` or a folder of them; split = file stem
  speechbrain  SpeechBrain CSV manifests (``ID,duration,wav,spk_id,wrd`` and optionally
               ``emo``, ``intent``, ``semantics``, ``start``/``stop`` in samples;
               ``$data_root`` in paths); SRC is one ``.csv`` or a folder; split = file stem
  lhotse       lhotse recording + supervision manifests (any lhotse recipe's output):
               ``*recordings_{split}.jsonl.gz`` paired with ``*supervisions_{split}.jsonl.gz``
  voxceleb1    VoxCeleb1 (``.../wav/{speaker}/{video}/{n}.wav``, the dev and test archives
               anywhere under SRC, ``iden_split.txt`` and ``veri_test2.txt`` or ``veri_test.txt``):
               the verification test speakers become split ``sv`` with ``sv_trials.txt``; the
               other speakers ``train``/``dev``/``test`` by ``iden_split.txt`` (1/2/3)
  iemocap      IEMOCAP (``Session{1-5}/sentences/wav/{dialog}/{utt}.wav``, labels from
               ``dialog/EmoEvaluation``, text from ``dialog/transcriptions``): the four usual
               classes (``exc`` counted as happy, as is customary), one session each for ``test``
               (``test_session``, 5) and ``dev`` (the one before it), the others ``train``

Missing, unreadable and empty audio files are skipped and counted; a warning names the first ten.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import itertools
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest
from tqdm import tqdm

from ..files import atomic_path
from .audio import MISSING, audio_source, by_kind, length_problem, rate_problem
from .manifest import ManifestError, is_sharded, list_splits, write_split
from .recorded import from_recorded
from .shards import write_shards

log = logging.getLogger("bestrq.data")

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".sph", ".aiff", ".aif")


@dataclass
class ImportReport:
    splits: dict[str, int] = field(default_factory=dict)  # split -> cuts written
    hours: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    files: dict[str, str] = field(default_factory=dict)  # other files to write beside the manifests


def _cut(rec: Recording, sups: list[SupervisionSegment], start: float = 0.0,
         duration: float | None = None, cut_id: str | None = None) -> MonoCut:
    return MonoCut(id=cut_id or rec.id, start=start, duration=rec.duration if duration is None else duration,
                   channel=rec.channel_ids[0], recording=rec, supervisions=sups)


def _read_text(path: Path) -> str:
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


def _read_recordings(items: Iterable[tuple[str, Path]], report: ImportReport, jobs: int) -> dict[str, Recording]:
    """Recordings from (id, path) pairs, reading only headers (and each file's last sample); the files that
    are missing, unreadable, empty, truncated or of a sample rate outside MIN_RATE..MAX_RATE are skipped."""
    return {rec.id: rec for rec in _stream_recordings(items, report, jobs)}


def _stream_recordings(items: Iterable[tuple[str, Path]], report: ImportReport, jobs: int,
                       chunk: int = 1024) -> Iterator[Recording]:
    """As :func:`_read_recordings`, in the order given, ``chunk`` files at a time: a folder of any
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


def from_librispeech(src: Path, report: ImportReport, jobs: int = 4, **_) -> dict[str, CutSet]:
    from lhotse.recipes import prepare_librispeech

    parts = prepare_librispeech(src, dataset_parts="auto", num_jobs=jobs)
    if not parts:
        raise ManifestError(f"{src}: no LibriSpeech part found (expected e.g. {src}/train-clean-100/)")
    return {part: from_manifests(m["recordings"], m["supervisions"]) for part, m in parts.items()}


def from_manifests(recordings: RecordingSet, supervisions: SupervisionSet | None) -> CutSet:
    by_rec: dict[str, list[SupervisionSegment]] = {}
    for sup in supervisions or []:
        by_rec.setdefault(sup.recording_id, []).append(sup)
    return CutSet.from_cuts(_cut(rec, by_rec.get(rec.id, [])) for rec in recordings)


def held_out(ids: Iterable[str], fraction: float) -> set[str]:
    """``fraction`` of ``ids`` (rounded, at least one of ten or more), chosen by a hash of each id:
    the same ids whatever their order, and adding files moves few of them."""
    ids = sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    n = round(fraction * len(ids))
    if fraction > 0 and len(ids) >= 10:
        n = max(n, 1)
    return set(ids[:n])


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
        for rec in _stream_recordings(items, report, jobs):
            cut = _cut(rec, [])
            yield from (cut.cut_into_windows(duration=max_duration) if max_duration else [cut])

    return {"train": split_cuts(False), "dev": split_cuts(True)}


def _fairseq_labels(tsv: Path, n: int) -> list[str] | None:
    wrd, ltr = tsv.with_suffix(".wrd"), tsv.with_suffix(".ltr")
    if wrd.exists():
        lines = _read_text(wrd).splitlines()
    elif ltr.exists():  # "H E L L O | W O R L D |"
        lines = [" ".join("".join(line.split()).split("|")).strip()
                 for line in _read_text(ltr).splitlines()]
    else:
        return None
    if len(lines) != n:
        raise ManifestError(f"{wrd if wrd.exists() else ltr}: {len(lines)} transcripts for {n} audio lines in {tsv}")
    return lines


def _table_files(src: Path, suffix: str) -> list[Path]:
    if src.is_file():
        return [src]
    files = sorted(src.glob(f"*{suffix}"))
    if not files:
        raise ManifestError(f"{src}: no {suffix} manifests found")
    return files


def from_fairseq(src: Path, report: ImportReport, jobs: int = 4, **_) -> dict[str, CutSet]:
    out = {}
    for tsv in _table_files(src, ".tsv"):
        lines = _read_text(tsv).splitlines()
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
        recs = _read_recordings(((str(Path(rel).with_suffix("")), root / rel) for rel, _ in entries), report, jobs)
        cuts, differ = [], []
        for i, (rel, n) in enumerate(entries):
            rec = recs.get(str(Path(rel).with_suffix("")))
            if rec is None:
                continue
            if rec.num_samples != n:
                differ.append(f"{rel}: {n} in the table, {rec.num_samples} in the file")
            sups = [] if labels is None else [SupervisionSegment(
                id=rec.id, recording_id=rec.id, start=0.0, duration=rec.duration, text=labels[i])]
            cuts.append(_cut(rec, sups))
        if differ:  # a stale table, or another root: the audio's own length is what is used
            log.warning("%s: %d files are not the length the table gives (the files' own lengths are used), e.g. %s",
                        tsv, len(differ), differ[0])
        out[tsv.stem] = CutSet.from_cuts(cuts)
    return out


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
    for table in _table_files(src, ".csv"):
        root = data_root or str(table.parent)
        reader = csv.DictReader(io.StringIO(_read_text(table), newline=""))
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
        recs = _read_recordings(((rid, Path(p)) for p, rid in paths.items()), report, jobs)
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
            cuts.append(_cut(rec, [sup], start=start, duration=duration, cut_id=row["ID"]))
        out[table.stem] = CutSet.from_cuts(cuts)
    return out


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
        report.files[trials.name] = _read_text(trials)
    return out


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
    for lineno, line in enumerate(_read_text(trial_file).splitlines(), 1):
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
        for lineno, line in enumerate(_read_text(iden).splitlines(), 1):
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
    recs = _read_recordings(wanted.items(), report, jobs)
    out: dict[str, list[MonoCut]] = {}
    for i, rec in recs.items():
        sup = SupervisionSegment(id=i, recording_id=i, start=0.0, duration=rec.duration, speaker=i.split("-")[0])
        out.setdefault("sv" if i in sv_ids else split_of[i], []).append(_cut(rec, [sup]))
    missing = sv_ids - recs.keys()
    if missing:
        raise ManifestError(f"{trial_file}: {len(missing)} files of the trial list are missing or unreadable, "
                            f"e.g. {min(missing)}")
    report.files["sv_trials.txt"] = "".join(f"{t} {a} {b}\n" for t, a, b in trials)
    return {split: CutSet.from_cuts(cuts) for split, cuts in sorted(out.items())}


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
    for utt, rec in _read_recordings(paths.items(), report, jobs).items():
        session = int(utt[3:5])
        split = "test" if session == test_session else "dev" if session == dev_session else "train"
        speaker = utt[:5] + utt.rsplit("_", 1)[1][0]  # Ses01F_impro01_M003 -> Ses01M, the speaking actor
        sup = SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration, text=texts.get(utt),
                                 speaker=speaker, custom={"emotion": labels[utt]})
        out.setdefault(split, []).append(_cut(rec, [sup]))
    return {split: CutSet.from_cuts(cuts) for split, cuts in sorted(out.items())}


IMPORTERS: dict[str, Callable[..., dict[str, Iterable]]] = {  # split -> its cuts, or a generator of them
    "librispeech": from_librispeech,
    "folder": from_folder,
    "fairseq": from_fairseq,
    "speechbrain": from_speechbrain,
    "lhotse": from_lhotse,
    "voxceleb1": from_voxceleb1,
    "iemocap": from_iemocap,
    "recorded": from_recorded,
}


_ROOT_HINT = {"speechbrain": "--data-root replaces $data_root in the table",
              "fairseq": "the table's first line is the folder its paths are relative to"}
EXTRA_FILES = ("sv_trials.txt",)  # files beside the manifests that an importer may write


def prepare(fmt: str, src: str | os.PathLike, out: str | os.PathLike, shard_size: int | None = None,
            **options) -> ImportReport:
    """Import ``src`` in format ``fmt`` and write one manifest per split into ``out``; with ``shard_size``,
    each split as shards of that many cuts, audio included (:func:`~bestrq.data.shards.write_shards`)."""
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    src = Path(src)
    if fmt == "recorded":  # the packages' folder: made, and filled, where it is not yet
        src.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if options.get("jobs", 1) < 1:
        raise ValueError(f"jobs must be >= 1, got {options['jobs']}")
    report = ImportReport()
    out = Path(out)
    earlier = list_splits(out) if out.is_dir() else []  # from an earlier import into the same folder
    for split, cuts in IMPORTERS[fmt](src, report, out=out, **options).items():  # out: for audio it makes
        cuts = iter(cuts)  # cut by cut: an importer may stream them
        first = next(cuts, None)  # a split with none is not written, nor is the folder made for it
        n, seconds = 0, 0.0
        if first is not None and shard_size:
            with tqdm(desc=f"shards of {split}", unit="cut", disable=None) as bar:
                n, seconds = write_shards(out, split, itertools.chain([first], cuts), shard_size,
                                          jobs=options.get("jobs", 1), skipped=report.skipped,
                                          progress=lambda _: bar.update())
        elif first is not None:
            n, seconds = write_split(out, split, itertools.chain([first], cuts))
            if n and is_sharded(out / split):  # the split's shards from an earlier import, now replaced
                shutil.rmtree(out / split)
        if not n:
            if split == "dev" and fmt == "folder":  # dev_fraction of too few files
                continue
            log.warning("%s: no usable cuts (it lists none, or all are " + UNUSABLE + "): the split is "
                        "not written", split)
            continue
        report.splits[split] = n
        report.hours[split] = round(seconds / 3600, 4)
    if report.skipped:
        kinds = by_kind(report.skipped)  # "no such file: 10 (e.g. a.wav); unreadable: 2 (e.g. b.wav)"
        log.warning("skipped %d files: %s", len(report.skipped),
                    "; ".join(f"{kind}: {len(paths)} (e.g. {paths[0]})" for kind, paths in kinds.items()))
    if not report.splits:
        n = len(report.skipped)
        if report.skipped and all(why == MISSING for _, why in report.skipped):
            raise ManifestError(f"{src}: no usable audio: none of the {n} files it lists exist, e.g. "
                                f"{report.skipped[0][0]}. Are its paths relative to another folder? "
                                f"({_ROOT_HINT.get(fmt, 'check the paths')})")
        raise ManifestError(f"{src}: no usable audio: all {n} files are {UNUSABLE}")
    for name, text in report.files.items():
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    left = [f"split {split}" for split in earlier if split not in report.splits]
    left += [name for name in EXTRA_FILES if (out / name).is_file() and name not in report.files]
    if left:  # probes and pre-training would take them as part of this corpus
        log.warning("%s: still holds %s from an earlier import, not from %s: delete %s, or prepare into an empty "
                    "folder", out, ", ".join(left), src, "it" if len(left) == 1 else "them")
    return report


# --- writers, so that the table formats round-trip --------------------------------------


def _text(cut) -> str | None:
    return cut.supervisions[0].text if cut.supervisions else None


def write_fairseq(cuts: CutSet, tsv: str | os.PathLike) -> Path:
    """A wav2vec 2.0 TSV (and a ``.wrd`` beside it when the cuts have text)."""
    tsv = Path(tsv)
    paths = [Path(audio_source(c)).resolve() for c in cuts]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    tsv.parent.mkdir(parents=True, exist_ok=True)
    lines = [str(root)] + [f"{p.relative_to(root)}\t{c.num_samples}" for p, c in zip(paths, cuts)]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = [_text(c) for c in cuts]
    if all(t is not None for t in texts):
        tsv.with_suffix(".wrd").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return tsv


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
