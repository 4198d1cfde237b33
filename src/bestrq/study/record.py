"""The study's record: the small files of what its finished stages measured, kept apart from the bulk.

A study's folder holds gigabytes (corpora, checkpoints, hidden-state caches) and, beside them, the
kilobytes that its results are computed from: each run's ``config.json``, ``metrics.jsonl`` and
``finished.json``, the timing stage's ``machine.txt``, each probe's ``probe_TASK.json`` and
``encoder.json``, and ``sessions.json``. With ``record: DIR`` the study mirrors those into DIR as
each stage finishes, and begins by copying back what DIR holds and its folder lacks. Kept under
version control, DIR carries a study from one machine to the next:

- a session on a new machine synthesises the corpora again (the same texts, speakers, labels and
  splits; the audio within eSpeak NG's pitch flutter, see ``synth/corpus.py``);
- a finished run is not trained again: ``finished.json`` says so, with the id of its final weights;
- its probes, once made, need no weights; a run whose weights are gone before all of its probes
  were made is trained again (and its probes made again), as its weights are not in the record;
- the stage under way when a session ended is lost, as it would be on the same machine.
"""

from __future__ import annotations

import filecmp
import fnmatch
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..probes.results import ENCODER, RESULTS
from ..runtime.metrics import METRICS
from ..runtime.runs import RUN_CONFIG
from ..train.run import SKIPPED_AUDIO
from .pretraining import FINISHED
from .sessions import MACHINE, SESSIONS

# folders of the study's that hold bulk: never in the record
BULK = frozenset({"data", "checkpoints", "cache", "tensorboard"})
NAMES = frozenset({RUN_CONFIG, METRICS, FINISHED, MACHINE, ENCODER, SESSIONS, SKIPPED_AUDIO})
MAX_BYTES = 4 << 20  # a file this large is not a record file: a sign that something else is kept


def _is_record(rel: Path) -> bool:
    name = rel.name
    return name in NAMES or fnmatch.fnmatch(name, RESULTS)


def record_files(folder: Path) -> Iterator[Path]:
    """The record's files under ``folder``, relative to it, in a stable order."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in BULK)
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(folder)
            if _is_record(rel):
                yield rel


class Record:
    """A study folder's record, mirrored into ``folder`` (``None``: no record is kept)."""

    def __init__(self, folder: str | os.PathLike | None, out: Path) -> None:
        self.folder = Path(folder) if folder else None
        self.out = out
        if self.folder is not None and self.folder.resolve() == out.resolve():
            raise ValueError(f"record: {self.folder} is the study's own folder; give another")

    def restore(self) -> int:
        """Copy into the study's folder the record files it lacks; how many were copied."""
        if self.folder is None or not self.folder.is_dir():
            return 0
        copied = 0
        for rel in record_files(self.folder):
            dest = self.out / rel
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.folder / rel, dest)
                copied += 1
        return copied

    def keep(self) -> None:
        """Mirror the study folder's record files into the record: new and changed ones copied, and the
        ones the study has since removed (a run trained again, timing runs of another machine) removed."""
        if self.folder is None:
            return
        have = set(record_files(self.out))
        for rel in sorted(have):
            src, dest = self.out / rel, self.folder / rel
            if src.stat().st_size > MAX_BYTES:
                raise ValueError(f"{src}: {src.stat().st_size >> 20} MiB, too large for the study's record")
            if not dest.is_file() or not filecmp.cmp(src, dest, shallow=False):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".tmp")
                shutil.copy2(src, tmp)
                os.replace(tmp, dest)
        if self.folder.is_dir():
            for rel in set(record_files(self.folder)) - have:
                (self.folder / rel).unlink()
            for root, dirs, _ in os.walk(self.folder, topdown=False):  # folders left empty
                for d in dirs:
                    path = Path(root) / d
                    if not any(path.iterdir()):
                        path.rmdir()
