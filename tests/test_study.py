"""`bestrq study` end to end: every stage, the results' schema, resuming, and its settings."""

from __future__ import annotations

import json
import shutil

import pytest

from bestrq.cli import main
from bestrq.probes.stats import VERDICTS, Estimate, verdict


@pytest.mark.slow
def test_the_quick_study_runs_every_stage_and_resumes_without_redoing_work(tmp_path, capsys):
    """`bestrq study --config study_quick`: corpora, a learning-rate sweep, two pre-training runs of each
    objective with the swept rate, the ablation and the timing run, four encoders probed once per run,
    results.json in the documented schema; run again, it redoes only what is missing, and gives the
    same figures; on another machine, from its record alone, it redoes only what needs weights it lacks."""
    out = tmp_path / "study"
    args = ["study", "--config", "study_quick", "--out", str(out), "--quiet", "--set",
            f"record={tmp_path / 'record'}"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"commit", "machine", "command", "seconds", "stages", "leakage", "pretraining", "tasks"} <= results.keys()
    pre = results["pretraining"]
    assert set(pre) == {"bestrq", "wav2vec2", "bestrq_paper_masking"}
    sweep = pre["bestrq"]["sweep"]
    assert [t["lr"] for t in sweep["tried"]] == [1e-3, 2e-3] and sweep["steps"] == 4
    best = max(sweep["tried"], key=lambda t: t["dev_accuracy"])["lr"]
    assert sweep["chosen"] == best and pre["wav2vec2"]["sweep"] is None  # no rates to sweep: the config's
    assert [r["peak_lr"] for r in pre["bestrq"]["runs"]] == [best, best] == [pre["bestrq_paper_masking"]["peak_lr"]] * 2
    assert [r["peak_lr"] for r in pre["wav2vec2"]["runs"]] == [1e-3, 1e-3]  # wav2vec2_fbank_tiny's own
    for name in ("bestrq", "wav2vec2"):
        assert [r["seed"] for r in pre[name]["runs"]] == [0, 1] and pre[name]["parameters"] > 0
        assert pre[name]["time_per_update"]["windows"] >= 3  # timing windows of both runs
        lo, hi = pre[name]["time_per_update"]["ci"]
        assert lo <= pre[name]["time_per_update"]["value"] <= hi
    losses = [[c["loss"] for c in r["curve"] if c["split"] == "train"] for r in pre["bestrq"]["runs"]]
    assert losses[0] != losses[1]  # two seeds: other initial weights, other batches
    assert {r["steps"] for p in pre.values() for r in p["runs"]} == {12}
    for p in pre.values():
        assert p["seconds"] > 0 and p["audio_hours"] > 0 and 0 < p["dev_reference"] < 1
    # the timing stage: 2 rounds of every model in turn on this machine, 6 updates each, logged every update,
    # the first window of each left out
    timed = results["timing"]
    assert timed["machine"] == results["machine"] and set(timed["models"]) == {"bestrq", "wav2vec2", "wav2vec2_conv"}
    assert all(t["windows"] == 2 * 5 for t in timed["models"].values())
    assert set(results["time_per_update_vs_bestrq"]) == {"wav2vec2", "wav2vec2_conv"}
    conv = json.loads((out / "pretrain" / "timing" / "round-1" / "wav2vec2_conv" / "config.json").read_text())
    assert conv["wav2vec2"]["feature_encoder"] != "fbank" and conv["train"]["seed"] == 1
    leak = results["leakage"]
    assert leak["probe_test_texts_in_probe_train"] == 0 and leak["probe_test_texts_in_pretraining"] == 0
    assert set(results["tasks"]) == {"asr", "speaker_id", "speaker_eer", "emotion", "intent"}
    for task, t in results["tasks"].items():
        assert set(t["models"]) == {"bestrq", "wav2vec2", "random", "fbank"} and t["n_test"] > 0
        assert t["unit"] == "speaker"  # every task resamples speakers
        for m in t["models"].values():
            assert m["ci"][0] <= m["value"] <= m["ci"][1] and len(m["runs"]) == 2 == len(m["probes"])
            assert m["value"] == pytest.approx(sum(m["runs"]) / 2)
    assert results["tasks"]["speaker_eer"]["n_test"] > results["tasks"]["speaker_id"]["n_test"]  # trials
    assert "bestrq-wav2vec2" in results["differences"]["asr"]
    for task, pairs in results["differences"].items():  # every comparison ends in a verdict, with its margin
        metric = results["tasks"][task]["metric"]
        assert results["tasks"][task]["margin"] == {"cer": 0.015, "accuracy": 0.03, "eer": 0.01}[metric]
        for pair, d in pairs.items():
            assert d["margin"] == results["tasks"][task]["margin"]
            stored = Estimate(d["value"], tuple(d["ci"]), [], 0, tuple(d["ci90"]))  # the verdict of what it stores
            assert d["verdict"] in VERDICTS and d["verdict"] == verdict(stored, metric, d["margin"])
            c = results["tasks"][task]["comparisons"][pair]
            assert (c["diff"], c["ci95"], c["ci90"], c["verdict"]) == (d["value"], d["ci"], d["ci90"], d["verdict"])
    from bestrq.study.summary import NAMES, block

    quoted = {line.split(" (")[0].strip("| "): line for line in block(results).splitlines() if line.startswith("| ")}
    for task, pairs in results["differences"].items():  # what the docs quote: each comparison in its verdict
        cells = [c.strip(" |") for c in quoted[NAMES[task]].split(" | ")]
        said = [c.rsplit("**", 2)[1] for c in cells if c.endswith("**")]
        assert said == [pairs["bestrq-wav2vec2"]["verdict"], pairs["bestrq-random"]["verdict"]], task
    report = (out / "report.md").read_text()
    assert "## Pre-training at equal updates" in report and "[" in report and "## Leakage" in report
    assert "BEST-RQ against wav2vec 2.0: " in report and "similar" not in report
    for png in ("pretraining.png", "tasks.png", "layer_weights.png"):
        assert (out / png).stat().st_size > 1000
    # the random init of run 1 is run 1's initial weights, not run 0's
    random_init = json.loads((out / "probes" / "random" / "run-1" / "seed-0" / "encoder.json").read_text())
    assert random_init["seed"] == 1 and random_init["spec"].endswith("bestrq/run-1/config.json")

    # an interrupted study: a probe result and the last pre-training checkpoint lost (the run unfinished)
    record = out.parent / "record"
    assert (record / "probes" / "wav2vec2" / "run-1" / "seed-0" / "probe_emotion.json").is_file()
    assert not any(p.name in ("checkpoints", "cache", "data") for p in record.rglob("*"))
    for folder in (out, record):
        (folder / "probes" / "wav2vec2" / "run-1" / "seed-0" / "probe_emotion.json").unlink()
        (folder / "pretrain" / "bestrq_paper_masking" / "finished.json").unlink()
    shutil.rmtree(max((out / "pretrain" / "bestrq_paper_masking" / "checkpoints").iterdir()))
    capsys.readouterr()
    assert main(args) == 0
    sessions = json.loads((out / "sessions.json").read_text())
    assert len(sessions) == 2
    assert [s["stage"] for s in sessions[1]["stages"]] == ["corpora", "pretrain bestrq_paper_masking",
                                                           "probes wav2vec2 run 1 seed 0", "results"]
    assert all(0 <= s["at"] <= sessions[1]["seconds"] for s in sessions[1]["stages"])
    again = json.loads((out / "results.json").read_text())
    for task, t in results["tasks"].items():
        for name, m in t["models"].items():
            assert again["tasks"][task]["models"][name]["runs"] == pytest.approx(m["runs"]), (task, name)
    assert again["seconds"] == pytest.approx(sum(s["seconds"] for s in sessions), abs=10)  # both sessions

    # another machine: the study folder gone, its record kept; one probe of BEST-RQ's run 1 was still to
    # make, whose weights stayed on the first machine: that run alone is trained and probed again
    shutil.rmtree(out)
    (record / "probes" / "bestrq" / "run-1" / "seed-0" / "probe_intent.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "files restored from the study's record" in capsys.readouterr().out
    sessions = json.loads((out / "sessions.json").read_text())
    assert len(sessions) == 3
    assert [s["stage"] for s in sessions[2]["stages"]] == ["corpora", "pretrain bestrq/run-1",
                                                           "probes bestrq run 1 seed 0", "results"]
    third = json.loads((out / "results.json").read_text())
    for task, t in again["tasks"].items():
        for name, m in t["models"].items():
            runs = third["tasks"][task]["models"][name]["runs"]
            assert runs[0] == pytest.approx(m["runs"][0]), (task, name)  # made on the first machine
            if name != "bestrq":
                assert runs == pytest.approx(m["runs"]), (task, name)
    assert third["pretraining"]["wav2vec2"]["runs"] == again["pretraining"]["wav2vec2"]["runs"]
    assert len(sessions) == len(third["sessions"]) and (record / "sessions.json").read_text() == (
        out / "sessions.json").read_text()


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
    with pytest.raises(ConfigError, match=r"pretrain\.bestrq_lrs: give distinct learning rates > 0"):
        load_study_config("study", ["pretrain.bestrq_lrs=[1e-3,0]"])
    with pytest.raises(ConfigError, match=r"pretrain\.runs: must be >= 1"):
        load_study_config("study", ["pretrain.runs=0"])


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
    probes = out / "probes" / "bestrq" / "run-0" / "seed-0" / "encoder.json"
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
    assert last["stage"] == "pretrain bestrq/run-0" and session["seconds"] > last["at"] + 1.5


def test_a_probe_result_is_reused_across_a_new_setting_at_its_default_but_not_a_changed_one(tmp_path):
    """A study resumed after a release that added a probe setting keeps its finished probes (the new
    setting at its default is what they ran with); a result of other settings is redone."""
    from dataclasses import asdict

    from bestrq.study import load_study_config
    from bestrq.study.probing import _done, probe_config

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
    # a result whose sheets name no speakers (written before they did) is probed again, whatever its task
    for task in ("speaker", "emotion"):
        result = tmp_path / f"probe_{task}.json"
        sheet = {"correct": [1, 0], "unit": ["s3", "s5"]}
        result.write_text(json.dumps({"config": older, **scores, "sheets": {"accuracy": sheet}}))
        assert _done(result, cfg, record)
        result.write_text(json.dumps({"config": older, **scores, "sheets": {"accuracy": {"correct": [1, 0]}}}))
        assert not _done(result, cfg, record)
        assert _done(result, cfg, record, units=False)  # a corpus that names no speakers: none to wait for


def test_a_sigterm_while_audio_is_read_stops_the_study_instead_of_counting_a_bad_clip(tmp_path, monkeypatch):
    """The study's SIGTERM arrives as an exception in whatever runs; while a clip is decoded, lhotse
    and our loader skip a clip whose decoding raises an Exception, as bad audio. A run stopped there
    once recorded a good clip as unreadable in its hidden-state cache. The stop must pass through."""
    import soundfile as sf
    from conftest import tone, write_audio
    from lhotse import CutSet, Recording

    from bestrq.data.loader import AudioDataset
    from bestrq.study.run import Stopped

    cut = Recording.from_file(write_audio(tmp_path / "a.flac", tone(220, 0.5))).to_cut()

    def stopped(*args, **kwargs):
        raise Stopped(15)

    monkeypatch.setattr(sf, "read", stopped)
    monkeypatch.setattr(sf, "SoundFile", stopped)
    with pytest.raises(Stopped):
        AudioDataset(sample_rate=16000, min_duration=0.0)[CutSet.from_cuts([cut])]


def test_time_per_update_comes_from_windows_of_training_time_only():
    """A run's timing windows are stretches of its logged windows, each its update time over its updates;
    a window whose logged time held a validation (records from before update_seconds) falls back on elapsed."""
    from bestrq.study.pretraining import time_per_update, update_windows

    records = [{"step": s, "split": "train", "update_seconds": 1.0 if s <= 50 else 2.0, "elapsed": 0.0}
               for s in range(10, 110, 10)]
    records.insert(5, {"step": 50, "split": "valid", "accuracy": 0.1})
    assert update_windows(records, windows=5) == pytest.approx([1.0, 1.0, 1.5, 2.0, 2.0])
    older = [{"step": s, "split": "train", "elapsed": 3.0 * s} for s in range(10, 70, 10)]
    assert update_windows(older, windows=3) == pytest.approx([3.0, 3.0, 3.0])
    t = time_per_update([[1.0, 1.0, 1.5, 2.0, 2.0]])  # one run: a bootstrap over its windows
    assert t["value"] == pytest.approx(1.5) and t["windows"] == 5 and 1.0 < t["ci"][0] < 1.5 < t["ci"][1] < 2.0


def test_time_intervals_hold_the_variation_between_runs_and_rounds_and_ratios_pair_by_round():
    """Runs of 0.9, 1.0 and 1.1 s per update, each steady within itself: the interval is Student t over the
    3 runs (2 degrees of freedom: 1 +- 4.30 x 0.058), not a bootstrap over 30 windows taken as independent
    (about +-0.03). A ratio is taken round by round: a drift of the machine that slows both models in a round
    cancels, and a ratio that moves from round to round widens its interval."""
    from bestrq.study.pretraining import time_per_update, time_ratio

    runs = [[s + e for e in (-0.01, 0.0, 0.01) * 3 + (0.0,)] for s in (0.9, 1.0, 1.1)]
    t = time_per_update(runs, unit="run")
    assert t["value"] == pytest.approx(1.0) and (t["units"], t["windows"], t["unit"]) == (3, 30, "run")
    assert t["ci"] == pytest.approx([1 - 4.303 * 0.1 / 3 ** 0.5, 1 + 4.303 * 0.1 / 3 ** 0.5], abs=0.01)
    drift = [1.0, 1.5, 2.0]  # the machine slows from round to round; wav2vec 2.0 takes twice BEST-RQ's time
    bestrq = [[d * x for x in (0.99, 1.0, 1.01)] for d in drift]
    r = time_ratio([[2 * x for x in w] for w in bestrq], bestrq)
    assert r["value"] == pytest.approx(2.0) and r["ci"] == pytest.approx([2.0, 2.0]) and r["units"] == 3
    moving = time_ratio([[k * x for x in w] for k, w in zip((1.7, 1.9, 2.1), bestrq)], bestrq)
    assert moving["value"] == pytest.approx((1.7 * 1.9 * 2.1) ** (1 / 3))
    assert moving["ci"][0] < 1.5 and moving["ci"][1] > 2.3  # t over 3 rounds, not 9 windows
    one = time_ratio([[3.0, 3.2, 2.8]], [[1.0, 1.1, 0.9]])  # one round: a bootstrap over its windows
    assert one["value"] == pytest.approx(3.0) and one["ci"][0] < 3.0 < one["ci"][1] and one["units"] == 1
    with pytest.raises(ValueError):
        time_ratio([[1.0]], [[1.0], [2.0]])  # rounds that do not pair up


def test_a_run_made_with_another_seed_or_learning_rate_is_refused_and_margins_stay_fixed(tmp_path):
    """A resumed study whose preset (or sweep) changed since its runs were made stops with their settings
    named, rather than mix runs of two plans; margins changed after the study began are refused."""
    from bestrq.config import ConfigError
    from bestrq.study.pretraining import Run, check_planned
    from bestrq.study.sessions import Session

    folder = tmp_path / "bestrq" / "run-1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train": {"seed": 1}, "optim": {"lr": 0.002}}))
    check_planned(Run("bestrq/run-1", "bestrq", "bestrq_tiny", (), 10, "compared", 1, 0.002), folder)
    check_planned(Run("bestrq/run-1", "bestrq", "bestrq_tiny", (), 10, "compared", 1, None), folder)
    with pytest.raises(ConfigError, match=r"made with optim.lr=0.002, but the study now plans optim.lr=0.004"):
        check_planned(Run("bestrq/run-1", "bestrq", "bestrq_tiny", (), 10, "compared", 1, 0.004), folder)
    with pytest.raises(ConfigError, match=r"train.seed=1, .*train.seed=2"):
        check_planned(Run("bestrq/run-1", "bestrq", "bestrq_tiny", (), 10, "compared", 2, 0.002), folder)
    check_planned(Run("x", "bestrq", "bestrq_tiny", (), 10, "compared", 5, 1.0), tmp_path / "none")  # not made yet

    path = tmp_path / "sessions.json"
    first = Session(path, "bestrq study", {"probe": {"margins": {"cer": 0.015}}})
    first.check_margins()
    first.save()
    Session(path, "bestrq study", {"probe": {"margins": {"cer": 0.015}}}).check_margins()
    with pytest.raises(ConfigError, match="probe.margins were .*fixed before the run"):
        Session(path, "bestrq study", {"probe": {"margins": {"cer": 0.03}}}).check_margins()


def test_timing_runs_of_another_machine_are_made_again(tmp_path, monkeypatch):
    """The timing stage compares speed on one machine: a session on another CPU removes the runs made on the
    first, and writes its own name down."""
    from bestrq.study import run as study

    folder = tmp_path / "timing"
    (folder / "round-0" / "bestrq").mkdir(parents=True)
    (folder / "machine.txt").write_text("another CPU, 2 cores\n")
    monkeypatch.setattr(study, "machine", lambda: "this CPU, 2 cores")
    study.same_machine(folder)
    assert not (folder / "round-0").exists() and (folder / "machine.txt").read_text() == "this CPU, 2 cores\n"
    (folder / "round-0").mkdir()
    study.same_machine(folder)  # the same machine: kept
    assert (folder / "round-0").is_dir()


def test_the_record_mirrors_the_small_files_only_and_restores_what_is_missing(tmp_path):
    """The record holds what results are computed from, never the bulk beside it; kept, it follows what the
    study removed; restored, it fills in only what the study folder lacks."""
    from bestrq.study.record import MAX_BYTES, Record

    out, kept = tmp_path / "out", tmp_path / "kept"
    files = {"sessions.json": "[]", "pretrain/bestrq/run-0/metrics.jsonl": "{}\n",
             "pretrain/bestrq/run-0/config.json": "{}", "pretrain/bestrq/run-0/finished.json": "{}",
             "pretrain/bestrq/run-0/checkpoints/step-10/config.json": "{}",  # bulk: a checkpoint's
             "pretrain/timing/machine.txt": "cpu", "probes/fbank/run-0/seed-0/probe_asr.json": "{}",
             "probes/fbank/run-0/seed-0/encoder.json": "{}", "probes/fbank/cache/index.json": "{}",
             "data/probe/summary.json": "{}", "results.json": "{}", "report.md": "#"}
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    record = Record(kept, out)
    record.keep()
    bulk = {"pretrain/bestrq/run-0/checkpoints/step-10/config.json", "probes/fbank/cache/index.json",
            "data/probe/summary.json", "results.json", "report.md"}
    assert {str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file()} == set(files) - bulk
    (out / "probes" / "fbank" / "run-0" / "seed-0" / "probe_asr.json").write_text('{"a": 1}')
    (out / "pretrain" / "timing" / "machine.txt").unlink()
    record.keep()
    assert (kept / "probes" / "fbank" / "run-0" / "seed-0" / "probe_asr.json").read_text() == '{"a": 1}'
    assert not (kept / "pretrain" / "timing").exists()  # removed, and its folder with it

    (out / "sessions.json").write_text("[1]")  # newer here than in the record: kept as it is
    (kept / "pretrain" / "bestrq" / "run-0" / "config.json").unlink()
    (out / "pretrain" / "bestrq" / "run-0" / "metrics.jsonl").unlink()
    assert record.restore() == 1
    assert (out / "pretrain" / "bestrq" / "run-0" / "metrics.jsonl").read_text() == "{}\n"
    assert (out / "sessions.json").read_text() == "[1]"
    (out / "probes" / "fbank" / "run-0" / "seed-0" / "probe_asr.json").write_bytes(b" " * (MAX_BYTES + 1))
    with pytest.raises(ValueError, match="too large for the study's record"):
        record.keep()
    with pytest.raises(ValueError, match="the study's own folder"):
        Record(out, out)


def _results() -> dict:
    """A results.json of two tasks, small enough to check by eye."""
    def est(value, lo, hi):
        return {"value": value, "ci": [lo, hi]}

    def diff(value, lo, hi, lo90, hi90, margin, said):
        return {"value": value, "ci": [lo, hi], "ci90": [lo90, hi90], "margin": margin, "verdict": said}

    return {
        "pretraining": {"bestrq": {"runs": [{}, {}, {}]}, "wav2vec2": {"runs": [{}, {}, {}]}},
        "timing": {"vs_bestrq": {"wav2vec2": {"value": 1.91, "ci": [1.84, 1.98]},
                                 "wav2vec2_conv": {"value": 0.97, "ci": [0.9, 1.05]}}},
        "tasks": {"asr": {"metric": "cer", "higher_is_better": False, "unit": "speaker", "units": 120,
                          "models": {"bestrq": est(0.446, 0.42, 0.47), "wav2vec2": est(0.43, 0.41, 0.45),
                                     "random": est(0.505, 0.48, 0.53)}},
                  "emotion": {"metric": "accuracy", "higher_is_better": True, "unit": "speaker", "units": 120,
                              "models": {"bestrq": est(0.819, 0.79, 0.85), "wav2vec2": est(0.81, 0.78, 0.84),
                                         "random": est(0.70, 0.66, 0.74)}}},
        "differences": {"asr": {"bestrq-wav2vec2": diff(0.016, 0.004, 0.028, 0.006, 0.026, 0.015, "worse"),
                                "bestrq-random": diff(-0.059, -0.07, -0.048, -0.068, -0.05, 0.015, "better")},
                        "emotion": {"bestrq-wav2vec2": diff(0.009, -0.02, 0.035, -0.015, 0.029, 0.03, "equivalent"),
                                    "bestrq-random": diff(0.119, 0.08, 0.16, 0.09, 0.15, 0.03, "better")}}}


def test_the_verdicts_block_states_each_comparison_in_its_verdict_and_fill_keeps_docs_in_step(tmp_path, capsys):
    from bestrq.study.summary import block, blocks

    r = _results()
    text = block(r)
    rows = {line.split(" (")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "44.6 [42.0, 47.0]" in rows["speech recognition"] and "50.5 [48.0, 53.0]" in rows["speech recognition"]
    assert "+1.6 [+0.4, +2.8] (90%: [+0.6, +2.6]), ±1.5: **worse**" in rows["speech recognition"]
    assert "-5.9 [-7.0, -4.8] (90%: [-6.8, -5.0]), ±1.5: **better**" in rows["speech recognition"]
    assert "+0.9 [-2.0, +3.5] (90%: [-1.5, +2.9]), ±3.0: **equivalent**" in rows["emotion recognition"]
    assert "(CER %, lower is better; 120 speakers)" in rows["speech recognition"]
    assert ("BEST-RQ against wav2vec 2.0: *worse* on speech recognition; *equivalent within the margin* on "
            "emotion recognition.") in text
    assert "BEST-RQ against random init: *better* on speech recognition, emotion recognition." in text
    assert "against wav2vec 2.0: *better*, 1.91x [1.84, 1.98]" in text
    assert "with its conv waveform encoder: *inconclusive*, 0.97x [0.90, 1.05]" in text  # an interval over 1
    assert "BEST-RQ 3, wav2vec 2.0 3" in text

    # a doc quotes it between markers; `bestrq report --fill` rewrites it from the results it names
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "results.json").write_text(json.dumps(r))
    doc = tmp_path / "README.md"
    doc.write_text("# Study\n\nIntro.\n\n<!-- verdicts: study/results.json -->\nstale\n<!-- /verdicts -->\n\nAfter.\n")
    assert [(p, body == new) for p, body, new in blocks(doc)] == [("study/results.json", False)]
    assert main(["report", "--fill", str(doc)]) == 0
    assert "1 verdicts block" in capsys.readouterr().out
    assert [(p, body == new) for p, body, new in blocks(doc)] == [("study/results.json", True)]
    filled = doc.read_text()
    assert filled.startswith("# Study\n\nIntro.\n\n") and filled.endswith("<!-- /verdicts -->\n\nAfter.\n")
    r["differences"]["emotion"]["bestrq-wav2vec2"]["verdict"] = "inconclusive"  # a rerun that changed one verdict
    (tmp_path / "study" / "results.json").write_text(json.dumps(r))
    assert [body == new for _, body, new in blocks(doc)] == [False]

    doc.write_text("<!-- verdicts: study/missing.json -->\n<!-- /verdicts -->\n")
    assert main(["report", "--fill", str(doc)]) == 2
    assert "names study/missing.json, which is not a file" in capsys.readouterr().err
    doc.write_text("<!-- verdicts: study/results.json -->\nno end marker\n")
    assert main(["report", "--fill", str(doc)]) == 2
    assert "without its end marker" in capsys.readouterr().err
