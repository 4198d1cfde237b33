"""`bestrq study` end to end: every stage, the results' schema, resuming, and its settings."""

from __future__ import annotations

import json
import shutil

import pytest

from bestrq.cli import main
from bestrq.probes.stats import VERDICTS, Estimate, verdict


@pytest.mark.slow
def test_the_quick_study_runs_every_stage_and_resumes_without_redoing_work(tmp_path, capsys):
    """`bestrq study --config study_quick`: corpora, three pre-training runs of the same updates, four
    encoders probed with two seeds, results.json in the documented schema; run again, it redoes only
    what is missing, and gives the same figures."""
    out = tmp_path / "study"
    args = ["study", "--config", "study_quick", "--out", str(out), "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"commit", "machine", "command", "seconds", "pretraining", "tasks"} <= results.keys()
    pre = results["pretraining"]
    assert set(pre) == {"bestrq", "wav2vec2", "bestrq_paper_masking", "wav2vec2_conv"}
    assert {p["steps"] for p in pre.values() if p["role"] != "timing"} == {12}  # the same updates for all
    assert pre["wav2vec2_conv"]["steps"] == 4 and pre["wav2vec2_conv"]["config"] == "wav2vec2_tiny"
    for p in pre.values():
        assert p["seconds"] > 0 and p["audio_hours"] > 0 and 0 < p["dev_reference"] < 1
    assert set(results["tasks"]) == {"asr", "speaker_id", "speaker_eer", "emotion", "intent"}
    for task, t in results["tasks"].items():
        assert set(t["models"]) == {"bestrq", "wav2vec2", "random", "fbank"} and t["n_test"] > 0
        for m in t["models"].values():
            assert m["ci"][0] <= m["value"] <= m["ci"][1] and len(m["seeds"]) == 2
    assert results["tasks"]["speaker_eer"]["n_test"] > results["tasks"]["speaker_id"]["n_test"]  # trials
    assert "bestrq-wav2vec2" in results["differences"]["asr"]
    assert {task: t["unit"] for task, t in results["tasks"].items()} == {
        "asr": "utterance", "speaker_id": "speaker", "speaker_eer": "speaker", "emotion": "utterance",
        "intent": "utterance"}  # the speaker tasks resample speakers
    for task, pairs in results["differences"].items():  # every comparison ends in a verdict, with its margin
        metric = results["tasks"][task]["metric"]
        for d in pairs.values():
            assert d["margin"] == {"cer": 0.015, "accuracy": 0.03, "eer": 0.01}[metric]
            stored = Estimate(d["value"], tuple(d["ci"]), [], 0, tuple(d["ci90"]))  # the verdict of what it stores
            assert d["verdict"] in VERDICTS and d["verdict"] == verdict(stored, metric, d["margin"])
    report = (out / "report.md").read_text()
    assert "## Pre-training at equal updates" in report and "[" in report
    assert "BEST-RQ against wav2vec 2.0: " in report and "similar" not in report
    for png in ("pretraining.png", "tasks.png", "layer_weights.png"):
        assert (out / png).stat().st_size > 1000

    # an interrupted study: a probe result and the last pre-training checkpoint lost
    (out / "probes" / "wav2vec2" / "seed-1" / "probe_emotion.json").unlink()
    shutil.rmtree(max((out / "pretrain" / "bestrq_paper_masking" / "checkpoints").iterdir()))
    capsys.readouterr()
    assert main(args) == 0
    sessions = json.loads((out / "sessions.json").read_text())
    assert len(sessions) == 2
    assert [s["stage"] for s in sessions[1]["stages"]] == ["corpora", "pretrain bestrq_paper_masking",
                                                           "probes wav2vec2 seed 1", "results"]
    assert all(0 <= s["at"] <= sessions[1]["seconds"] for s in sessions[1]["stages"])
    again = json.loads((out / "results.json").read_text())
    for task, t in results["tasks"].items():
        for name, m in t["models"].items():
            assert again["tasks"][task]["models"][name]["seeds"] == pytest.approx(m["seeds"]), (task, name)
    assert again["seconds"] == pytest.approx(sum(s["seconds"] for s in sessions), abs=10)  # both sessions


def test_study_settings_are_checked():
    from bestrq.config import ConfigError
    from bestrq.study import load_study_config

    with pytest.raises(ConfigError, match=r"probe\.models: 'hubert' is not one of"):
        load_study_config("study_quick", ["probe.models=[bestrq,hubert]"])
    with pytest.raises(ConfigError, match=r"probe\.seeds: must be >= 1"):
        load_study_config("study_quick", ["probe.seeds=0"])
    with pytest.raises(ConfigError, match="unknown key pretrain.stepz"):
        load_study_config("study_quick", ["pretrain.stepz=3"])
    assert load_study_config("study", ["probe.margins.cer=0.02"]).probe.margins.cer == 0.02
    with pytest.raises(ConfigError, match=r"probe\.margins\.cer: must be > 0"):
        load_study_config("study", ["probe.margins.cer=0"])


@pytest.mark.slow
def test_sigterm_during_the_probes_stops_with_143_and_keeps_the_sessions_time(tmp_path):
    """A scheduler's SIGTERM outside pre-training (which saves a checkpoint itself) ends the study with
    128 + 15 and still records this session's seconds, so the study's total time stays the sum."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "bestrq", "study", "--config", "study_quick", "--out", str(out),
                             "--quiet", "--set", "probe.epochs=50", "--set", "probe.patience=50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probes = out / "probes" / "bestrq" / "seed-0" / "encoder.json"
    deadline = time.monotonic() + 300
    while not probes.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert probes.exists(), "the study never reached its probes"
    time.sleep(2)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 30
    session = json.loads((out / "sessions.json").read_text())[-1]
    last = session["stages"][-1]
    assert last["stage"] == "pretrain wav2vec2_conv" and session["seconds"] > last["at"] + 1.5


def test_a_probe_result_is_reused_across_a_new_setting_at_its_default_but_not_a_changed_one(tmp_path):
    """A study resumed after a release that added a probe setting keeps its finished probes (the new
    setting at its default is what they ran with); a result of other settings is redone."""
    from dataclasses import asdict

    from bestrq.study import _done, load_study_config, probe_config

    cfg = probe_config(load_study_config("study_quick", []), seed=1)
    record = {"name": "fbank", "spec": "fbank", "seed": 1}
    path = tmp_path / "probe_emotion.json"
    older = {k: v for k, v in asdict(cfg).items() if k != "layer"}  # written before `layer` existed
    scores = {"test": {"accuracy": 0.5}, "curve": [{"epoch": 1, "dev_accuracy": 0.4}], "layer_weights": [1.0],
              "sheets": {}, "encoder": record}
    path.write_text(json.dumps({"config": older, **scores}))
    assert _done(path, cfg, record)
    path.write_text(json.dumps({"config": {**older, "epochs": cfg.epochs + 1}, **scores}))
    assert not _done(path, cfg, record)
    path.write_text(json.dumps({"config": {**older, "layer": 2}, **scores}))
    assert not _done(path, cfg, record)
    assert not _done(path, cfg, {**record, "seed": 2})
    # a speaker result whose sheets name no speakers (written before they did) is probed again
    speaker = tmp_path / "probe_speaker.json"
    sheet = {"correct": [1, 0], "unit": [3, 5]}
    speaker.write_text(json.dumps({"config": older, **scores, "sheets": {"accuracy": sheet}}))
    assert _done(speaker, cfg, record)
    speaker.write_text(json.dumps({"config": older, **scores, "sheets": {"accuracy": {"correct": [1, 0]}}}))
    assert not _done(speaker, cfg, record)


def test_a_sigterm_while_audio_is_read_stops_the_study_instead_of_counting_a_bad_clip(tmp_path, monkeypatch):
    """The study's SIGTERM arrives as an exception in whatever runs; while a clip is decoded, lhotse
    and our loader skip a clip whose decoding raises an Exception, as bad audio. A run stopped there
    once recorded a good clip as unreadable in its hidden-state cache. The stop must pass through."""
    import soundfile as sf
    from conftest import tone, write_audio
    from lhotse import CutSet, Recording

    from bestrq.data.loader import AudioDataset
    from bestrq.study import Stopped

    cut = Recording.from_file(write_audio(tmp_path / "a.flac", tone(220, 0.5))).to_cut()

    def stopped(*args, **kwargs):
        raise Stopped(15)

    monkeypatch.setattr(sf, "read", stopped)
    monkeypatch.setattr(sf, "SoundFile", stopped)
    with pytest.raises(Stopped):
        AudioDataset(sample_rate=16000, min_duration=0.0)[CutSet.from_cuts([cut])]
