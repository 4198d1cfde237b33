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

import itertools
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from ...files import atomic_path
from ..audio import MISSING, by_kind
from ..manifest import ManifestError, is_sharded, list_splits, write_split
from ..shards import write_shards
from .common import UNUSABLE, ImportReport
from .fairseq import from_fairseq, write_fairseq
from .folder import from_folder
from .iemocap import from_iemocap
from .lhotse_manifests import from_lhotse
from .librispeech import from_librispeech
from .recorded import from_recorded
from .speechbrain import from_speechbrain, write_speechbrain
from .voxceleb import from_voxceleb1

log = logging.getLogger("bestrq.data")


# the registry: each format and its importer (a module beside this one): SRC, options -> split -> its cuts
IMPORTERS: dict[str, Callable[..., dict[str, Iterable]]] = {
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


__all__ = ["IMPORTERS", "UNUSABLE", "ImportReport", "from_folder", "prepare", "write_fairseq", "write_speechbrain"]
