"""Manifests: lhotse CutSets in JSONL, one file per split, checked line by line.

A manifest folder holds, for each split, ``cuts_{split}.jsonl.gz`` (what every tool
reads) and ``recordings_{split}.jsonl.gz`` / ``supervisions_{split}.jsonl.gz`` (the
same information in lhotse's other two manifests). Labels live in the supervisions:
``text``, ``speaker``, ``custom["emotion"]``, ``custom["intent"]`` (absent where they do
not apply; ``custom["slots"]`` may accompany an intent).

A malformed manifest fails at once, naming the file and the line.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from lhotse import CutSet
from lhotse.cut.set import deserialize_cut

from ..files import atomic_path

CUTS = "cuts_{split}.jsonl.gz"
RECORDINGS = "recordings_{split}.jsonl.gz"
SUPERVISIONS = "supervisions_{split}.jsonl.gz"
LABEL_KEYS = ("emotion", "intent")  # string labels in supervision.custom
SKIP_WARNINGS = 10  # bad lines named one by one when they are skipped; the rest are counted
log = logging.getLogger("bestrq.data")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message starts with ``path:line:``."""


def cuts_path(folder: str | os.PathLike, split: str) -> Path:
    return Path(folder) / CUTS.format(split=split)


def list_splits(folder: str | os.PathLike) -> list[str]:
    prefix, suffix = CUTS.split("{split}")
    return sorted(p.name[len(prefix):-len(suffix)] for p in Path(folder).glob(CUTS.format(split="*")))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _check_cut(raw: object) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(raw, dict):
        return f"expected a JSON object, got {type(raw).__name__}"
    for key in ("id", "start", "duration", "recording"):
        if key not in raw:
            return f"cut has no {key!r} field"
    if not isinstance(raw["id"], str) or not raw["id"]:
        return "cut 'id' must be a non-empty string"
    for key in ("start", "duration"):
        if not isinstance(raw[key], (int, float)) or raw[key] < 0:
            return f"cut {raw['id']}: {key!r} must be a number >= 0, got {raw[key]!r}"
    rec = raw["recording"]
    if not isinstance(rec, dict) or not rec.get("sources"):
        return f"cut {raw['id']}: 'recording' must be an object with a non-empty 'sources' list"
    if not isinstance(rec.get("sampling_rate"), int) or rec["sampling_rate"] <= 0:
        return f"cut {raw['id']}: recording 'sampling_rate' must be a positive integer"
    sups = raw.get("supervisions") or []
    if not isinstance(sups, list):
        return f"cut {raw['id']}: 'supervisions' must be a list"
    for sup in sups:
        if not isinstance(sup, dict) or "id" not in sup:
            return f"cut {raw['id']}: each supervision must be an object with an 'id'"
        for key in ("text", "speaker"):
            if sup.get(key) is not None and not isinstance(sup[key], str):
                return f"cut {raw['id']}: supervision {key!r} must be a string"
        custom = sup.get("custom") or {}
        if not isinstance(custom, dict):
            return f"cut {raw['id']}: supervision 'custom' must be an object"
        for key in LABEL_KEYS:
            if key in custom and not isinstance(custom[key], str):
                return f"cut {raw['id']}: custom[{key!r}] must be a string, got {custom[key]!r}"
    return None


def _checked_lines(path: Path, unique: bool) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, the cut's dict, None) for each good line of a manifest, (line number, None,
    what is wrong) for each bad one; blank lines are passed over."""
    seen: set[str] = set()
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            problem = _check_cut(raw)
            if problem is None and unique and raw["id"] in seen:
                problem = f"duplicate cut id {raw['id']!r}"
            if problem:
                yield lineno, None, problem
                continue
            if unique:
                seen.add(raw["id"])
            yield lineno, raw, None


def iter_checked(path: str | os.PathLike, unique: bool = True) -> Iterator[dict]:
    """Parsed, checked cut dicts of a JSONL(.gz) manifest; ManifestError names file and line.
    ``unique``: also refuse a repeated cut id (which costs memory in proportion to the cuts)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    try:
        for lineno, raw, problem in _checked_lines(path, unique):
            if problem:
                raise ManifestError(f"{path}:{lineno}: {problem}")
            yield raw
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def _cuts_of(path: Path, unique: bool) -> Iterator:
    for entry, raw in enumerate(iter_checked(path, unique), start=1):
        try:
            cut = deserialize_cut(raw)
        except Exception as e:  # lhotse raises many kinds on bad fields
            raise ManifestError(f"{path}: cut {raw['id']!r} (entry {entry}): {type(e).__name__}: {e}") from None
        yield cut  # outside the try: an error of the consumer's is not this line's


def load_cuts(path: str | os.PathLike) -> CutSet:
    """A cuts manifest, checked line by line (an error names the file and line)."""
    return CutSet.from_cuts(list(_cuts_of(Path(path), unique=True)))


class LazyCuts:
    """The cuts of one or more manifests, read line by line at every iteration and never held whole:
    what lhotse's samplers take as a lazy CutSet. Each line is checked as it is read; repeated ids
    are not looked for, as that would hold every id.

    A bad line raises ManifestError naming the file and line when the iteration reaches it, or,
    with ``skip_bad`` (training, which may reach it hours in), is left out with a warning (the
    first ten, once each) and counted in ``bad_lines``."""

    def __init__(self, paths: list[Path], skip_bad: bool = False) -> None:
        self.paths = paths
        self.skip_bad = skip_bad
        self.bad_lines: dict[str, str] = {}  # "path:line" -> the problem

    def __iter__(self) -> Iterator:
        for path in self.paths:
            if not self.skip_bad:
                yield from _cuts_of(path, unique=False)
                continue
            yield from self._skipping(path)

    def _skipping(self, path: Path) -> Iterator:
        for lineno, raw, problem in _checked_lines(path, unique=False):
            if raw is not None:
                try:
                    cut = deserialize_cut(raw)
                except Exception as e:  # fields lhotse refuses
                    problem = f"{type(e).__name__}: {e}"
                else:
                    yield cut
                    continue
            where = f"{path}:{lineno}"
            if where not in self.bad_lines and len(self.bad_lines) < SKIP_WARNINGS:
                log.warning("%s: %s; the line is left out", where, problem)
            self.bad_lines[where] = problem


def _split_paths(folder: str | os.PathLike, split: str) -> list[Path]:
    paths = []
    for part in split.split("+"):
        path = cuts_path(folder, part)
        if not path.is_file():
            have = ", ".join(list_splits(folder)) or "none"
            raise ManifestError(f"{path}: no manifest for split {part!r} (splits in {folder}: {have})")
        paths.append(path)
    if len(set(paths)) < len(paths):
        raise ManifestError(f"{folder}: splits {split!r} share cut ids (one is named twice); list each split once")
    return paths


def load_split(folder: str | os.PathLike, split: str) -> CutSet:
    """One split's cuts, in memory; ``a+b+c`` joins several (e.g. LibriSpeech's three training parts)."""
    paths = _split_paths(folder, split)
    if len(paths) == 1:
        return load_cuts(paths[0])
    cuts = [c for path in paths for c in load_cuts(path)]
    if len({c.id for c in cuts}) < len(cuts):
        raise ManifestError(f"{folder}: splits {split!r} share cut ids; list each split once")
    return CutSet.from_cuts(cuts)


def open_split(folder: str | os.PathLike, split: str, skip_bad: bool = False) -> CutSet:
    """One split's cuts (``a+b+c`` too) as a lazy CutSet: nothing is read until it is iterated, and
    iterating holds one line at a time, whatever the size of the corpus. ``skip_bad``: see LazyCuts."""
    return CutSet(LazyCuts(_split_paths(folder, split), skip_bad))


def split_identity(folder: str | os.PathLike, split: str) -> str:
    """What tells a split's manifests from others without reading them: each file's name, size
    and first and last 64 KiB (a cut added, removed or changed changes the size or those bytes)."""
    digest = hashlib.sha1()
    for path in _split_paths(folder, split):
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            f.seek(max(size - (1 << 16), 0))
            tail = f.read()
        digest.update(f"{path.name}\0{size}\0".encode() + head + b"\0" + tail)
    return digest.hexdigest()[:16]


def save_split(folder: str | os.PathLike, split: str, cuts: CutSet) -> Path:
    """Write the cuts, recordings and supervisions manifests of one split, atomically (an empty
    split too: its manifests are empty)."""
    write_split(folder, split, cuts)
    return cuts_path(folder, split)


def write_split(folder: str | os.PathLike, split: str, cuts: Iterable) -> tuple[int, float]:
    """Write one split's three manifests from cuts as they come, holding one cut at a time (and the
    ids of the recordings written); returns (cuts written, seconds of audio). Each file replaces the
    old one only once whole, the cuts last; with no supervision, no supervisions manifest is left."""
    folder = Path(folder)
    n, seconds, recordings, supervised = 0, 0.0, set(), False
    with contextlib.ExitStack() as stack:  # on leaving: each file closed, then moved into place, the cuts last
        files = {}
        for kind, name in (("cuts", CUTS), ("recordings", RECORDINGS), ("supervisions", SUPERVISIONS)):
            tmp = stack.enter_context(atomic_path(folder / name.format(split=split)))
            files[kind] = stack.enter_context(gzip.open(tmp, "wt", encoding="utf-8"))
        for cut in cuts:
            files["cuts"].write(json.dumps(cut.to_dict(), ensure_ascii=False) + "\n")
            if cut.recording.id not in recordings:
                recordings.add(cut.recording.id)
                files["recordings"].write(json.dumps(cut.recording.to_dict(), ensure_ascii=False) + "\n")
            for sup in cut.supervisions:
                supervised = True
                files["supervisions"].write(json.dumps(sup.to_dict(), ensure_ascii=False) + "\n")
            n += 1
            seconds += cut.duration
    if not supervised:  # unlabelled audio: no supervisions manifest, not an empty or an older one
        (folder / SUPERVISIONS.format(split=split)).unlink(missing_ok=True)
    return n, seconds
