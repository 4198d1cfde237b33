"""Manifests: lhotse CutSets in JSONL, one file per split, checked line by line.

A manifest folder holds, for each split, ``cuts_{split}.jsonl.gz`` (what every tool
reads) and ``recordings_{split}.jsonl.gz`` / ``supervisions_{split}.jsonl.gz`` (the
same information in lhotse's other two manifests). Labels live in the supervisions:
``text``, ``speaker``, ``custom["emotion"]``, ``custom["intent"]`` (absent where they do
not apply; ``custom["slots"]`` may accompany an intent).

A split may instead be *sharded*: a folder ``{split}/`` in lhotse's Shar layout, shards
``cuts.000000.jsonl.gz`` (the cuts, labels included) each with ``recording.000000.tar`` (each
cut's audio, a member named after the cut). A sharded split is read shard by shard, in
sequence, the audio of a cut from its tar by offset; see :mod:`bestrq.data.shards`.

A malformed manifest fails at once, naming the file and the line.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from lhotse import CutSet
from lhotse.cut.set import deserialize_cut

from ..files import atomic_path
from .audio import SHARD

CUTS = "cuts_{split}.jsonl.gz"
RECORDINGS = "recordings_{split}.jsonl.gz"
SUPERVISIONS = "supervisions_{split}.jsonl.gz"
SHARD_CUTS, SHARD_AUDIO = "cuts.{:06d}.jsonl.gz", "recording.{:06d}.tar"  # lhotse's Shar names
_SHARD_NAME = re.compile(r"cuts\.(\d{6})\.jsonl\.gz")
LABEL_KEYS = ("emotion", "intent")  # string labels in supervision.custom
SKIP_WARNINGS = 10  # bad lines named one by one when they are skipped; the rest are counted
log = logging.getLogger("bestrq.data")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message starts with ``path:line:``."""


def cuts_path(folder: str | os.PathLike, split: str) -> Path:
    return Path(folder) / CUTS.format(split=split)


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sharded split: a folder holding ``cuts.NNNNNN.jsonl.gz`` shards."""
    return Path(path).is_dir() and any(Path(path).glob("cuts.[0-9]*.jsonl.gz"))


def shard_files(path: str | os.PathLike) -> list[tuple[Path, Path]]:
    """A sharded split's (cuts manifest, audio tar) pairs, in shard order; a shard whose tar is
    missing is a ManifestError."""
    path = Path(path)
    shards = []
    for cuts in sorted(path.glob("cuts.[0-9]*.jsonl.gz")):
        if not (m := _SHARD_NAME.fullmatch(cuts.name)):
            continue
        tar = path / SHARD_AUDIO.format(int(m.group(1)))
        if not tar.is_file():
            raise ManifestError(f"{tar}: missing, the audio of the cuts in {cuts.name}")
        shards.append((cuts, tar))
    return shards


def list_splits(folder: str | os.PathLike) -> list[str]:
    """The splits of a corpus folder, plain and sharded."""
    prefix, suffix = CUTS.split("{split}")
    plain = {p.name[len(prefix):-len(suffix)] for p in Path(folder).glob(CUTS.format(split="*"))}
    sharded = {p.name for p in Path(folder).glob("*") if is_sharded(p)}
    return sorted(plain | sharded)


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


def _in_shard(raw: dict, tar: Path | None) -> dict:
    """A shard's cut, its audio source pointed at the shard's tar (lhotse leaves it empty) and its
    recording named as the tar's member, after the cut (lhotse keeps the original recording's id)."""
    source = raw["recording"]["sources"][0]
    if tar is not None and isinstance(source, dict) and source.get("type") == SHARD:
        source["source"] = str(tar)
        raw["recording"]["id"] = raw["id"]
        for sup in raw.get("supervisions") or []:
            sup["recording_id"] = raw["id"]
    return raw


def _cuts_of(path: Path, unique: bool, tar: Path | None = None) -> Iterator:
    for entry, raw in enumerate(iter_checked(path, unique), start=1):
        try:
            cut = deserialize_cut(_in_shard(raw, tar))
        except Exception as e:  # lhotse raises many kinds on bad fields
            raise ManifestError(f"{path}: cut {raw['id']!r} (entry {entry}): {type(e).__name__}: {e}") from None
        yield cut  # outside the try: an error of the consumer's is not this line's


def load_cuts(path: str | os.PathLike) -> CutSet:
    """A cuts manifest, checked line by line (an error names the file and line)."""
    return CutSet.from_cuts(list(_cuts_of(Path(path), unique=True)))


Source = tuple[Path, "Path | None"]  # a cuts manifest, and the tar of its audio if it is a shard


class LazyCuts:
    """The cuts of one or more manifests, read line by line at every iteration and never held whole:
    what lhotse's samplers take as a lazy CutSet. Each line is checked as it is read; repeated ids
    are not looked for, as that would hold every id.

    A bad line raises ManifestError naming the file and line when the iteration reaches it, or,
    with ``skip_bad`` (training, which may reach it hours in), is left out with a warning (the
    first ten, once each) and counted in ``bad_lines``."""

    def __init__(self, sources: list[Source], skip_bad: bool = False) -> None:
        self.sources = sources
        self.skip_bad = skip_bad
        self.bad_lines: dict[str, str] = {}  # "path:line" -> the problem

    @property
    def sharded(self) -> bool:
        return bool(self.sources) and all(tar is not None for _, tar in self.sources)

    def for_rank(self, rank: int, world_size: int, epoch: int, seed: int | None) -> LazyCuts | None:
        """This rank's shards in ``epoch``: all shards in an order drawn from (seed, epoch) (``seed``
        None: in order), then every ``world_size``-th from the ``rank``-th. None unless every source is
        a shard and there are at least ``world_size`` of them: the ranks must then share the cuts."""
        if not self.sharded or len(self.sources) < world_size:
            return None
        order = list(self.sources)
        if seed is not None:
            random.Random(f"{seed}/{epoch}").shuffle(order)
        mine = LazyCuts(order[rank::world_size], self.skip_bad)
        mine.bad_lines = self.bad_lines  # one count for the split
        return mine

    def __iter__(self) -> Iterator:
        for path, tar in self.sources:
            if not self.skip_bad:
                yield from _cuts_of(path, unique=False, tar=tar)
                continue
            yield from self._skipping(path, tar)

    def _skipping(self, path: Path, tar: Path | None) -> Iterator:
        for lineno, raw, problem in _checked_lines(path, unique=False):
            if raw is not None:
                try:
                    cut = deserialize_cut(_in_shard(raw, tar))
                except Exception as e:  # fields lhotse refuses
                    problem = f"{type(e).__name__}: {e}"
                else:
                    yield cut
                    continue
            where = f"{path}:{lineno}"
            if where not in self.bad_lines and len(self.bad_lines) < SKIP_WARNINGS:
                log.warning("%s: %s; the line is left out", where, problem)
            self.bad_lines[where] = problem


def _split_sources(folder: str | os.PathLike, split: str) -> list[Source]:
    """The (cuts manifest, tar or None) pairs of a split, ``a+b`` too: one for a plain split, one per shard
    for a sharded one."""
    sources, parts = [], split.split("+")
    if len(set(parts)) < len(parts):
        raise ManifestError(f"{folder}: splits {split!r} share cut ids (one is named twice); list each split once")
    for part in parts:
        path, shards = cuts_path(folder, part), Path(folder) / part
        if path.is_file() and is_sharded(shards):
            raise ManifestError(f"{folder}: split {part!r} is both a manifest ({path.name}) and shards ({shards}/); "
                                "delete the one not to use")
        if is_sharded(shards):
            sources += shard_files(shards)
        elif path.is_file():
            sources.append((path, None))
        else:
            have = ", ".join(list_splits(folder)) or "none"
            raise ManifestError(f"{path}: no manifest for split {part!r} (splits in {folder}: {have})")
    return sources


def load_split(folder: str | os.PathLike, split: str) -> CutSet:
    """One split's cuts, in memory; ``a+b+c`` joins several (e.g. LibriSpeech's three training parts)."""
    sources = _split_sources(folder, split)
    cuts = [c for path, tar in sources for c in _cuts_of(path, unique=True, tar=tar)]
    if len(sources) > 1 and len({c.id for c in cuts}) < len(cuts):
        raise ManifestError(f"{folder}: splits {split!r} share cut ids; list each split once")
    return CutSet.from_cuts(cuts)


def open_split(folder: str | os.PathLike, split: str, skip_bad: bool = False) -> CutSet:
    """One split's cuts (``a+b+c`` too) as a lazy CutSet: nothing is read until it is iterated, and
    iterating holds one line at a time, whatever the size of the corpus. ``skip_bad``: see LazyCuts."""
    return CutSet(LazyCuts(_split_sources(folder, split), skip_bad))


def split_identity(folder: str | os.PathLike, split: str) -> str:
    """What tells a split's manifests from others without reading them: each file's name and size,
    and the first and last 64 KiB of the first and last manifest (a cut added, removed or changed
    changes a size or those bytes; a shard's tar counts by its size)."""
    digest = hashlib.sha1()
    sources = _split_sources(folder, split)
    for i, (path, tar) in enumerate(sources):
        size = path.stat().st_size
        name = path.name if tar is None else f"{path.parent.name}/{path.name}"
        digest.update(f"{name}\0{size}\0".encode())
        if tar is not None:
            digest.update(f"{tar.name}\0{tar.stat().st_size}\0".encode())
        if tar is None or i in (0, len(sources) - 1):  # of thousands of shards, the sizes and the ends
            with open(path, "rb") as f:
                head = f.read(1 << 16)
                f.seek(max(size - (1 << 16), 0))
                tail = f.read()
            digest.update(head + b"\0" + tail)
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
