"""Sharded corpora: written as lhotse Shar, read back the same, each rank reading its own shards."""

from __future__ import annotations

import itertools
import logging
import shutil
import tarfile

import numpy as np
import pytest
from conftest import write_audio
from lhotse import CutSet, MonoCut, Recording

from bestrq.data.audio import BadAudio, load_mono
from bestrq.data.importers import prepare
from bestrq.data.loader import AudioDataset, AudioLoader
from bestrq.data.manifest import (
    ManifestError,
    list_splits,
    load_split,
    open_split,
    save_split,
    split_identity,
)
from bestrq.data.shards import write_shards
from bestrq.probes.tasks import read_trials


@pytest.fixture
def sharded(sharded_corpus):
    return sharded_corpus


def test_a_sharded_split_reads_back_the_cuts_labels_and_audio_and_lhotse_reads_it(corpus, sharded):
    plain, shards = load_split(corpus, "dev"), load_split(sharded, "dev")
    assert list_splits(sharded) == list_splits(corpus) == ["dev", "sv", "test", "train"]
    assert not list(sharded.glob("cuts_*.jsonl.gz"))  # the shards alone: no second form of a split
    assert [c.id for c in shards] == [c.id for c in plain]
    for a, b in zip(plain, shards):
        assert b.duration == pytest.approx(a.duration, abs=1e-9)
        assert b.supervisions[0].text == a.supervisions[0].text and b.supervisions[0].speaker == a.supervisions[0].speaker
        assert np.array_equal(load_mono(a), load_mono(b))  # 16-bit sources: FLAC keeps every sample
        # the crop training takes reads the same part of the shard's member
        crop = {"offset": 0.37, "duration": 1.21, "preserve_id": True}
        assert np.array_equal(load_mono(a.truncate(**crop)), load_mono(b.truncate(**crop)))
    by_lhotse = CutSet.from_shar(in_dir=sharded / "dev")
    for a, c in zip(plain, by_lhotse):
        assert c.id == a.id and np.array_equal(c.load_audio()[0], load_mono(a))
    # the verification trials come along, and name cuts of the sharded sv split: the speaker probe runs
    assert (sharded / "sv_trials.txt").read_text() == (corpus / "sv_trials.txt").read_text()
    sv = {c.id for c in load_split(sharded, "sv")}
    assert all(a in sv and b in sv for _, a, b in read_trials(sharded / "sv_trials.txt"))


def test_a_copy_of_a_sharded_cut_under_another_id_reads_its_audio_and_so_do_shards_lhotse_wrote(
        corpus, sharded, tmp_path):
    """A sampler that pads a rank's last batch copies cuts as ``<id>_dup0``; lhotse's own writer keeps the
    original recording's id. Either way the audio is the cut's member of its tar."""
    plain, shards = load_split(corpus, "dev"), load_split(sharded, "dev")
    copy = shards[0].with_id(f"{shards[0].id}_dup0")
    assert np.array_equal(load_mono(copy), load_mono(plain[0]))
    (tmp_path / "x").mkdir()
    CutSet.from_cuts(list(plain)[:12]).to_shar(tmp_path / "x", fields={"recording": "flac"}, shard_size=5)
    by_lhotse = load_split(tmp_path, "x")
    assert len(by_lhotse) == 12 and len(list((tmp_path / "x").glob("*.tar"))) == 3
    for a, b in zip(plain, by_lhotse):
        assert np.array_equal(load_mono(a), load_mono(b.with_id("other")))


def test_unusable_audio_is_left_out_of_the_shards_and_counted(tmp_path):
    good = write_audio(tmp_path / "good.wav", np.full(8000, 0.25, dtype=np.float32))
    nan = np.full(8000, 0.25, dtype=np.float32)
    nan[100] = np.nan
    bad = write_audio(tmp_path / "nan.wav", nan, subtype="FLOAT")
    gone = write_audio(tmp_path / "gone.wav", np.zeros(8000, dtype=np.float32))
    cuts = [MonoCut(p.stem, 0, 0.5, 0, recording=Recording.from_file(p, recording_id=p.stem)) for p in (good, bad, gone)]
    gone.unlink()
    skipped: list[tuple[str, str]] = []
    n, seconds = write_shards(tmp_path / "out", "train", cuts, shard_size=2, skipped=skipped)
    assert (n, seconds) == (1, 0.5)
    assert [(path.rsplit("/", 1)[-1], why.split(" (")[0]) for path, why in skipped] == [
        ("nan.wav", "non-finite samples"), ("gone.wav", "no such file")]
    assert [c.id for c in load_split(tmp_path / "out", "train")] == ["good"]
    assert not list((tmp_path / "out").glob(".*"))  # nothing half-written left beside it


def test_a_damaged_shard_is_named(sharded, tmp_path):
    broken = tmp_path / "c"
    shutil.copytree(sharded / "dev", broken / "dev")
    (broken / "dev" / "recording.000001.tar").unlink()
    with pytest.raises(ManifestError, match=r"recording\.000001\.tar: missing, the audio of the cuts in cuts\.000001"):
        open_split(broken, "dev")
    # a tar without a cut's member: that cut's audio is bad, named by tar and cut, and skipped in training
    tar = broken / "dev" / "recording.000001.tar"
    with tarfile.open(sharded / "dev" / "recording.000001.tar") as src, tarfile.open(tar, "w") as dst:
        members = src.getmembers()
        for m in members[2:]:
            dst.addfile(m, src.extractfile(m))
    first = next(c for c in load_split(broken, "dev") if c.recording.sources[0].source == str(tar))
    with pytest.raises(BadAudio, match=rf"{tar}:{first.id}: not in its shard"):
        load_mono(first)
    # a split both plain and sharded is refused, whichever would be read
    save_split(broken, "dev", load_split(sharded, "test"))
    with pytest.raises(ManifestError, match="split 'dev' is both a manifest"):
        load_split(broken, "dev")


def _loader(cuts, **kw):
    kw.setdefault("max_batch_duration", 60.0)
    return AudioLoader(cuts, AudioDataset(seed=kw.get("seed", 0)), **kw)


def test_each_rank_reads_its_own_shards_in_an_order_that_changes_by_epoch(sharded):
    shard_of = {c.id: c.recording.sources[0].source for c in load_split(sharded, "train")}
    seen, shards = [], []
    for rank in (0, 1):
        loader = _loader(open_split(sharded, "train"), rank=rank, world_size=2, drop_last=False, seed=3)
        ids = [c.id for b in loader.epoch_batches() for c in b]
        assert len(ids) == len(set(ids))
        seen.append(set(ids))
        shards.append({shard_of[i] for i in ids})
    assert not shards[0] & shards[1]  # no shard read by both ranks
    assert seen[0] | seen[1] == set(shard_of)  # and every cut by one of them
    order = [[p.name for p, _ in open_split(sharded, "train").data.for_rank(0, 2, epoch, 3).sources]
             for epoch in (0, 1, 0)]
    assert order[0] == order[2] != order[1]


def test_fewer_shards_than_ranks_are_shared_out_by_batch(sharded):
    seen = []
    for rank in range(3):  # dev: 2 shards
        loader = _loader(open_split(sharded, "dev"), rank=rank, world_size=3, drop_last=False, shuffle=False)
        seen.append({c.id for b in loader.epoch_batches() for c in b})
    assert all(seen) and not (seen[0] & seen[1]) and not (seen[1] & seen[2])


def test_resume_on_shards_continues_exactly(sharded):
    def make():
        return _loader(open_split(sharded, "train"), max_batch_duration=120.0, seed=5, rank=1, world_size=2,
                       identity=split_identity(sharded, "train"))

    first = make()
    first.num_workers = 2
    stream = iter(first)
    n_epoch = sum(1 for _ in make().epoch_batches())
    for _ in range(n_epoch - 2):  # stop just before an epoch boundary, continue across it
        next(stream)
    state = first.state_dict()
    expected = [next(stream) for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(state)
    got = list(itertools.islice(iter(resumed), 5))
    assert [b.cut_ids for b in got] == [b.cut_ids for b in expected]
    for a, b in zip(got, expected):
        assert np.array_equal(a.waveforms.numpy(), b.waveforms.numpy())
    assert resumed.epoch == first.epoch == 1


def test_preparing_plain_again_replaces_the_shards(corpus, tmp_path, caplog):
    prepare("lhotse", corpus, tmp_path, shard_size=400)
    assert (tmp_path / "train" / "cuts.000001.jsonl.gz").is_file()
    with caplog.at_level(logging.WARNING):
        prepare("lhotse", corpus, tmp_path)
    assert not (tmp_path / "train").exists() and (tmp_path / "cuts_train.jsonl.gz").is_file()
    assert len(load_split(tmp_path, "train")) == len(load_split(corpus, "train"))
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.wav").write_bytes(b"")
    with pytest.raises(ManifestError, match="keep: exists and is not a sharded split"):
        write_shards(tmp_path, "keep", load_split(corpus, "dev"))
    assert (tmp_path / "keep" / "a.wav").exists()


def test_a_sharded_split_that_grew_or_changed_is_told_apart_cheaply(sharded, tmp_path):
    """A resume compares split_identity: shards added, removed or rewritten change it."""
    shutil.copytree(sharded / "dev", tmp_path / "dev")
    before = split_identity(tmp_path, "dev")
    assert split_identity(tmp_path, "dev") == before
    write_shards(tmp_path, "grown", list(load_split(sharded, "dev")) + list(load_split(sharded, "test"))[:3],
                 shard_size=50)
    shutil.rmtree(tmp_path / "dev")
    (tmp_path / "grown").rename(tmp_path / "dev")  # the same first shard, one more with 8 cuts
    assert split_identity(tmp_path, "dev") != before
    grown = split_identity(tmp_path, "dev")
    (tmp_path / "dev" / "recording.000001.tar").write_bytes(b"x" * 10)  # audio rewritten, manifests not
    assert split_identity(tmp_path, "dev") != grown
