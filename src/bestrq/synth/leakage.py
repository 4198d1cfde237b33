"""What a probe corpus's held-out utterances share with what a model learnt from: texts and voices.

A probe's test utterance whose exact transcript occurs in the probe's training split, or
anywhere in the pre-training corpus, can be answered by memory as well as by listening;
a verification speaker whose eSpeak voice (accent and variant) the pre-training corpus
used is less unseen than its id says. ``overlaps`` counts both, from the manifests on
disk (and the speakers file that ``bestrq synth`` writes beside them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..data.manifest import ManifestError, list_splits, open_split
from .voices import Speaker

SPEAKERS = "speakers.jsonl"  # every speaker's recipe (voices.Speaker), one JSON object a line, written by synthesize


def split_texts(folder: str | os.PathLike, split: str) -> tuple[list[str], set[str]]:
    """A split's transcripts, one per cut that has one (its supervisions' texts, joined), and its speakers."""
    texts, speakers = [], set()
    for cut in open_split(folder, split):
        words = " ".join(s.text for s in cut.supervisions if s.text)
        if words:
            texts.append(words)
        speakers.update(s.speaker for s in cut.supervisions if s.speaker)
    return texts, speakers


def _whole(folder: str | os.PathLike, only: Iterable[str] | None = None) -> tuple[set[str], set[str]]:
    """The transcripts and the speakers of every split of a corpus (a manifest folder), or of the splits
    ``only``."""
    splits = list_splits(folder)
    if only is not None:
        splits = [s for s in splits if s in set(only)]
    if not splits:
        raise ManifestError(f"{folder}: no manifests (cuts_*.jsonl.gz or shards): no transcripts to read")
    texts: set[str] = set()
    speakers: set[str] = set()
    for split in splits:
        t, s = split_texts(folder, split)
        texts.update(t)
        speakers |= s
    return texts, speakers


def corpus_texts(folders: Iterable[str | os.PathLike]) -> set[str]:
    """The transcripts of every split of the corpora (manifest folders) in ``folders``."""
    return {t for folder in folders for t in _whole(folder)[0]}


def speaker_voices(folder: str | os.PathLike) -> dict[str, str] | None:
    """Speaker id -> eSpeak voice ("en-gb-x-rp+m3") from the corpus's speakers file; None without one
    (a corpus that ``bestrq synth`` did not make)."""
    path = Path(folder) / SPEAKERS
    if not path.is_file():
        return None
    speakers = [Speaker(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return {s.id: s.voice for s in speakers}


def overlaps(probe: Path, pretrain: Path | None, pretrain_splits: Iterable[str] | None = None) -> dict:
    """How much the probe corpus ``probe`` shares with its own training split and with ``pretrain`` (its
    splits ``pretrain_splits``, default all: a pre-training corpus that is the probe corpus itself
    names the splits pre-training reads).

    Fields (counts of utterances, not of distinct texts; a transcript is compared exactly):

    - ``probe_test_texts_in_probe_train``, ``probe_dev_texts_in_probe_train``: probe test / dev
      utterances whose transcript occurs in the probe's train split.
    - ``probe_test_texts_in_pretraining``, ``probe_dev_texts_in_pretraining``: probe test / dev
      utterances whose transcript occurs in any split of ``pretrain``; None without ``pretrain``.
    - ``sv_voices``: distinct eSpeak voices (accent + variant) of the speakers of the probe's
      ``sv`` split; None if the probe has no speakers file.
    - ``sv_voices_in_pretraining``, ``sv_voices_in_pretraining_list``: how many of those voices,
      and which (sorted), some speaker of ``pretrain`` (any split) also has; None without
      ``pretrain`` or without a speakers file in either corpus.
    """
    present = set(list_splits(probe))

    def read(split: str) -> tuple[list[str], set[str]]:  # a split the corpus lacks holds nothing
        return split_texts(probe, split) if split in present else ([], set())

    train, _ = read("train")
    seen = set(train)
    dev, _ = read("dev")
    test, _ = read("test")
    _, sv_speakers = read("sv")
    out: dict = {
        "probe_test_texts_in_probe_train": sum(t in seen for t in test),
        "probe_dev_texts_in_probe_train": sum(t in seen for t in dev),
        "probe_test_texts_in_pretraining": None,
        "probe_dev_texts_in_pretraining": None,
        "sv_voices": None,
        "sv_voices_in_pretraining": None,
        "sv_voices_in_pretraining_list": None,
    }
    probe_voices = speaker_voices(probe)
    sv_voices = None if probe_voices is None else {probe_voices[s] for s in sv_speakers if s in probe_voices}
    if sv_voices is not None:
        out["sv_voices"] = len(sv_voices)
    if pretrain is None:
        return out
    pre_texts, pre_speakers = _whole(pretrain, pretrain_splits)
    out["probe_test_texts_in_pretraining"] = sum(t in pre_texts for t in test)
    out["probe_dev_texts_in_pretraining"] = sum(t in pre_texts for t in dev)
    pre_voices = speaker_voices(pretrain)
    if sv_voices is not None and pre_voices is not None:
        shared = sorted(sv_voices & {pre_voices[s] for s in pre_speakers if s in pre_voices})
        out["sv_voices_in_pretraining"] = len(shared)
        out["sv_voices_in_pretraining_list"] = shared
    return out
