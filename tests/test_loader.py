"""The training data layer: duration batches, rank shards, exact resume, bad audio."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tone, write_audio
from lhotse import CutSet, MonoCut, Recording

from bestrq.data.audio import BadAudio, load_mono
from bestrq.data.loader import AudioDataset, AudioLoader, collate
from bestrq.data.manifest import load_split


@pytest.fixture(scope="module")
def train(corpus):
    return load_split(corpus, "train")


def _loader(cuts, **kw):
    kw.setdefault("max_batch_duration", 60.0)
    return AudioLoader(cuts, AudioDataset(seed=kw.get("seed", 0)), **kw)


def test_collate_pads_right():
    w, n = collate([np.ones(3, np.float32), np.full(5, 2.0, np.float32)])
    assert w.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]] and n.tolist() == [3, 5] and n.dtype == torch.int64


def test_batches_hold_their_duration_and_bucket(train):
    batches = list(itertools.islice(iter(_loader(train, max_batch_duration=40.0)), 20))
    durations = {c.id: c.duration for c in train}
    for b in batches:
        assert sum(durations[i] for i in b.cut_ids) <= 40.0 + 1e-6
        assert b.waveforms.shape == (len(b), int(b.lengths.max()))
        for row, n in zip(b.waveforms, b.lengths):  # padding is zeros, content is not
            assert row[n:].abs().sum() == 0 and row[:n].abs().sum() > 0
        assert b.lengths.tolist() == [round(durations[i] * 16000) for i in b.cut_ids]
    spread = np.mean([np.ptp([durations[i] for i in b.cut_ids]) for b in batches])
    assert spread < np.ptp(list(durations.values())) / 2  # bucketing groups similar lengths


def test_clips_cropped_to_max_duration_count_as_what_they_hold_in_the_batch_budget(train):
    # clips of 4-6 s cropped to 2 s: a 20 s budget holds ten of them, not the three or four their
    # whole lengths would fit (batches a third full, the step's audio far below max_batch_duration)
    long = train.filter(lambda c: c.duration > 4.0)
    loader = AudioLoader(long, AudioDataset(max_duration=2.0), max_batch_duration=20.0, num_buckets=2)
    batches = list(itertools.islice(iter(loader), 6))
    assert all(b.lengths.sum() <= 20 * 16000 and (b.lengths == 32000).all() for b in batches)
    assert np.mean([len(b) for b in batches]) >= 9
    whole = {c.id: c for c in long}  # the dataset still crops the whole clip, at a random offset, not at 0
    at_start = [np.allclose(b.waveforms[i, :200].numpy(), load_mono(whole[cut_id])[:200], atol=1e-4)
                for b in batches[:2] for i, cut_id in enumerate(b.cut_ids)]
    assert not all(at_start)


def test_rank_shards_are_disjoint(train):
    seen = []
    for rank in (0, 1):
        loader = _loader(train, rank=rank, world_size=2, drop_last=False)
        ids = [i for b in loader.epoch_batches() for i in [c.id for c in b]]
        assert len(ids) == len(set(ids))
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) >= 0.95 * len(train)


def test_resume_continues_exactly(train):
    first = _loader(train, max_batch_duration=120.0, seed=5, num_workers=2)
    stream = iter(first)
    n_epoch = sum(1 for _ in _loader(train, max_batch_duration=120.0, seed=5).epoch_batches())
    k = n_epoch - 2  # stop just before an epoch boundary, continue across it
    for _ in range(k):
        next(stream)
    state = first.state_dict()
    expected = [next(stream) for _ in range(5)]
    resumed = _loader(train, max_batch_duration=120.0, seed=5)
    resumed.load_state_dict(state)
    got = list(itertools.islice(iter(resumed), 5))
    assert [b.cut_ids for b in got] == [b.cut_ids for b in expected]
    for a, b in zip(got, expected):
        assert torch.equal(a.waveforms, b.waveforms)
    assert resumed.epoch == 1 and first.epoch == 1
    with pytest.raises(ValueError, match="seed"):
        _loader(train, seed=6).load_state_dict(state)


def test_a_split_smaller_than_one_batch_still_trains(train, caplog):
    small = train.subset(first=12)  # 57 s of audio in 10 buckets: no bucket fills a 60 s batch
    with caplog.at_level(logging.WARNING, logger="bestrq.data"):
        loader = _loader(small, max_batch_duration=60.0)
        batches = list(itertools.islice(iter(loader), 40))
    assert "fill no whole batch" in caplog.text
    assert len(batches) == 40 and loader.epoch >= 2  # batches come, epoch after epoch
    first_epoch = [i for b in _loader(small, max_batch_duration=60.0, drop_last=False).epoch_batches() for i in
                   [c.id for c in b]]
    assert sorted(first_epoch) == sorted(c.id for c in small)  # every cut, none dropped
    # a resumed loader takes the same decision and continues with the same batches
    again = _loader(small, max_batch_duration=60.0)
    again.load_state_dict({**loader.state_dict(), "epoch": 1, "position": 1})
    replay = _loader(small, max_batch_duration=60.0)
    expected = [b.cut_ids for b in itertools.islice(iter(replay), 40)]
    n1 = sum(1 for _ in _loader(small, max_batch_duration=60.0, drop_last=False).epoch_batches())
    assert next(iter(again)).cut_ids == expected[n1 + 1]
    with pytest.raises(ValueError, match="at least one cut per process"):
        next(iter(_loader(CutSet.from_cuts([]))))


def test_random_crop_is_bounded_and_reproducible(train):
    long = train.filter(lambda c: c.duration > 4.0).subset(first=8)
    ds = AudioDataset(max_duration=2.0, seed=1)
    a, b = ds[long], ds[long]
    assert (a.lengths == 32000).all() and torch.equal(a.waveforms, b.waveforms)
    ds.set_epoch(1)
    assert not torch.equal(ds[long].waveforms, a.waveforms)  # another epoch, other crops
    full = load_mono(long[0])
    crop = a.waveforms[0].numpy()
    starts = [i for i in range(len(full) - 32000) if np.allclose(full[i : i + 100], crop[:100], atol=1e-4)]
    assert starts, "the crop is a window of the original audio"


def test_resampling_keeps_the_pitch(tmp_path):
    for rate in (8000, 22050, 44100):
        path = write_audio(tmp_path / f"t{rate}.wav", tone(440, 1.0, rate=rate), rate=rate)
        cut = Recording.from_file(path).to_cut()
        x = load_mono(cut)
        assert x.shape == (16000,)
        peak_hz = np.abs(np.fft.rfft(x)).argmax() * 16000 / len(x)
        assert abs(peak_hz - 440) <= 1.0


def test_bad_audio_is_skipped_counted_and_named(train, tmp_path, caplog):
    good = list(train.subset(first=3))
    # unreadable: a recording whose file is garbage; missing: a file that is not there
    write_audio(tmp_path / "ok.wav", tone(300, 1.0))
    template = Recording.from_file(tmp_path / "ok.wav")
    (tmp_path / "garbage.flac").write_bytes(b"\x00garbage" * 100)
    bad_files = {
        "garbage": tmp_path / "garbage.flac",
        "missing": tmp_path / "missing.flac",
        "nan": write_audio(tmp_path / "nan.wav", np.full(16000, np.nan, np.float32), subtype="FLOAT"),
        "empty": write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32)),
        "short": write_audio(tmp_path / "short.wav", tone(300, 0.02)),
        "changed": write_audio(tmp_path / "changed.wav", tone(300, 0.5)),  # 2 s in the manifest
    }
    bad = []
    for name, path in bad_files.items():
        frames = sf.info(str(path)).frames if path.exists() and name not in ("garbage", "changed") else 32000
        rec = Recording(id=name, sources=[type(template.sources[0])(type="file", channels=[0], source=str(path))],
                        sampling_rate=16000, num_samples=max(frames, 1), duration=max(frames, 1) / 16000)
        bad.append(MonoCut(id=name, start=0.0, duration=rec.duration, channel=0, recording=rec))
    for name, rate in (("slow", 1), ("fast", 2_000_000_000)):  # damaged headers; 2 GHz crashed the resampler
        bad_files[name] = write_audio(tmp_path / f"{name}.wav", tone(300, 0.5), rate=rate)
        rec = Recording.from_file(bad_files[name], recording_id=name)
        bad.append(MonoCut(id=name, start=0.0, duration=rec.duration, channel=0, recording=rec))
    with caplog.at_level(logging.WARNING, logger="bestrq.data"):
        batch = AudioDataset(min_duration=0.1)[CutSet.from_cuts(good + bad)]
    assert batch.cut_ids == [c.id for c in good]
    reasons = {s.cut_id: s.reason for s in batch.skipped}
    assert set(reasons) == set(bad_files)
    assert "unreadable" in reasons["garbage"] and reasons["missing"] == "no such file"
    assert "non-finite" in reasons["nan"] and "too short" in reasons["short"]
    assert reasons["empty"] == "empty audio (0 samples)"
    assert reasons["slow"] == "sample rate outside 4000-768000 Hz (1 Hz: a damaged header?)"
    assert reasons["fast"] == "sample rate outside 4000-768000 Hz (2000000000 Hz: a damaged header?)"
    assert reasons["changed"] == ("not the length its manifest gives (8000 samples, the manifest 32000): the file "
                                  "changed after the manifest was made")  # it was lhotse's long "please report"
    for name, path in bad_files.items():
        assert str(path) in caplog.text
    with pytest.raises(BadAudio, match="nan.wav: non-finite"):
        load_mono(bad[2])


def test_an_epoch_with_no_usable_audio_stops_the_loader_instead_of_looping(train, tmp_path, caplog):
    missing = [MonoCut(id=f"gone{i}", start=0.0, duration=2.0, channel=0, recording=Recording(
        id=f"gone{i}", sources=[c.recording.sources[0].__class__(type="file", channels=[0],
                                                                  source=str(tmp_path / f"gone{i}.flac"))],
        sampling_rate=16000, num_samples=32000, duration=2.0)) for i, c in enumerate(train.subset(first=8))]
    loader = _loader(CutSet.from_cuts(missing), max_batch_duration=4.0)
    with caplog.at_level(logging.WARNING, logger="bestrq.data"), \
            pytest.raises(ValueError, match=r"no usable audio in a whole epoch of 8 cuts on rank 0: every clip was "
                                            r"skipped, e\.g\. .*gone\d\.flac: no such file"):
        for _ in itertools.islice(iter(loader), 100):
            pass
    assert loader.epoch == 0 and loader.position == 4  # it stopped at the end of the first epoch
    # one good cut among them is enough to go on
    loader = _loader(CutSet.from_cuts([*missing, *train.subset(first=1)]), max_batch_duration=4.0)
    assert len(list(itertools.islice(iter(loader), 30))) == 30



def test_a_batch_pins_its_tensors_for_the_dataloader(monkeypatch):
    """With pin_memory (the loop sets it for CUDA) the DataLoader calls AudioBatch.pin_memory: both
    tensors go to page-locked memory, ids and skips unchanged. (A CPU build cannot pin: the
    pinning itself is stubbed.)"""
    from bestrq.data.loader import AudioBatch

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or self.clone())
    batch = AudioBatch(torch.zeros(2, 5), torch.tensor([5, 3]), ["a", "b"])
    out = batch.pin_memory()
    assert len(pinned) == 2 and pinned[0] is batch.waveforms and pinned[1] is batch.lengths
    assert torch.equal(out.waveforms, batch.waveforms) and out.cut_ids == ["a", "b"] and out.skipped == []


def test_a_lazily_opened_split_gives_its_first_batch_without_reading_it_whole(corpus, tmp_path, monkeypatch):
    """A large corpus starts training after a buffer's worth of its manifest, not all of it."""
    import gzip
    import json

    from bestrq.data import manifest

    with gzip.open(corpus / "cuts_train.jsonl.gz", "rt") as f:
        lines = [json.loads(line) for line in f]
    n = 60_000
    with gzip.open(tmp_path / "cuts_train.jsonl.gz", "wt", compresslevel=1) as f:
        for i in range(n):
            f.write(json.dumps({**lines[i % len(lines)], "id": f"c{i}"}) + "\n")
    read, real = [0], manifest.deserialize_cut

    def counted(raw):
        read[0] += 1
        return real(raw)

    monkeypatch.setattr(manifest, "deserialize_cut", counted)
    loader = _loader(manifest.open_split(tmp_path, "train"), identity=manifest.split_identity(tmp_path, "train"))
    batch = next(iter(loader))
    assert len(batch) > 0
    assert read[0] <= 10_000 + 20_000 < n  # the bucket edges' 10k cuts and the sampler's buffer, not all
