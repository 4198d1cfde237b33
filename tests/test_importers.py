"""Importers: look-alike trees of each format, built from the generated corpus, round-trip."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_audio

from bestrq.data.audio import audio_source, load_mono
from bestrq.data.importers import prepare, write_fairseq, write_speechbrain
from bestrq.data.manifest import ManifestError, load_split


def sup(cut):
    return cut.supervisions[0]


@pytest.fixture(scope="module")
def dev(corpus):
    return load_split(corpus, "dev").subset(first=12)


def test_librispeech_layout(dev, tmp_path):
    """SRC/{part}/{speaker}/{chapter}/{speaker}-{chapter}-{n}.flac and .trans.txt, upper case."""
    root = tmp_path / "LibriSpeech"
    expected = {}
    for i, cut in enumerate(dev):
        spk = sup(cut).speaker.replace("spk", "")
        folder = root / "dev-clean" / spk / "7"
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{spk}-7-{i:04d}"
        shutil.copy(audio_source(cut), folder / f"{utt}.flac")
        with open(folder / f"{spk}-7.trans.txt", "a") as f:
            f.write(f"{utt} {sup(cut).text.upper()}\n")
        expected[utt] = (sup(cut).text.upper(), spk, cut.num_samples)
    report = prepare("librispeech", root, tmp_path / "out", jobs=1)
    assert report.splits == {"dev-clean": len(dev)}
    got = load_split(tmp_path / "out", "dev-clean")
    assert {c.id: (sup(c).text, sup(c).speaker, c.num_samples) for c in got} == expected


def test_fairseq_round_trip(dev, tmp_path):
    tsv = write_fairseq(dev, tmp_path / "fs" / "valid.tsv")
    assert (tmp_path / "fs" / "valid.wrd").exists()
    prepare("fairseq", tsv.parent, tmp_path / "out", jobs=1)
    got = load_split(tmp_path / "out", "valid")
    assert [sup(c).text for c in got] == [sup(c).text for c in dev]
    assert [c.num_samples for c in got] == [c.num_samples for c in dev]
    assert [audio_source(c) for c in got] == [audio_source(c) for c in dev]


def test_fairseq_letters_and_bad_lines(dev, tmp_path, caplog):
    tsv = write_fairseq(dev, tmp_path / "fs" / "train.tsv")
    wrd = tsv.with_suffix(".wrd")
    ltr = [" ".join("|".join(line.upper().split())) + " |" for line in wrd.read_text().splitlines()]
    tsv.with_suffix(".ltr").write_text("\n".join(ltr) + "\n")
    wrd.unlink()
    lines = tsv.read_text().splitlines()
    path, n = lines[1].split("\t")
    lines[1] = f"{path}\t{int(n) // 2}"  # a stale length; and blank lines at the end, which were an error
    tsv.write_text("\n".join(lines) + "\n\n\n")
    with caplog.at_level("WARNING", logger="bestrq.data"):
        prepare("fairseq", tsv, tmp_path / "out", jobs=1)
    assert f"1 files are not the length the table gives (the files' own lengths are used), e.g. {path}: " \
           f"{int(n) // 2} in the table, {n} in the file" in caplog.text
    assert [sup(c).text for c in load_split(tmp_path / "out", "train")] == [sup(c).text.upper() for c in dev]
    tsv.write_text("\n".join(lines) + "\nno-tab-here\n")
    with pytest.raises(ManifestError, match=rf"{tsv}:{len(dev) + 2}: expected .*, got 'no-tab-here'"):
        prepare("fairseq", tsv, tmp_path / "out2", jobs=1)


def test_speechbrain_round_trip(corpus, tmp_path):
    cuts = load_split(corpus, "test").subset(first=30)
    table = write_speechbrain(cuts, tmp_path / "sb" / "test.csv", data_root=str(corpus))
    assert "$data_root" in table.read_text()
    prepare("speechbrain", table, tmp_path / "out", jobs=1, data_root=str(corpus))
    got = load_split(tmp_path / "out", "test")
    assert [c.id for c in got] == [c.id for c in cuts]
    for a, b in zip(got, cuts):
        assert (sup(a).text, sup(a).speaker, sup(a).custom.get("emotion"), (sup(a).custom or {}).get("intent")) == \
               (sup(b).text, sup(b).speaker, sup(b).custom["emotion"], sup(b).custom.get("intent"))
        np.testing.assert_array_equal(load_mono(a), load_mono(b))


def test_speechbrain_segments_and_semantics(tmp_path):
    write_audio(tmp_path / "a.wav", tone(220, 3.0))
    (tmp_path / "train.csv").write_text(
        "ID,duration,wav,spk_id,semantics,transcript,start,stop\n"
        "u1,1.0,$data_root/a.wav,s1,\"{'scenario': 'alarm', 'action': 'set'}\",wake me up,16000,32000\n")
    prepare("speechbrain", tmp_path / "train.csv", tmp_path / "out", jobs=1)
    (cut,) = load_split(tmp_path / "out", "train")
    assert (cut.start, cut.duration, sup(cut).custom["intent"], sup(cut).text) == (1.0, 1.0, "alarm_set", "wake me up")
    assert load_mono(cut).shape == (16000,)


def test_folder_of_audio(tmp_path):
    src = tmp_path / "audio"
    write_audio(src / "a" / "long.flac", tone(200, 70.0))
    write_audio(src / "b" / "stereo.wav", tone(300, 2.0, rate=44100, channels=2), rate=44100)
    (src / "b" / "broken.flac").write_bytes(b"this is not audio")
    write_audio(src / "b" / "empty.wav", np.zeros(0, np.float32))  # a valid header, no samples
    write_audio(src / "b" / "damaged.wav", tone(300, 1.0), rate=1)  # 1 Hz: 16000 s, 534 windows
    cut_short = write_audio(src / "b" / "cut_short.flac", tone(300, 60.0))
    cut_short.write_bytes(cut_short.read_bytes()[:5000])  # its header still says 60 s
    (src / "notes.txt").write_text("ignored")
    report = prepare("folder", src, tmp_path / "out", jobs=1, max_duration=30.0)
    reasons = {Path(path).name: why for path, why in report.skipped}
    assert reasons["empty.wav"] == "empty audio (0 samples)" and "unreadable" in reasons["broken.flac"]
    assert reasons["damaged.wav"] == "sample rate outside 4000-768000 Hz (1 Hz: a damaged header?)"
    assert reasons["cut_short.flac"] == ("truncated or damaged (its header gives 960000 samples; the last cannot "
                                         "be read)")
    assert list(report.splits) == ["train"]  # too few files to hold any out
    cuts = load_split(tmp_path / "out", "train")
    durations = sorted(round(c.duration, 3) for c in cuts)
    assert durations == [2.0, 10.0, 30.0, 30.0]  # 70 s cut into 30 + 30 + 10
    stereo = next(c for c in cuts if "stereo" in c.id)
    x = load_mono(stereo)
    assert x.shape == (32000,)  # resampled to 16 kHz, down-mixed


def test_folder_holds_out_whole_files_as_dev(tmp_path):
    src = tmp_path / "audio"
    for i in range(60):
        write_audio(src / f"spk{i % 3}" / f"clip{i:02d}.flac", tone(200 + i, 40.0 if i % 2 else 3.0))
    prepare("folder", src, tmp_path / "out", jobs=1, max_duration=30.0, dev_fraction=0.05)
    train, dev = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "dev")
    dev_files = {c.recording_id for c in dev}
    assert len(dev_files) == 3  # 5% of 60 files
    assert not dev_files & {c.recording_id for c in train}  # a long file's windows all on one side
    assert len(train) + len(dev) == 60 + 30  # every 40 s file is cut into 30 + 10
    # the same files on a second run, and almost the same when files are added
    write_audio(src / "spk9" / "late.flac", tone(150, 3.0))
    prepare("folder", src, tmp_path / "again", jobs=1, dev_fraction=0.05)
    again = {c.recording_id for c in load_split(tmp_path / "again", "dev")}
    assert len(again & dev_files) >= 2
    with pytest.raises(ValueError, match="dev_fraction"):
        prepare("folder", src, tmp_path / "bad", dev_fraction=1.0)


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare("folder", tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no audio files"):
        prepare("folder", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown format"):
        prepare("kaldi", tmp_path, tmp_path / "out")


def test_lhotse_recipe_output(dev, tmp_path):
    recordings, supervisions, _ = dev.decompose()
    (tmp_path / "src").mkdir()
    recordings.to_file(tmp_path / "src" / "mycorpus_recordings_dev.jsonl.gz")
    supervisions.to_file(tmp_path / "src" / "mycorpus_supervisions_dev.jsonl.gz")
    prepare("lhotse", tmp_path / "src", tmp_path / "out")
    got = load_split(tmp_path / "out", "dev")
    assert [(c.id, sup(c).text, sup(c).custom) for c in got] == [(c.id, sup(c).text, sup(c).custom) for c in dev]


def test_lhotse_manifests_that_are_broken_swapped_or_unmatched_are_named(dev, tmp_path, caplog):
    recordings, supervisions, _ = dev.decompose()
    src = tmp_path / "src"
    src.mkdir()
    recordings.subset(first=3).to_file(src / "recordings_dev.jsonl.gz")
    supervisions.to_file(src / "supervisions_dev.jsonl.gz")
    with caplog.at_level("WARNING", logger="bestrq.data"):  # all but three of them were dropped silently
        prepare("lhotse", src, tmp_path / "out")
    assert f"supervisions of {len(dev) - 3} recordings not in recordings_dev.jsonl.gz are left out" in caplog.text
    assert [sup(c).text for c in load_split(tmp_path / "out", "dev")] == [sup(c).text for c in dev.subset(first=3)]
    recordings.to_file(src / "supervisions_dev.jsonl.gz")  # the two swapped
    with pytest.raises(ManifestError, match="supervisions_dev.jsonl.gz: expected a lhotse SupervisionSet, got a Rec"):
        prepare("lhotse", src, tmp_path / "out2")
    (src / "recordings_dev.jsonl.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(ManifestError, match="recordings_dev.jsonl.gz: not a lhotse manifest"):  # no file named
        prepare("lhotse", src, tmp_path / "out2")


def _wav(cut, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, load_mono(cut), 16000)


def test_voxceleb1_layout_trials_and_unseen_verification_speakers(dev, tmp_path, caplog):
    """``vox1_{dev,test}_wav/wav/{id}/{video}/{n}.wav``, ``iden_split.txt``, ``veri_test2.txt``."""
    root = tmp_path / "VoxCeleb1"
    names = []
    for i, cut in enumerate(dev):
        speaker = ("id10001", "id10002", "id10270", "id10271")[i % 4]
        archive = "vox1_test_wav" if speaker >= "id10270" else "vox1_dev_wav"
        name = f"{speaker}/vid{i % 2}/{i:05d}.wav"
        _wav(cut, root / archive / "wav" / name)
        names.append(name)
    absent = "id10003/vidz/00001.wav"  # listed, but its archive is not here: counted in a warning
    (root / "iden_split.txt").write_text("".join(f"{1 + i % 3} {n}\n" for i, n in enumerate([*names, absent])))
    test_files = [n for n in names if n >= "id10270"]
    trials = [f"{int(a[:7] == b[:7])} {a} {b}\n" for a in test_files for b in test_files if a < b]
    (root / "veri_test2.txt").write_text("".join(trials))
    with caplog.at_level("WARNING", logger="bestrq.data"):
        report = prepare("voxceleb1", root, tmp_path / "out", jobs=1)
    assert f"iden_split.txt: 1 of its {len(names) + 1} files are not under {root} (left out), e.g. " \
           "id10003-vidz-00001" in caplog.text
    assert set(report.splits) == {"train", "dev", "test", "sv"}
    sv = load_split(tmp_path / "out", "sv")
    assert {sup(c).speaker for c in sv} == {"id10270", "id10271"}  # verification speakers are never trained on
    for split in ("train", "dev", "test"):
        assert {sup(c).speaker for c in load_split(tmp_path / "out", split)} <= {"id10001", "id10002"}
    written = (tmp_path / "out" / "sv_trials.txt").read_text().splitlines()
    assert len(written) == len(trials) and {w.split()[0] for w in written} == {"0", "1"}
    ids = {c.id for c in sv}
    assert all(a in ids and b in ids for _, a, b in (w.split() for w in written))
    caplog.clear()
    with caplog.at_level("WARNING", logger="bestrq.data"):
        prepare("voxceleb1", root, tmp_path / "out", jobs=1)  # the same import again: nothing is left over
        assert "earlier import" not in caplog.text
        write_audio(tmp_path / "other" / "a.wav", tone(200, 2.0))
        prepare("folder", tmp_path / "other", tmp_path / "out", jobs=1)  # into the same folder: train only
    assert f"{tmp_path / 'out'}: still holds split dev, split sv, split test, sv_trials.txt from an earlier import, " \
           f"not from {tmp_path / 'other'}: delete them" in caplog.text  # a probe would test on them
    (root / "veri_test2.txt").write_text("1 only-two-fields\n")
    with pytest.raises(ManifestError, match="veri_test2.txt:1"):
        prepare("voxceleb1", root, tmp_path / "bad", jobs=1)


def test_iemocap_layout_four_classes_and_session_splits(dev, tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    codes = ["neu", "hap", "exc", "sad", "ang", "fru"]
    expected = {}
    for i, cut in enumerate(dev[:10]):
        session = 1 + i % 5
        dialog = f"Ses0{session}F_impro0{i % 2 + 1}"
        utt = f"{dialog}_{'FM'[i % 2]}{i:03d}"
        _wav(cut, root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav")
        base = root / f"Session{session}" / "dialog"
        (base / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (base / "transcriptions").mkdir(parents=True, exist_ok=True)
        code = codes[i % 6]
        with open(base / "EmoEvaluation" / f"{dialog}.txt", "a") as f:
            f.write(f"% header line\n[6.2901 - 8.2357]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]\nC-E1:\t{code};\t()\n")
        with open(base / "transcriptions" / f"{dialog}.txt", "a") as f:
            f.write(f"{utt} [006.2901-008.2357]: {sup(cut).text}.\n")
        if code != "fru":
            expected[utt] = ({"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}[code],
                             {5: "test", 4: "dev"}.get(session, "train"), f"Ses0{session}{'FM'[i % 2]}", sup(cut).text + ".")
    prepare("iemocap", root, tmp_path / "out", jobs=1)
    got = {}
    for split in ("train", "dev", "test"):
        for c in load_split(tmp_path / "out", split):
            got[c.id] = (sup(c).custom["emotion"], split, sup(c).speaker, sup(c).text)
    assert got == expected  # frustration left out; excitement counted as happiness
    prepare("iemocap", root, tmp_path / "fold1", jobs=1, test_session=1)
    assert {c.id[:5] for c in load_split(tmp_path / "fold1", "test")} == {"Ses01"}
    assert {c.id[:5] for c in load_split(tmp_path / "fold1", "dev")} == {"Ses05"}
    table = next(root.glob("Session1/dialog/EmoEvaluation/*.txt"))
    with open(table, "a") as f:  # int() of its session number failed, with no file named
        f.write("[1.0 - 2.0]\tSesX1F_impro01_F009\tneu\t[2.5000, 2.5000, 2.5000]\n")
    with pytest.raises(ManifestError, match=r"Ses01F_impro01\.txt: 'SesX1F_impro01_F009' is not an IEMOCAP utterance"):
        prepare("iemocap", root, tmp_path / "bad", jobs=1)


def test_malformed_table_rows_and_splits_without_audio_are_named(tmp_path, caplog):
    write_audio(tmp_path / "a.wav", tone(220, 2.0))
    table = tmp_path / "sb" / "test.csv"
    table.parent.mkdir()
    for rows, problem in [("u1,$data_root/a.wav,extra", ":2: 3 fields, the header has 2"),  # both taken silently
                          ("u1,$data_root/a.wav\nu2", ":3: 1 field, the header has 2")]:
        table.write_text(f"ID,wav\n{rows}\n")
        with pytest.raises(ManifestError, match=f"test.csv{problem}$"):
            prepare("speechbrain", table, tmp_path / "out", jobs=1, data_root=str(tmp_path))
    table.write_text("ID,wav,start,stop\nu1,$data_root/a.wav,16000,48000\n")  # a 2 s file: past its end
    with pytest.raises(ManifestError, match=r"test.csv:2: segment 16000-48000 \(samples\) is not inside .*a\.wav "
                                            r"\(32000 samples\)"):
        prepare("speechbrain", table, tmp_path / "out", jobs=1, data_root=str(tmp_path))
    table.write_text("ID,wav,start,stop\nu1,$data_root/a.wav,16000,16000\n")  # an empty segment
    with pytest.raises(ManifestError, match="test.csv:2: segment 16000-16000"):
        prepare("speechbrain", table, tmp_path / "out", jobs=1, data_root=str(tmp_path))
    assert not (tmp_path / "out").exists()

    # a split whose audio is all unusable is left out, said so; no usable audio at all is an error
    table.write_text("ID,wav\nu1,$data_root/a.wav\n")
    (table.parent / "dev.csv").write_text("ID,wav\nu2,$data_root/gone.wav\n")
    with caplog.at_level("WARNING", logger="bestrq.data"):
        report = prepare("speechbrain", table.parent, tmp_path / "out", jobs=1, data_root=str(tmp_path))
    assert report.splits == {"test": 1} and "dev: no usable cuts" in caplog.text
    assert not (tmp_path / "out" / "cuts_dev.jsonl.gz").exists()  # it was written, empty
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.wav").write_bytes(b"not audio")
    with pytest.raises(ManifestError, match=r"b: no usable audio: all 1 files are missing, unreadable, empty, "
                                            r"truncated or of an implausible sample rate$"):
        prepare("folder", tmp_path / "b", tmp_path / "out2", jobs=1)
    assert not (tmp_path / "out2").exists()


def test_tables_whose_audio_is_missing_or_whose_text_is_not_utf8_are_named(tmp_path, caplog):
    write_audio(tmp_path / "a.wav", tone(200, 2.0))
    table = tmp_path / "csv" / "train.csv"
    table.parent.mkdir()
    # paths relative to another folder: every file missing, said plainly, with the option that fixes it
    table.write_text("ID,wav\n" + "".join(f"u{i},audio/{i}.wav\n" for i in range(25)))
    with caplog.at_level("WARNING", logger="bestrq.data"), \
            pytest.raises(ManifestError, match=r"train.csv: no usable audio: none of the 25 files it lists exist, e.g. "
                                               r"audio/0.wav\. .*--data-root"):
        prepare("speechbrain", table, tmp_path / "out", jobs=1)
    assert caplog.text.count("skipping audio/") == 10  # the first ten named, then one line for all
    assert "skipped 25 files: no such file: 25 (e.g. audio/0.wav)" in caplog.text
    assert "AudioLoadingError" not in caplog.text  # not lhotse's decoder report for a file that is not there
    fairseq = tmp_path / "fs" / "train.tsv"
    fairseq.parent.mkdir()
    fairseq.write_text(f"{tmp_path}/elsewhere\na.wav\t32000\n")
    with pytest.raises(ManifestError, match="none of the 1 files it lists exist.*the table's first line"):
        prepare("fairseq", fairseq, tmp_path / "out", jobs=1)
    fairseq.write_text(f"{tmp_path}\n\t32000\n")  # no path
    with pytest.raises(ManifestError, match=r"train.tsv:2: expected 'relative/path<TAB>num_samples'"):
        prepare("fairseq", fairseq, tmp_path / "out", jobs=1)
    # a table saved in another encoding: the file and line named, not a UnicodeDecodeError
    table.write_bytes("ID,wav,wrd\nu1,$data_root/a.wav,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"train.csv:2: not UTF-8 text \(byte 0xe9\)"):
        prepare("speechbrain", table, tmp_path / "out", jobs=1, data_root=str(tmp_path))
    fairseq.write_bytes(f"{tmp_path}\na.wav\t32000\n".encode())
    fairseq.with_suffix(".wrd").write_bytes("caf\xe9\n".encode("cp1252"))
    with pytest.raises(ManifestError, match=r"train.wrd:1: not UTF-8 text"):
        prepare("fairseq", fairseq, tmp_path / "out", jobs=1)
    assert not (tmp_path / "out").exists()


def test_a_folder_is_imported_file_by_file_not_read_whole_first(tmp_path, monkeypatch):
    """`prepare folder` on a large folder holds one chunk of recordings, never every file's: the
    first cut is written after the first chunk of files (1024) is read, and the split is whole."""
    from lhotse import Recording

    from bestrq.data.importers import ImportReport, from_folder

    clip = tone(440, 0.05)
    for i in range(1100):
        folder = tmp_path / "audio" / f"d{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"c{i:04d}.wav", clip, 16000)
    read, real = [0], Recording.from_file

    def counted(*args, **kwargs):
        read[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(Recording, "from_file", counted)
    splits = from_folder(tmp_path / "audio", ImportReport(), dev_fraction=0.0)
    assert read[0] == 0  # nothing read before the writer asks
    train = iter(splits["train"])
    next(train)
    assert read[0] <= 1024
    assert 1 + sum(1 for _ in train) == 1100 and read[0] == 1100
    report = prepare("folder", tmp_path / "audio", tmp_path / "out", dev_fraction=0.0)
    assert report.splits == {"train": 1100}
    assert len(load_split(tmp_path / "out", "train")) == 1100
