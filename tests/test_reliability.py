"""Faults inflicted on pre-training: kills, signals, NaNs, bad audio, hostile files, a failing rank,
and restarts that come at once after a crash (a SIGKILL, torchrun's --max-restarts, a scheduler's
SIGTERM then SIGKILL).

Every run here must either finish with the weights an uninterrupted run reaches, or stop
with a clear message and a loadable last checkpoint; no checkpoint is ever lost or torn.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tone, write_audio
from helpers import SMALL, small
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bestrq.config import ConfigError, load_config
from bestrq.data.importers import prepare
from bestrq.data.manifest import ManifestError, load_cuts, load_split, save_split
from bestrq.runtime import checkpoint
from bestrq.runtime.metrics import read_metrics, truncate_metrics
from bestrq.train import loop, run
from bestrq.train.loop import TrainingDiverged, pretrain

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "fault_runner.py"
STEPS = 30


def command(corpus: Path, out: Path, *extra: str) -> list[str]:
    sets = [*SMALL, f"data.corpus={corpus}", f"train.steps={STEPS}", "train.checkpoint_every=1",
            "train.keep_checkpoints=2", "train.log_every=1", *extra]
    return [sys.executable, str(RUNNER), "pretrain", "--config", "bestrq_tiny", "--out", str(out),
            *[arg for s in sets for arg in ("--set", s)]]


def env(**faults: str) -> dict[str, str]:
    paths = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])  # this checkout's code, whatever is installed
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": paths, **faults}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = checkpoint.load(checkpoint.latest(out))
    assert ckpt.step == STEPS
    return ckpt.weights


def assert_all_checkpoints_whole(out: Path) -> None:
    """Every checkpoint under a real name loads; nothing half-written is visible as one."""
    for path in checkpoint.list_checkpoints(out):
        checkpoint.load(path)


def logged_steps(out: Path) -> int:
    return max((r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"), default=0)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run every faulted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(command(corpus, out), check=False, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_weights(out)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights(corpus, tmp_path, reference):
    out, rng, kills = tmp_path / "run", random.Random(0), 0
    # kill points set in steps, not seconds, so that a faster step never lets the run finish
    # before the last fault below: each one somewhere in the step (or its checkpoint write)
    # after a random step of each third of the run, timed by the step before it
    for target in (rng.randint(3, 8), rng.randint(12, 17), rng.randint(21, 24)):
        proc = subprocess.Popen(command(corpus, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline, marks = time.monotonic() + 240, {}
        while len(marks) < 2 and proc.poll() is None and time.monotonic() < deadline:
            step = logged_steps(out)
            for k in (target - 1, target):
                if step >= k:
                    marks.setdefault(k, time.monotonic())
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, marks[target] - marks[target - 1]) if len(marks) == 2 else 0.0)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        proc.stderr.close()
        assert_all_checkpoints_whole(out)
    assert kills >= 2
    # and once exactly in the middle of writing a checkpoint's weights
    proc = subprocess.run(command(corpus, out), check=False, env=env(FAULT_KILL_IN_SAVE="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL
    torn = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert torn, "the kill should have left an unfinished write behind"
    assert_all_checkpoints_whole(out)
    proc = subprocess.run(command(corpus, out), check=False, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "removed .tmp-step" in proc.stderr  # the leftovers were cleared, and said so
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert_same(final_weights(out), reference)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # each step logged once: the resumes rewrote the tail


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly(corpus, tmp_path, reference, sig):
    """SIGINT as Ctrl-C sends it to the trainer; SIGTERM as a scheduler sends it, to every process of the
    job, the trainer's data-loading worker included (which once killed the worker and failed the run)."""
    out = tmp_path / "run"
    # checkpoints only at the end: the one that exists after the signal is the signal's doing
    workers = ["data.num_workers=1"] if sig == signal.SIGTERM else []
    proc = subprocess.Popen(command(corpus, out, f"train.checkpoint_every={STEPS}", *workers), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while logged_steps(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if sig == signal.SIGTERM:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"stopped by {signal.Signals(sig).name}" in stdout and "the same command resumes" in stdout
    saved = checkpoint.latest(out)
    assert saved is not None and 2 <= checkpoint.load(saved).step < STEPS
    proc = subprocess.run(command(corpus, out), check=False, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(final_weights(out), reference)


def test_a_save_cut_between_its_renames_is_undone(tmp_path):
    folder = tmp_path / "checkpoints"
    weights, cfg = {"w": torch.ones(2)}, {"x": 1}
    checkpoint.save(tmp_path, 1, weights, {}, cfg, keep=3)
    checkpoint.save(tmp_path, 2, weights, {}, cfg, keep=3)
    (folder / "step-00000002").rename(folder / ".old-step-00000002-123")  # replaced, successor never renamed
    (folder / ".tmp-step-00000002-123").mkdir()
    (folder / ".tmp-step-00000002-123" / "model.safetensors").write_bytes(b"half")
    done = checkpoint.recover(tmp_path)
    assert len(done) == 2 and any("restored step-00000002" in line for line in done)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001", "step-00000002"]
    assert checkpoint.load(folder / "step-00000002").step == 2


def test_a_kill_while_old_checkpoints_are_deleted_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    weights, cfg = {"w": torch.ones(2)}, {"x": 1}
    checkpoint.save(tmp_path, 1, weights, {}, cfg, keep=1)

    class Killed(BaseException):
        pass

    real_rmtree = shutil.rmtree

    def die_half_way(path, ignore_errors=False):  # deleting a checkpoint: its first file goes, then the process
        if not (Path(path) / "model.safetensors").is_file():
            return real_rmtree(path, ignore_errors=ignore_errors)
        (Path(path) / "model.safetensors").unlink()
        raise Killed

    monkeypatch.setattr(checkpoint.shutil, "rmtree", die_half_way)
    with pytest.raises(Killed):
        checkpoint.save(tmp_path, 2, weights, {}, cfg, keep=1)  # step 1 is now stale
    monkeypatch.undo()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000002"]
    assert_all_checkpoints_whole(tmp_path)
    assert any("removed .tmp-step-deleting-step-00000001" in line for line in checkpoint.recover(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002"]


def test_a_full_disk_during_a_save_leaves_no_partial_files_and_the_run_resumes(corpus, tmp_path, monkeypatch):
    import errno

    real_torch_save = checkpoint.torch.save

    def disk_full(obj, path, *args, **kwargs):  # the weights were written; the training state does not fit
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    pretrain(small(corpus, tmp_path, "train.steps=1"))
    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match=r"No space left on device: not saved; the newest checkpoint, step-00000001, "
                                      r"is intact\. Run the same command to resume") as failed:
        pretrain(small(corpus, tmp_path, "train.steps=2"))
    assert failed.value.filename == str(tmp_path / "checkpoints" / "step-00000002")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]  # no .tmp left
    monkeypatch.setattr(checkpoint.torch, "save", real_torch_save)
    assert pretrain(small(corpus, tmp_path, "train.steps=2")).step == 2
    assert_all_checkpoints_whole(tmp_path)


def test_a_second_process_on_a_live_run_folder_is_refused_and_touches_nothing(corpus, tmp_path):
    writing = tmp_path / "checkpoints" / ".tmp-step-00000004-999"  # the live run's checkpoint, half written
    writing.mkdir(parents=True)
    with run.lock(tmp_path):  # held by the live run (the same command started twice, say)
        with pytest.raises(OSError, match=r"in use by bestrq pretrain \(pid \d+ on .+\): wait for it to end, or "
                                          r"pick another train\.out_dir") as refused:
            pretrain(small(corpus, tmp_path, "train.steps=1"))
        assert refused.value.filename == str(tmp_path)
        assert writing.is_dir() and not checkpoint.list_checkpoints(tmp_path)  # recover() would have removed it
    assert pretrain(small(corpus, tmp_path, "train.steps=1")).step == 1  # the lock ends with its holder
    assert not writing.exists()  # now a leftover, cleared


def test_a_damaged_newest_checkpoint_is_passed_over_on_resume(corpus, tmp_path):
    pretrain(small(corpus, tmp_path, "train.steps=2", "train.checkpoint_every=1"))
    newest = checkpoint.latest(tmp_path) / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # damaged on disk after it was written
    path, ckpt = checkpoint.latest_loadable(tmp_path)
    assert path.name == "step-00000001" and ckpt.step == 1
    result = pretrain(small(corpus, tmp_path, "train.steps=3", "train.checkpoint_every=1"))
    assert result.step == 3


def nan_model(bad_calls: set[int] | None = None, bad_from: int | None = None):
    """build_model whose training forward passes return a NaN loss on the given calls (1-based)."""
    build, calls = loop.build_model, [0]

    def build_model(cfg):
        model = build(cfg)
        forward = model.forward

        def faulty(*args, **kwargs):
            out = forward(*args, **kwargs)
            if not model.training:
                return out
            calls[0] += 1
            if calls[0] in (bad_calls or ()) or (bad_from is not None and calls[0] >= bad_from):
                out = dataclasses.replace(out, loss=out.loss * float("nan"))
            return out

        model.forward = faulty
        return model

    return build_model


def test_non_finite_steps_are_skipped_and_counted(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "build_model", nan_model(bad_calls={2, 3}))
    result = pretrain(small(corpus, tmp_path, "train.steps=4", "train.log_every=1"))
    assert result.step == 4 and result.bad_steps == 2
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert sum(r["bad_steps"] for r in records) == 2
    assert all(math.isfinite(r["loss"]) for r in records)  # a skipped step's NaN is not averaged in
    saved = checkpoint.load(checkpoint.latest(tmp_path))
    assert saved.state["bad_steps"] == 2
    assert all(torch.isfinite(w).all() for w in saved.weights.values() if w.is_floating_point())
    adam_steps = {int(s["step"]) for s in saved.state["optimizer"]["state"].values()}
    assert adam_steps == {4}  # four updates taken, the two NaN passes never reached the optimizer


def test_too_many_bad_steps_in_a_row_stop_the_run_with_the_last_checkpoint_intact(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "build_model", nan_model(bad_from=3))
    cfg = small(corpus, tmp_path, "train.steps=10", "train.checkpoint_every=1", "train.max_bad_steps=3")
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps.*step 2.*step-00000002"):
        pretrain(cfg)
    last = checkpoint.load(checkpoint.latest(tmp_path))
    assert last.step == 2
    assert all(torch.isfinite(w).all() for w in last.weights.values() if w.is_floating_point())


def bad_corpus(corpus: Path, out: Path) -> tuple[Path, dict[str, str]]:
    """40 good cuts of the demo corpus plus 8 troublesome files (about 17%): what each should become."""
    from lhotse import CutSet, Recording
    from lhotse.audio import AudioSource

    audio = out / "audio"
    good = list(load_split(corpus, "train").subset(first=40))
    write_audio(audio / "8k.wav", tone(300, 2.0, rate=8000), rate=8000)
    write_audio(audio / "stereo.wav", tone(300, 2.0, channels=2))
    write_audio(audio / "clipped.wav", np.clip(10 * tone(300, 2.0), -1.0, 1.0))
    write_audio(audio / "nan.wav", np.where(np.arange(32000) % 997 == 0, np.nan, tone(300, 2.0)).astype(np.float32),
                subtype="FLOAT")
    write_audio(audio / "short.wav", tone(300, 0.02))  # under one 40 ms target frame
    recordings = [Recording.from_file(audio / f"{name}.wav") for name in ("8k", "stereo", "clipped", "nan", "short")]
    (audio / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" + bytes(range(256)) * 40)
    (audio / "empty.wav").write_bytes(b"")
    for name in ("corrupt", "empty", "missing"):  # the manifest claims 2 s of 16 kHz audio
        recordings.append(Recording(id=name, sources=[AudioSource(type="file", channels=[0],
                                                                  source=str(audio / f"{name}.wav"))],
                                    sampling_rate=16000, num_samples=32000, duration=2.0))
    cuts = CutSet.from_cuts(good + [r.to_cut() for r in recordings]).shuffle(random.Random(0))
    save_split(out, "train", cuts)
    expected = {"8k": "used", "stereo": "used", "clipped": "used", "short": "left out",
                "nan": "non-finite samples", "corrupt": "unreadable", "empty": "unreadable", "missing": "no such file"}
    return out, expected


@pytest.mark.slow
def test_pretraining_survives_a_corpus_with_bad_files_and_lists_them(corpus, tmp_path, caplog):
    data, expected = bad_corpus(corpus, tmp_path / "data")
    out = tmp_path / "run"
    cfg = small(data, out, "train.steps=12", "data.valid_split=", "train.checkpoint_every=6", "data.min_duration=0.1")
    with caplog.at_level("WARNING"):
        result = pretrain(cfg)
    assert result.step == 12
    bad = {name for name, fate in expected.items() if fate not in ("used", "left out")}
    assert set(result.skipped_audio) == bad
    for cut_id, entry in result.skipped_audio.items():
        assert entry["reason"].startswith(expected[cut_id]), entry
        assert entry["path"].endswith(f"{cut_id}.wav")
    assert "left out 1 of 48 cuts shorter than" in caplog.text  # the 20 ms clip, up front
    assert "4 audio files were skipped" in caplog.text and "unreadable: 2 file(s)" in caplog.text
    assert "no such file: 1 file(s)" in caplog.text
    listed = json.loads((out / "skipped_audio.json").read_text())
    assert listed.keys() == result.skipped_audio.keys()
    # the list survives a resume: it lives in the checkpoint
    assert checkpoint.load(checkpoint.latest(out)).state["skipped_audio"].keys() == listed.keys()


def test_resampled_and_down_mixed_audio_is_used(tmp_path):
    from lhotse import CutSet, Recording

    from bestrq.data.loader import AudioDataset

    write_audio(tmp_path / "8k.wav", tone(300, 1.0, rate=8000), rate=8000)
    write_audio(tmp_path / "stereo.wav", tone(300, 1.0, channels=2))
    cuts = CutSet.from_cuts(Recording.from_file(tmp_path / f"{n}.wav").to_cut() for n in ("8k", "stereo"))
    batch = AudioDataset()[cuts]
    assert batch.lengths.tolist() == [16000, 16000] and not batch.skipped
    stereo = batch.waveforms[batch.cut_ids.index("stereo")].numpy()
    np.testing.assert_allclose(stereo, tone(300, 1.0) * 0.75, atol=1e-4)  # the mean of x/2 and x


class Payload:
    """Unpickling this runs a shell command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_code_is_refused_without_running_it(corpus, tmp_path):
    pretrain(small(corpus, tmp_path, "train.steps=1"))
    folder = checkpoint.latest(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"format": checkpoint.FORMAT, "step": 1, "optimizer": Payload(marker)}, folder / "state.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.pt: corrupt or not a bestrq training state"):
        checkpoint.load(folder)
    with pytest.raises(checkpoint.CheckpointError, match="state.pt"):
        pretrain(small(corpus, tmp_path, "train.steps=2"))
    assert not marker.exists()


def _drop_sha256(folder: Path) -> None:
    meta = json.loads((folder / "config.json").read_text())
    del meta["sha256"]
    (folder / "config.json").write_text(json.dumps(meta))


def test_a_flipped_bit_that_still_parses_is_found_and_the_run_resumes_before_it(corpus, tmp_path, caplog):
    import bestrq

    cfg = small(corpus, tmp_path, "train.steps=2", "train.checkpoint_every=1", "data.valid_split=")
    pretrain(cfg)
    folder = checkpoint.latest(tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # the low bits of the last weight: a finite value, a valid file
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=r"step-00000002/model\.safetensors: damaged: its bytes "
                                                         r"changed after it was saved"):
        bestrq.load(folder)
    with caplog.at_level("WARNING"):
        result = pretrain(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3)))
    assert "passing over a damaged checkpoint" in caplog.text and "resuming from" in caplog.text
    assert "step-00000001 (step 1)" in caplog.text and result.step == 3


def test_wrong_architecture_and_truncated_checkpoints_name_the_problem(corpus, tmp_path):
    from safetensors.torch import load_file, save_file

    from bestrq.probes.encoders import load_encoder

    pretrain(small(corpus, tmp_path, "train.steps=2", "train.checkpoint_every=1"))
    folder = checkpoint.latest(tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    weights["encoder.extra.weight"] = weights.pop("heads.weight")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": checkpoint.FORMAT})
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.safetensors: damaged: its bytes changed after it "
                                                         r"was saved \(sha256 .*\)\. If it was changed on purpose, "
                                                         r"delete 'sha256' from .*config\.json"):
        load_encoder(str(folder))
    _drop_sha256(folder)  # as the message says, for a file changed on purpose: its contents are checked instead
    with pytest.raises(checkpoint.CheckpointError, match=r"do not fit.*missing \['heads\.weight'\].*encoder\.extra"):
        load_encoder(str(tmp_path))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.safetensors: corrupt"):
        load_encoder(str(folder))
    # the run folder names the newest checkpoint that loads, rather than probing an older step unasked
    with pytest.raises(checkpoint.CheckpointError, match=r"step-00000002/model\.safetensors: corrupt.*It is the run's "
                                                         r"newest checkpoint; the newest that loads is .*step-00000001"):
        load_encoder(str(tmp_path))
    (folder.parent / "step-00000001" / "state.pt").write_bytes(b"junk")
    with pytest.raises(checkpoint.CheckpointError, match="and no older one loads"):
        load_encoder(str(tmp_path))



def test_checkpoint_files_that_read_but_hold_the_wrong_things_name_the_file(corpus, tmp_path):
    """Damage that leaves each file well-formed: a state without its step, settings that are not a mapping,
    a tensor of another shape, a training state of another layout. bestrq.load and a resume both name the file
    (they raised KeyError, RuntimeError or TypeError, naming nothing)."""
    from safetensors.torch import load_file, save_file

    import bestrq

    cfg = small(corpus, tmp_path, "train.steps=1", "data.valid_split=")
    pretrain(cfg)
    folder = checkpoint.latest(tmp_path)
    saved = {name: (folder / name).read_bytes() for name in checkpoint.FILES}

    def damaged(name, change):
        for n, data in saved.items():
            (folder / n).write_bytes(data)
        if name == "state.pt":
            state = torch.load(folder / name, weights_only=True)
            change(state)
            torch.save(state, folder / name)
        elif name == "config.json":
            meta = json.loads(saved[name])
            change(meta)
            (folder / name).write_text(json.dumps(meta))
        else:
            weights = load_file(str(folder / name))
            change(weights)
            save_file(weights, str(folder / name), metadata={"format": checkpoint.FORMAT})
        if name != "config.json":
            _drop_sha256(folder)  # else the checksum finds every change first

    cases = [("state.pt", lambda s: s.pop("step"), r"state\.pt: damaged: its step is None"),
             ("state.pt", lambda s: s.update(step="1"), r"state\.pt: damaged: its step is '1'"),
             ("config.json", lambda m: m.update(config=[1]), r"config\.json: damaged: its 'config' is list"),
             ("model.safetensors", lambda w: w.update({"heads.weight": w["heads.weight"][:, :3].contiguous()}),
              r"step-00000001: its weights do not fit .*size mismatch for heads\.weight"),
             ("model.safetensors", lambda w: w["heads.weight"].view(-1)[:1].fill_(math.inf),
              r"step-00000001: damaged: its weight heads\.weight holds NaN or infinite values")]
    for name, change, message in cases:
        damaged(name, change)
        with pytest.raises(checkpoint.CheckpointError, match=message):
            bestrq.load(folder)
        with pytest.raises(checkpoint.CheckpointError, match=message):
            pretrain(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2)))
    # a state that loads and has its step, but not the optimizer's, loader's or random states' layout
    for change in (lambda s: s.update(loader=[]), lambda s: s["optimizer"].update(state={0: 1}),
                   lambda s: s.update(rng=[{"torch": torch.zeros(3)}])):
        damaged("state.pt", change)
        bestrq.load(folder)  # the model alone is fine
        with pytest.raises(checkpoint.CheckpointError, match=r"step-00000001/state\.pt: damaged or not this run's "
                                                             r"training state \(.*\); move .* aside"):
            pretrain(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2)))

def test_damaged_metrics_lines_are_skipped_counted_and_dropped_on_resume(tmp_path, caplog):
    """metrics.jsonl lines that parse but are not records (a step that is text or true, a value that is a list,
    bytes that are not UTF-8) crashed a resume's rewrite of the file, the probe's pre-training time and the
    report's plots (TypeError, UnicodeDecodeError). They are skipped and counted; a last line cut short by a
    kill is expected, and skipped without a word."""
    from bestrq.probes.encoders import _pretraining_record

    good = [{"step": s, "split": "train", "loss": 9.0 - s, "elapsed": float(s), "audio_seconds": 10.0}
            for s in (1, 2, 3)]
    damaged = [{"step": "2", "split": "train", "elapsed": 99.0}, {"step": True, "split": "train"},
               {"step": 2, "split": "valid", "accuracy": [0.5]}, {"step": 2, "split": None}]
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in [good[0], *damaged[:2], good[1], *damaged[2:]])
                     + b'\xff\xfe{"step": 2}\n' + json.dumps(good[2]).encode() + b'\n{"step": 4, "spl')
    with caplog.at_level("WARNING", logger="bestrq.train"):
        assert read_metrics(path) == good
    assert f"{path}: skipped 5 damaged lines" in caplog.text
    assert _pretraining_record(tmp_path, 2) == {"pretrain_seconds": 2.0, "pretrain_audio_hours": 20.0 / 3600}
    truncate_metrics(path, 2)  # what a resume from step 2 does
    assert path.read_text().splitlines() == [json.dumps(r) for r in good[:2]]


YAML_TEXT = st.text(alphabet=st.sampled_from(list("abcdefgnoprstu_.:-=[]{}!&*|>'\"#%@ 0123456789\n\t")), max_size=80)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(YAML_TEXT, st.sampled_from([
    "!!python/object/apply:os.system ['touch pwned']", "encoder: !!python/name:os.system", "&a [*a]",
    "encoder: {d_model: [1, 2]}", "train: 3", "optim: {lr: .nan}", "objective: null", "- a\n- b"])))
@example(text="0: 1\nnope: {}")  # unknown keys of two types: not sortable together
@example(text="encoder: {0: 1, nope: 8}")
@example(text="encoder: {kind: caf\xe9}")  # written as Latin-1 below: not UTF-8
def test_config_files_parse_safely_or_fail_with_a_config_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("latin-1" if "\xe9" in text else "utf-8"))
    try:
        load_config(str(path))
    except ConfigError as e:
        assert str(e)
    assert not (Path.cwd() / "pwned").exists()


@given(overrides=st.lists(st.tuples(st.sampled_from(["encoder.d_model", "optim.lr", "train.steps", "masking.prob",
                                                     "data.corpus", "quantizer", "nope.x", "", "a.b.c"]),
                                    YAML_TEXT), max_size=3))
@example(overrides=[("quantizer", "0:\n_:"), ("quantizer", "0:")])  # found by CI: an int key and a str key
def test_config_overrides_parse_safely_or_fail_with_a_config_error(overrides):
    try:
        load_config(None, [f"{k}={v}" for k, v in overrides])
    except ConfigError as e:
        assert str(e)


JSON_LINE = st.one_of(
    st.text(max_size=60),
    st.dictionaries(st.sampled_from(["id", "start", "duration", "channel", "recording", "supervisions", "type"]),
                    st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8),
                              st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                                   st.integers(), max_size=2)),
                    max_size=7).map(json.dumps))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(JSON_LINE, min_size=1, max_size=4))
def test_manifests_parse_safely_or_fail_naming_the_file(tmp_path, lines):
    path = tmp_path / "fuzz_cuts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        load_cuts(path)
    except ManifestError as e:
        assert str(e).startswith(str(path))


TABLE_TEXT = st.lists(st.sampled_from([*"abAB,\t\n\"'{}[]:0123456789-.$/_ ", "a.wav", "$data_root/", "ID", "wav", "start",
                                        "stop", "wrd", "semantics", "spk_id", "emo", "nan", "inf", "1e309"]),
                      max_size=40).map("".join)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["speechbrain", "fairseq"]), text=TABLE_TEXT, header=st.booleans(), tail=st.binary(max_size=3))
@example(fmt="speechbrain", text="u1,a.wav\n", header=True, tail=b"\xe9")  # not UTF-8
@example(fmt="fairseq", text="\t0\n", header=True, tail=b"")  # a row with no path
def test_import_tables_parse_safely_or_fail_naming_the_file(tmp_path, fmt, text, header, tail):
    """SpeechBrain CSV and fairseq TSV tables: imported, or a ManifestError that names the table."""
    if not (tmp_path / "a.wav").exists():
        write_audio(tmp_path / "a.wav", tone(200, 1.0))
    table = tmp_path / "tables" / ("train.csv" if fmt == "speechbrain" else "train.tsv")
    table.parent.mkdir(exist_ok=True)
    if header:  # else the fuzzed text is the whole table
        text = ("ID,wav,start,stop,wrd,semantics\n" if fmt == "speechbrain" else f"{tmp_path}\n") + text
    table.write_bytes(text.encode() + tail)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    try:
        prepare(fmt, table, tmp_path / "out", jobs=1, **({"data_root": str(tmp_path)} if fmt == "speechbrain" else {}))
    except ManifestError as e:
        assert str(table.parent) in str(e)



@functools.cache
def _audio_bytes(fmt: str) -> bytes:
    """A short valid file of each kind soundfile writes, for the fuzz test below to damage."""
    import io

    import soundfile as sf
    kind, subtype, rate, channels = {"wav": ("WAV", "PCM_16", 16000, 1), "float": ("WAV", "FLOAT", 44100, 2),
                                     "flac": ("FLAC", "PCM_24", 8000, 1), "ogg": ("OGG", "VORBIS", 22050, 1)}[fmt]
    buf = io.BytesIO()
    sf.write(buf, tone(300, 0.3, rate=rate, channels=channels), rate, format=kind, subtype=subtype)
    return buf.getvalue()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["wav", "float", "flac", "ogg"]), cut=st.none() | st.integers(0, 6000),
       edits=st.lists(st.tuples(st.integers(0, 80), st.binary(min_size=1, max_size=4)), max_size=3),
       window=st.sampled_from([30.0, 0.05, 0.0]))
@example(fmt="wav", cut=None, edits=[(24, b"\x01\x00\x00\x00")], window=0.05)  # 1 Hz: an assertion in lhotse
@example(fmt="wav", cut=None, edits=[(24, b"\x00\x94\x35\x77")], window=30.0)  # 2 GHz: a ValueError in training
@example(fmt="flac", cut=None, edits=[(22, b"J")], window=30.0)  # a FLAC header claiming 43 h: 5173 windows
def test_damaged_audio_files_are_used_or_skipped_with_a_reason(tmp_path, fmt, cut, edits, window):
    """A folder import of a truncated file or one with bytes of its header overwritten, then the training
    loader's read of every cut it wrote: clean audio, or BadAudio naming the file; nothing else."""
    from bestrq.data.audio import BadAudio, load_mono

    data = bytearray(_audio_bytes(fmt)[:cut])
    for at, new in edits:
        data[at:at + len(new)] = new
    src = tmp_path / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    write_audio(src / "good.wav", tone(200, 0.5))
    (src / f"damaged.{'wav' if fmt == 'float' else fmt}").write_bytes(bytes(data))
    report = prepare("folder", src, tmp_path / "out", jobs=1, max_duration=window, dev_fraction=0.0)
    assert all(path.startswith(str(src)) and why for path, why in report.skipped)
    for c in load_split(tmp_path / "out", "train"):
        try:
            audio = load_mono(c, min_samples=400)
        except BadAudio as e:
            assert e.path.startswith(str(src)) and e.reason
            continue
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_torchrun_job(corpus, tmp_path, mode):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *command(corpus, tmp_path / "run", "train.steps=50", "train.dist_timeout_minutes=1")[1:]]
    proc = subprocess.run(cmd, check=False, env=env(FAULT_RANK="1", FAULT_STEP="3", FAULT_MODE=mode), capture_output=True,
                          text=True, timeout=240)  # a hang would end here, as a failure
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    if mode == "raise":
        assert "injected fault on rank 1" in output
    else:
        assert "Signal 9 (SIGKILL)" in output or "SIGKILL" in output
    assert logged_steps(tmp_path / "run") < 50  # the other rank did not train on alone


# restarts that come at once, as clusters make them


def _hold_the_lock(folder: str, forked: bool, ready, grandchild) -> None:
    """In a child process: take the run lock, optionally fork a process that outlives us, then wait."""
    with run.lock(Path(folder)):
        if forked:  # as a loader worker is: forked while the lock is held
            worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
            worker.start()
            grandchild.value = worker.pid
        ready.set()
        time.sleep(60)


@pytest.mark.parametrize("forked", [False, True])
def test_the_run_lock_names_its_live_holder_and_dies_with_it(tmp_path, caplog, forked):
    """While its holder lives, the lock is refused with the holder's pid; once the holder is
    SIGKILLed the next run takes it at once, even with a process the holder forked still alive
    (a flock would be held by that process), and says that the last holder died."""
    ctx = multiprocessing.get_context("fork")
    ready, grandchild = ctx.Event(), ctx.Value("i", 0)
    holder = ctx.Process(target=_hold_the_lock, args=(str(tmp_path), forked, ready, grandchild))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OSError, match=rf"in use by bestrq pretrain \(pid {holder.pid} on .+\)"), \
                run.lock(tmp_path):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        if forked:
            os.kill(grandchild.value, 0)  # still alive, and it was forked while the lock was held
        with caplog.at_level(logging.WARNING, logger="bestrq.train"), run.lock(tmp_path):
            assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()
        assert f"(pid {holder.pid} on" in caplog.text and "ended without releasing it" in caplog.text
        assert (tmp_path / ".lock").read_text() == ""  # a clean end leaves no name behind
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bestrq.train"), run.lock(tmp_path):
            pass
        assert "ended without releasing" not in caplog.text
    finally:
        if holder.is_alive():
            holder.kill()
        if grandchild.value:
            os.kill(grandchild.value, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` forked that are alive now (Linux's /proc; none elsewhere)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie awaiting its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_a_run_started_again_at_once_after_each_sigkill_resumes_to_the_uninterrupted_weights(
        corpus, tmp_path, reference):
    """5 SIGKILLs at random moments of a run with a loader worker, the same command started
    again within 100 ms of each: every run starts, and the last ends as an uninterrupted run.
    The killed run's loader worker is gone within a second (Linux)."""
    out, rng, orphans = tmp_path / "run", random.Random(7), []
    cmd = command(corpus, out, "data.num_workers=1")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for kill in range(5):
        target = logged_steps(out) + rng.randint(1, 3)
        deadline = time.monotonic() + 240
        while logged_steps(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in a step, its checkpoint write or the next
        assert proc.poll() is None, f"run {kill + 1} ended before its kill:\n{proc.stderr.read()[-3000:]}"
        workers = _children(proc.pid)
        proc.kill()
        proc.wait()
        killed_at = time.monotonic()
        proc.stderr.close()
        proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert time.monotonic() - killed_at < 0.1
        orphans.append(workers)
        if sys.platform.startswith("linux"):
            while any(_alive(w) for w in workers) and time.monotonic() < killed_at + 1.0:
                time.sleep(0.01)
            assert not any(_alive(w) for w in workers), f"the loader worker of run {kill + 1} outlived it by 1 s"
    assert sum(bool(w) for w in orphans) >= 3  # most kills found a worker to orphan
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert_all_checkpoints_whole(out)
    assert_same(final_weights(out), reference)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigterm_then_sigkill_within_the_grace_period_resumes_to_the_uninterrupted_weights(
        corpus, tmp_path, reference):
    """A scheduler's pre-emption with a grace period (0.2 s) shorter than a checkpoint write, 3 times."""
    out, rng = tmp_path / "run", random.Random(3)
    for _ in range(3):
        proc = subprocess.Popen(command(corpus, out), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        target = logged_steps(out) + rng.randint(2, 5)
        deadline = time.monotonic() + 240
        while logged_steps(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.kill()  # nothing if it has already ended, cleanly
        proc.wait()
        assert_all_checkpoints_whole(out)
    proc = subprocess.run(command(corpus, out), check=False, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(final_weights(out), reference)


def test_a_restarted_attempt_never_reads_the_addresses_the_attempt_before_left_in_torchruns_store(
        monkeypatch, caplog):
    """torchrun keeps one store for all attempts of a job; attempt 1 must not see attempt 0's keys
    (a dead rank's address: "connectFullMesh failed ... Connection refused"). Across nodes the
    restart count is no key, so there the set-up says what to do instead."""
    from datetime import timedelta

    import torch.distributed as dist

    from bestrq.runtime import distributed
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    for name, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(server.port), "GROUP_WORLD_SIZE": "1",
                        "TORCHELASTIC_MAX_RESTARTS": "3"}.items():
        monkeypatch.setenv(name, value)
    stores = []
    for attempt in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", attempt)
        stores.append(distributed._attempt_store(2, timedelta(seconds=5)))
    stores[0].set("rank_0", "address of attempt 0")
    assert not stores[1].check(["rank_0"])
    stores[1].set("rank_0", "address of attempt 1")
    assert stores[0].get("rank_0") == b"address of attempt 0"
    assert stores[1].get("rank_0") == b"address of attempt 1"

    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    with caplog.at_level(logging.WARNING):
        assert distributed._attempt_store(4, timedelta(seconds=5)) is None
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in caplog.text
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # each attempt has its own store
    assert distributed._attempt_store(2, timedelta(seconds=5)) is None


@pytest.mark.slow
def test_torchrun_max_restarts_brings_a_job_with_a_killed_rank_to_the_uninterrupted_weights(corpus, tmp_path):
    """Rank 1 SIGKILLs itself at two different steps (one in each of the first two attempts);
    torchrun restarts the job, which resumes and ends by itself with exit 0, each step logged once,
    as an uninterrupted 2-process run."""

    def torchrun(out: Path, *extra: str, **faults: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
               *command(corpus, out, "train.dist_timeout_minutes=1")[1:]]
        return subprocess.run(cmd, check=False, env=env(**faults), capture_output=True, text=True, timeout=400)

    straight = torchrun(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    restarted = torchrun(tmp_path / "restarted", "--max-restarts=3", FAULT_RANK="1", FAULT_STEP="9,4",
                         FAULT_MODE="kill")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert restarted.stderr.count("resuming from") >= 2  # two restarts, each from a checkpoint
    assert_same(final_weights(tmp_path / "restarted"), final_weights(tmp_path / "straight"))
    steps = [r["step"] for r in read_metrics(tmp_path / "restarted" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))
