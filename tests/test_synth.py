"""The synthetic corpus: deterministic, balanced, with labels the audio really carries."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest
import soundfile as sf
from acoustic import NearestCentroid, accuracy, features
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource

from bestrq.data.audio import load_mono
from bestrq.data.manifest import load_split, save_split
from bestrq.synth import corpus as synth_corpus
from bestrq.synth.corpus import SynthConfig, plan, synthesize
from bestrq.synth.leakage import SPEAKERS, overlaps
from bestrq.synth.text import INTENTS, Command, make_command, normalise, number_to_words, year_to_words
from bestrq.synth.voices import ACCENTS, EMOTIONS, VARIANTS, Speaker, make_speakers


def sup(cut):
    return cut.supervisions[0]


def test_number_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(40) == "forty"
    assert number_to_words(312) == "three hundred and twelve"
    assert number_to_words(12_005) == "twelve thousand and five"
    assert number_to_words(999_999) == "nine hundred and ninety nine thousand nine hundred and ninety nine"
    assert year_to_words(1984) == "nineteen eighty four"
    assert year_to_words(1905) == "nineteen oh five"
    assert year_to_words(2007) == "two thousand and seven"
    with pytest.raises(ValueError):
        number_to_words(-1)


def test_commands_carry_their_slots():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        cmd = make_command(rng)
        seen.add(cmd.intent)
        assert all(v in cmd.text for v in cmd.slots.values()), cmd
        assert cmd.text == cmd.text.lower() and "  " not in cmd.text
    assert seen == set(INTENTS)


def test_every_intent_has_thousands_of_transcripts():
    """Enough phrasings that a corpus's held-out commands can all differ from its training ones
    (change_language had 48 texts: 8 languages, 6 phrasings)."""
    rng = np.random.default_rng(1)
    for intent in INTENTS:
        commands = [make_command(rng, intent) for _ in range(8000)]
        assert len({c.text for c in commands}) >= 5000, intent
        for c in commands:
            assert c.intent == intent and c.text == normalise(c.text), c
            assert all(f" {v} " in f" {c.text} " for v in c.slots.values()), c  # slots said as whole words


def test_corpus_statistics(corpus):
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["speakers"] >= 100
    assert 0.95 <= summary["hours"] <= 1.05
    train = load_split(corpus, "train")
    vocabulary = {w for c in train for w in sup(c).text.split()}
    assert len(vocabulary) >= 2000
    assert all(set(sup(c).text) <= set("abcdefghijklmnopqrstuvwxyz' ") for c in train)
    # class balance per split: labels are dealt from shuffled decks
    for split in ("train", "dev", "test", "sv"):
        cuts = load_split(corpus, split)
        emotions = [sup(c).custom["emotion"] for c in cuts]
        counts = [emotions.count(e) for e in EMOTIONS]
        assert max(counts) - min(counts) <= 1, (split, counts)
        intents = [sup(c).custom["intent"] for c in cuts if "intent" in sup(c).custom]
        if split == "train":
            assert set(intents) == set(INTENTS) and len(INTENTS) >= 6
    assert summary["splits"]["train"]["vocabulary"] == len(vocabulary)


def test_splits_are_disjoint_and_sv_speakers_unseen(corpus):
    splits = {s: load_split(corpus, s) for s in ("train", "dev", "test", "sv")}
    ids = [c.id for cuts in splits.values() for c in cuts]
    assert len(ids) == len(set(ids))
    seen = {sup(c).speaker for s in ("train", "dev", "test") for c in splits[s]}
    unseen = {sup(c).speaker for c in splits["sv"]}
    assert len(unseen) >= 20 and not seen & unseen
    train_texts = {sup(c).text for c in splits["train"]}  # spoken commands too
    for s in ("dev", "test"):
        assert not train_texts & {sup(c).text for c in splits[s]}


def test_trials_pair_sv_utterances(corpus):
    sv = {c.id: sup(c).speaker for c in load_split(corpus, "sv")}
    lines = (corpus / "sv_trials.txt").read_text().splitlines()
    labels = []
    for line in lines:
        label, a, b = line.split()
        assert a != b and a in sv and b in sv
        assert int(label) == int(sv[a] == sv[b])
        labels.append(int(label))
    assert sum(labels) == len(labels) - sum(labels) > 100


def test_audio_matches_manifest(corpus):
    for cut in list(load_split(corpus, "dev"))[:20]:
        info = sf.info(cut.recording.sources[0].source)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert info.frames == cut.num_samples
        assert cut.id == cut.recording.id == sup(cut).id
        x = load_mono(cut)
        assert np.isfinite(x).all() and 0.01 < np.abs(x).max() <= 1.0


def _features(cuts):
    return np.stack([features(load_mono(c)) for c in cuts])


@pytest.fixture(scope="module")
def train_features(corpus) -> tuple[list, np.ndarray]:
    """The training split's cuts and their features, computed once for the tests below."""
    train = list(load_split(corpus, "train"))
    return train, _features(train)


def test_emotion_labels_are_audible(corpus, train_features):
    """A linear classifier on MFCC statistics and pitch, trained on train, tested on dev+test."""
    train, train_x = train_features
    held = list(load_split(corpus, "dev")) + list(load_split(corpus, "test"))
    model = NearestCentroid().fit(train_x, [sup(c).custom["emotion"] for c in train])
    acc = accuracy(model.predict(_features(held)), [sup(c).custom["emotion"] for c in held])
    print(f"emotion accuracy {acc:.3f} on {len(held)} held-out utterances")
    assert acc >= 0.8


def test_unseen_speakers_are_separable(corpus, train_features):
    """20 speakers never seen in training: half of each one's utterances make its centroid,
    the other half are classified; the metric comes from the training speakers."""
    train, train_x = train_features
    by_spk: dict[str, list] = {}
    for c in load_split(corpus, "sv"):
        by_spk.setdefault(sup(c).speaker, []).append(c)
    chosen = sorted(by_spk)[:20]
    enrol = [c for s in chosen for c in by_spk[s][: len(by_spk[s]) // 2]]
    probe = [c for s in chosen for c in by_spk[s][len(by_spk[s]) // 2 :]]
    model = NearestCentroid().fit(_features(enrol), [sup(c).speaker for c in enrol],
                                  within=(train_x, [sup(c).speaker for c in train]))
    acc = accuracy(model.predict(_features(probe)), [sup(c).speaker for c in probe])
    print(f"speaker accuracy {acc:.3f} on {len(probe)} utterances of 20 unseen speakers")
    assert acc >= 0.8


def test_same_seed_same_corpus_whatever_the_processes(tmp_path, caplog):
    cfg = SynthConfig(hours=0.01, seed=3, speakers=30, sv_speakers=10)
    with caplog.at_level("WARNING", logger="bestrq.synth"):
        a = synthesize(tmp_path / "a", cfg, jobs=1, progress=False)
    # a corpus too small for every split says which are empty (it said nothing; pre-training then failed)
    empty = [s for s in ("train", "dev", "test", "sv") if not a["splits"][s]["utterances"]]
    empty += ["sv_trials.txt"] * (a["sv_trials"]["target"] + a["sv_trials"]["nontarget"] == 0)
    assert empty and f"{', '.join(empty[:-1])} and {empty[-1]} are empty: 0.01 h is too little" in caplog.text
    b = synthesize(tmp_path / "b", cfg, jobs=2, progress=False)
    # the cut-off at the requested hours may fall one utterance apart (see below)
    assert abs(a["utterances"] - b["utterances"]) <= 1
    # with the same number of processes, each renders the same utterances in the same order: the same
    # waveforms, to the sample (the next utterance went to whichever process was free, and the seed-0
    # demo corpus came out 804 or 805 utterances long from run to run)
    c = synthesize(tmp_path / "c", cfg, jobs=2, progress=False)
    assert {k: v for k, v in c.items() if k != "generation"} == {k: v for k, v in b.items() if k != "generation"}
    assert all(x.num_samples == y.num_samples for split in ("train", "dev", "test", "sv")
               for x, y in zip(load_split(tmp_path / "b", split), load_split(tmp_path / "c", split), strict=True))
    for split in ("train", "sv"):
        ca, cb = load_split(tmp_path / "a", split), load_split(tmp_path / "b", split)
        for x, y in zip(ca, cb):
            assert (x.id, sup(x).text, sup(x).speaker, sup(x).custom) == (y.id, sup(y).text, sup(y).speaker, sup(y).custom)
            # eSpeak NG's pitch-flutter phase carries over between utterances of a process
            # (a static in its wave generator): durations agree within 20 ms, not to the sample
            assert abs(x.num_samples - y.num_samples) <= 0.02 * 16000
    # no stray files from workers that ran ahead of the cut-off
    assert len(list((tmp_path / "b" / "audio").rglob("*.flac"))) == b["utterances"]


def test_rerun_reuses_and_refuses_other_settings(tmp_path):
    cfg = SynthConfig(hours=0.005, seed=1, speakers=30, sv_speakers=10)
    first = synthesize(tmp_path, cfg, jobs=1, progress=False)
    # an interrupted run: summary gone, audio kept; the rerun completes it identically
    (tmp_path / "summary.json").unlink()
    (tmp_path / "cuts_train.jsonl.gz").unlink()
    again = synthesize(tmp_path, cfg, jobs=1, progress=False)
    assert again["utterances"] == first["utterances"] and again["hours"] == first["hours"]
    with pytest.raises(FileExistsError, match="other settings"):
        synthesize(tmp_path, SynthConfig(hours=0.005, seed=2, speakers=30, sv_speakers=10), progress=False)
    # a corpus of the older planner (settings without its version): kept when finished, refused when not, as
    # its audio would get other transcripts
    settings = tmp_path / "synth_settings.json"
    settings.write_text(json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "plan"}))
    assert synthesize(tmp_path, cfg, jobs=1, progress=False)["utterances"] == first["utterances"]
    (tmp_path / "summary.json").unlink()
    with pytest.raises(FileExistsError, match="unfinished corpus begun by an older planner"):
        synthesize(tmp_path, cfg, jobs=1, progress=False)


def test_more_speakers_than_voice_pairs_reuse_each_pair_once_per_round():
    pairs = len(ACCENTS) * len(VARIANTS)
    speakers = make_speakers(pairs + 100, np.random.default_rng(0))
    voices = [s.voice for s in speakers]
    assert len(set(voices[:pairs])) == pairs  # every pair once before any repeats
    assert len(set(voices[pairs:])) == 100
    recipes = {(s.voice, s.pitch, s.rate, s.warp) for s in speakers}
    assert len(recipes) == len(speakers) and len({s.id for s in speakers}) == len(speakers)
    # up to one round of pairs, the same seed gives the same speakers as it always did: one draw
    # without replacement (the only form before more speakers were allowed)
    all_pairs = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    before = np.random.default_rng(5).choice(pairs, size=40, replace=False)
    assert [s.voice for s in make_speakers(40, np.random.default_rng(5))] == [all_pairs[k] for k in before]
    assert SynthConfig(hours=10).n_speakers() == 1250  # `synth --hours 10` takes its default


def test_command_heldout_and_trial_settings_shape_the_corpus(tmp_path):
    cfg = SynthConfig(hours=0.05, seed=4, speakers=8, sv_speakers=2, commands=1.0, heldout=0.3, trials=3)
    _, utterances = plan(cfg)
    first = [next(utterances) for _ in range(400)]
    seen = [u for u in first if u.split != "sv"]
    assert all(u.intent for u in first)  # every utterance a command
    heldout = sum(u.split in ("dev", "test") for u in seen) / len(seen)
    assert heldout == pytest.approx(0.6, abs=0.08)
    summary = synthesize(tmp_path / "c", cfg, jobs=1, progress=False)
    sv = summary["splits"]["sv"]["utterances"]
    assert summary["sv_trials"] == {"target": 3 * sv, "nontarget": 3 * sv}
    settings = json.loads((tmp_path / "c" / "synth_settings.json").read_text())
    assert settings["commands"] == 1.0 and settings["trials"] == 3 and settings["heldout"] == 0.3
    # default values are not recorded: corpora made before these settings existed stay valid
    synthesize(tmp_path / "d", SynthConfig(hours=0.02, seed=4, speakers=4, sv_speakers=1), jobs=1, progress=False)
    assert set(json.loads((tmp_path / "d" / "synth_settings.json").read_text())) == {
        "hours", "seed", "speakers", "sv_speakers", "plan"}


PROBE = SynthConfig(hours=4, seed=200, speakers=160, sv_speakers=40, commands=0.5, heldout=0.25, trials=2)


def test_probe_corpus_transcripts_stay_on_their_side_of_train():
    """The study's probe corpus (4 h, half the utterances commands): no dev or test transcript,
    command or sentence, occurs in train. Commands were exempt, and 49% of the intent test
    utterances had their exact transcript in train."""
    _, utterances = plan(PROBE)
    utts = [next(utterances) for _ in range(4000)]
    train = {u.text for u in utts if u.split == "train"}
    for split in ("dev", "test"):
        held = [u for u in utts if u.split == split]
        assert sum(u.intent is not None for u in held) > 300
        assert not [u.text for u in held if u.text in train], split
    assert {u.intent for u in utts if u.split == "test" and u.intent} == set(INTENTS)


def test_heldout_avoids_given_texts_and_keeps_dealt_intents():
    """Dev and test leave out the texts of another corpus (here: the same plan's own, which they
    would otherwise all repeat); a redrawn command keeps its dealt intent, so each split's intents
    stay balanced."""
    _, utterances = plan(PROBE)
    first = [next(utterances) for _ in range(1500)]
    avoid = {u.text for u in first}
    _, utterances = plan(PROBE, avoid_texts=avoid)
    again = [next(utterances) for _ in range(1500)]
    held = [u for u in again if u.split in ("dev", "test")]
    assert len(held) > 500 and not [u.text for u in held if u.text in avoid]
    assert any(u.text in avoid for u in again if u.split == "train")  # train may use them
    for split in ("train", "dev", "test", "sv"):
        counts = Counter(u.intent for u in again if u.split == split and u.intent)
        assert set(counts) == set(INTENTS) and max(counts.values()) - min(counts.values()) <= 1, (split, counts)


def test_a_transcript_that_cannot_be_made_unique_is_an_error(monkeypatch):
    """No silent duplicate after some tries: with one phrasing per command, the first held-out
    command after a training one cannot differ from it."""
    monkeypatch.setattr(synth_corpus, "make_command", lambda rng, intent: Command("turn on the lamp", intent))
    _, utterances = plan(SynthConfig(hours=1, seed=0, speakers=8, sv_speakers=2, commands=1.0))
    with pytest.raises(RuntimeError, match=r"split (train|dev|test|sv): 1000 draws of a \w+ command all occur"):
        for _ in range(200):
            next(utterances)


def test_avoid_reads_other_corpora_and_is_part_of_the_settings(tmp_path):
    """A probe corpus made from the same seed as its 'pre-training' corpus would repeat all its
    texts; with ``avoid`` its dev and test hold none. A rerun resumes; another avoided corpus is refused."""
    cfg = SynthConfig(hours=0.03, seed=3, speakers=12, sv_speakers=4, commands=0.5, heldout=0.3)
    pre, probe = tmp_path / "pre", tmp_path / "probe"
    synthesize(pre, cfg, jobs=1, progress=False)
    with pytest.raises(TypeError, match="avoid"):
        SynthConfig(avoid=str(pre))
    avoiding = SynthConfig(**{**asdict(cfg), "avoid": (str(pre),)})
    made = synthesize(probe, avoiding, jobs=1, progress=False)
    assert set(made["settings"]["avoid"]) == {"texts", "sha1"}
    assert synthesize(probe, avoiding, jobs=1, progress=False) == made
    with pytest.raises(FileExistsError, match="other settings"):
        synthesize(probe, SynthConfig(**{**asdict(cfg), "avoid": (str(probe),)}), progress=False)

    leaks = overlaps(probe, pre)
    n_dev, n_test = len(load_split(probe, "dev")), len(load_split(probe, "test"))
    assert n_dev and n_test
    assert leaks["probe_test_texts_in_pretraining"] == leaks["probe_dev_texts_in_pretraining"] == 0
    assert leaks["probe_test_texts_in_probe_train"] == leaks["probe_dev_texts_in_probe_train"] == 0
    # the same seed: the same speakers, every verification voice heard in 'pre-training'
    assert leaks["sv_voices"] == leaks["sv_voices_in_pretraining"] == 4
    same = overlaps(pre, pre)  # without avoid: every held-out text is in the corpus itself
    assert same["probe_test_texts_in_pretraining"] == len(load_split(pre, "test"))


def _manifests(folder, split, items):
    """Write a split of (transcript, speaker) cuts, without audio: the manifests are all that is read."""
    cuts = []
    for i, (text, speaker) in enumerate(items):
        cut_id = f"{split}-{i}"
        rec = Recording(id=cut_id, sources=[AudioSource(type="file", channels=[0], source="none.flac")],
                        sampling_rate=16000, num_samples=16000, duration=1.0)
        sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=1.0, text=text, speaker=speaker)
        cuts.append(MonoCut(id=cut_id, start=0.0, duration=1.0, channel=0, recording=rec, supervisions=[sup]))
    save_split(folder, split, CutSet.from_cuts(cuts))


def _speakers(folder, voices):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(asdict(Speaker(spk, *voice.split("+"), 50.0, 40.0, 170.0, 0.0, 1.0))) for spk, voice in voices]
    (folder / SPEAKERS).write_text("".join(line + "\n" for line in lines))


def test_overlaps_counts_utterances_and_voices(tmp_path):
    probe, pre = tmp_path / "probe", tmp_path / "pre"
    _speakers(probe, [("a", "en+m1"), ("b", "en+m1"), ("c", "en-us+f2"), ("d", "en-029+m3")])
    _manifests(probe, "train", [("turn on the lamp", "d"), ("one two", "d")])
    _manifests(probe, "dev", [("one two", "d"), ("three", "d")])
    _manifests(probe, "test", [("turn on the lamp", "d"), ("turn on the lamp", "d"), ("four", "d"), ("five", "d")])
    _manifests(probe, "sv", [("six", "a"), ("seven", "b"), ("eight", "c")])
    # en-us+f2 is in the speakers file but no utterance of the pre-training corpus has it
    _speakers(pre, [("p1", "en+m1"), ("p2", "en-us+f2")])
    _manifests(pre, "train", [("five", "p1")])
    _manifests(pre, "dev", [("three", "p1"), ("four", "p1")])
    assert overlaps(probe, pre) == {
        "probe_test_texts_in_probe_train": 2, "probe_dev_texts_in_probe_train": 1,  # utterances, not texts
        "probe_test_texts_in_pretraining": 2, "probe_dev_texts_in_pretraining": 1,
        "sv_voices": 2, "sv_voices_in_pretraining": 1, "sv_voices_in_pretraining_list": ["en+m1"],
    }
    (pre / SPEAKERS).unlink()  # a corpus that synth did not make: its voices are unknown
    assert overlaps(probe, pre)["sv_voices_in_pretraining"] is None
    alone = overlaps(probe, None)
    assert alone["probe_test_texts_in_pretraining"] is None and alone["sv_voices"] == 2
