"""Configs, the training loop's exact resume, checkpoints, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SMALL, small

from bestrq.config import ConfigError, load_config
from bestrq.runtime import checkpoint
from bestrq.train.loop import pretrain
from bestrq.train.optim import lr_at

ROOT = Path(__file__).resolve().parents[1]
def test_unknown_keys_are_rejected_with_the_valid_ones_listed():
    with pytest.raises(ConfigError, match=r"unknown key encoder\.d_modle.*d_model, num_layers"):
        load_config(None, ["encoder.d_modle=3"])
    with pytest.raises(ConfigError, match=r"unknown key optimiser.*data, features"):
        load_config(None, ["optimiser.lr=3"])
    with pytest.raises(ConfigError, match=r"optim\.lr: expected float, got str"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"encoder\.d_model: 100 is not divisible"):
        load_config(None, ["encoder.d_model=100"])
    with pytest.raises(FileNotFoundError, match="bestrq_base"):
        load_config("no_such_preset")


def test_a_config_error_names_the_file_or_the_set_item_that_causes_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder: 5\n")
    with pytest.raises(ConfigError, match=r"^.*bad\.yaml: encoder: expected a mapping, got int$"):
        load_config(str(bad), ["train.steps=3"])
    # the preset is fine: the fault is the --set item's, not the file's (it blamed bestrq_tiny)
    with pytest.raises(ConfigError, match=r"^--set train\.max_steps=1: unknown key train\.max_steps; "):
        load_config("bestrq_tiny", ["optim.lr=1e-3", "train.max_steps=1", "train.steps=3"])
    with pytest.raises(ConfigError, match=r"^--set encoder=5: encoder: expected a mapping, got int$"):
        load_config("bestrq_tiny", ["train.steps=3", "encoder=5"])
    with pytest.raises(ConfigError, match=r"^--set optim\.lr=fast: optim\.lr: expected float, got str 'fast'$"):
        load_config(None, ["optim.lr=fast"])


def _numeric_fields(section=None, prefix=""):
    """(key, field, default) of every int, float and number-list field of the pre-training config."""
    import dataclasses

    from bestrq.config import PretrainConfig

    section = PretrainConfig() if section is None else section
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numeric_fields(value, f"{prefix}{f.name}.")
        elif f.metadata.get("item") or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            yield f"{prefix}{f.name}", f, value


def test_every_number_of_the_config_declares_its_range_seeds_excepted():
    unbounded = [key for key, f, _ in _numeric_fields() if not f.metadata["bounds"]]
    assert unbounded == ["quantizer.seed", "train.seed"]


def test_a_number_out_of_its_range_is_refused_with_its_key_and_range():
    checked = 0
    for key, f, default in _numeric_fields():
        bounds, item = f.metadata["bounds"], f.metadata["item"]
        is_int = (item or type(default)) is int
        bad = [b - 1 if is_int else b - 0.5 for k, b in bounds.items() if k == "ge"]
        bad += [b for k, b in bounds.items() if k in ("gt", "lt")]
        bad += [b + 1 if is_int else b + 0.5 for k, b in bounds.items() if k == "le"]
        bad += [] if is_int else [".inf", ".nan"]
        for v in bad:
            value = f"[{', '.join(str(d) for d in default[:-1])}, {v}]" if item else v
            with pytest.raises(ConfigError, match=rf"^{key}: (every item )?must be"):
                load_config(None, [f"{key}={value}"])
            checked += 1
    assert checked >= 60
    # and the messages read well
    for override, message in [
        ("optim.lr=-1e-3", r"optim\.lr: must be > 0, got -0\.001"),
        ("encoder.dropout=1.5", r"encoder\.dropout: must be >= 0 and < 1, got 1\.5"),
        ("optim.betas=[0.9, 1]", r"optim\.betas: every item must be >= 0 and < 1, got \[0\.9, 1\.0\]"),
        ("wav2vec2.temperature=[hot, 0.5, 0.9]",
         r"--set wav2vec2\.temperature=\[hot, 0\.5, 0\.9\]: wav2vec2\.temperature: expected float, got str 'hot'"),
        ("encoder.num_heads=0", r"encoder\.num_heads: must be >= 1, got 0"),  # before d_model % num_heads
        # every clip cropped to max_duration would be too short: the loader skipped them all
        ("data.max_duration=0.1", r"data\.min_duration: 0\.5 s is above data\.max_duration \(0\.1 s\): every clip"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{message}"):
            load_config(None, [override])
    assert load_config(None, ["optim.warmup_steps=0", "encoder.dropout=0", "wav2vec2.temperature=[1, 1, 1]"])


def test_presets_load_and_the_base_model_is_the_papers():
    from bestrq.objectives.bestrq import build_bestrq

    base = load_config("bestrq_base")
    assert (base.encoder.num_layers, base.encoder.d_model, base.encoder.num_heads, base.encoder.ffn_dim) == (
        12, 576, 8, 2048)
    assert (base.quantizer.codebook_size, base.quantizer.codebook_dim, base.optim.lr,
            base.optim.warmup_steps) == (8192, 16, 8e-4, 25000)
    with torch.device("meta"):
        n = sum(p.numel() for p in build_bestrq(base).parameters())
    assert 85e6 < n < 100e6
    assert load_config("bestrq_tiny", ["optim.lr=0.5"]).optim.lr == 0.5


def test_noam_schedule_peaks_at_lr_after_warmup_then_decays_as_inverse_sqrt():
    cfg = load_config(None, ["optim.warmup_steps=100", "optim.lr=1e-3"]).optim
    assert lr_at(49, cfg, 1000) == pytest.approx(5e-4)
    assert lr_at(99, cfg, 1000) == pytest.approx(1e-3)
    assert lr_at(399, cfg, 1000) == pytest.approx(5e-4)  # sqrt(100 / 400) = 1/2
    cos = load_config(None, ["optim.warmup_steps=100", "optim.schedule=cosine"]).optim
    assert lr_at(999, cos, 1000) == pytest.approx(0.0, abs=1e-9)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "sharded", "streaming"])
def test_resume_continues_exactly(corpus, sharded_corpus, tmp_path, kind):
    """On a plain and a sharded corpus, and for a streaming encoder (its chunked attention drawn anew)."""
    corpus = sharded_corpus if kind == "sharded" else corpus
    extra = ["encoder.streaming=true", "features.normalization=global", "encoder.chunk_frames=[2,8]",
             "encoder.left_chunks=[1,4]"] if kind == "streaming" else []
    straight = pretrain(small(corpus, tmp_path / "a", "train.steps=6", "train.checkpoint_every=3", *extra))
    first = pretrain(small(corpus, tmp_path / "b", "train.steps=3", "train.checkpoint_every=3", *extra))
    assert checkpoint.latest(tmp_path / "b").name == "step-00000003"
    resumed = pretrain(small(corpus, tmp_path / "b", "train.steps=6", "train.checkpoint_every=3", *extra))
    assert resumed.step == 6
    a, b = weights(straight.model), weights(resumed.model)
    assert not torch.equal(weights(first.model)["heads.weight"], b["heads.weight"])  # it did train on
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the checkpoint holds the same weights, the quantizer's frozen tensors included
    saved = checkpoint.load(checkpoint.latest(tmp_path / "b"))
    assert saved.step == 6 and torch.equal(saved.weights["quantizer.codebooks"], b["quantizer.codebooks"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


def test_a_resume_on_a_changed_training_split_starts_the_next_epoch_and_says_so(corpus, tmp_path, caplog):
    from lhotse import CutSet

    from bestrq.data.manifest import load_split, save_split

    grown = tmp_path / "grown"  # the same corpus with some training audio added since
    train = list(load_split(corpus, "train"))
    save_split(grown, "train", CutSet.from_cuts(train[: len(train) // 2]))
    save_split(grown, "dev", load_split(corpus, "dev"))
    pretrain(small(grown, tmp_path / "run", "train.steps=2"))
    position = checkpoint.load(checkpoint.latest(tmp_path / "run")).state["loader"][0]
    assert position["epoch"] == 0 and position["position"] == 2
    save_split(grown, "train", CutSet.from_cuts(train))
    with caplog.at_level(logging.WARNING, logger="bestrq.train"):
        assert pretrain(small(grown, tmp_path / "run", "train.steps=3")).step == 3
    assert "read another train split (its cuts changed since): the model and optimizer continue exactly; " \
           "the data starts epoch 1" in caplog.text  # it went on at position 2 of a different epoch, silently
    assert checkpoint.load(checkpoint.latest(tmp_path / "run")).state["loader"][0]["epoch"] == 1


def test_a_resumed_run_counts_its_training_time_from_before(corpus, tmp_path):
    from bestrq.runtime.metrics import read_metrics

    pretrain(small(corpus, tmp_path, "train.steps=2", "train.log_every=1"))
    before = checkpoint.load(checkpoint.latest(tmp_path)).state["train_seconds"]
    assert before > 0
    pretrain(small(corpus, tmp_path, "train.steps=4", "train.log_every=1"))
    elapsed = [r["elapsed"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    # it started again at 0: the report took the longest stretch for the run's time, and max_minutes
    # gave every resume a whole new budget
    assert len(elapsed) == 4 and elapsed == sorted(elapsed) and elapsed[2] > before
    assert checkpoint.load(checkpoint.latest(tmp_path)).state["train_seconds"] > elapsed[-1]


W2V_SMALL = ["encoder.d_model=32", "encoder.num_layers=2", "encoder.num_heads=2", "encoder.ffn_dim=64",
             "encoder.pos_conv_groups=4", "encoder.pos_conv_kernel=16", "wav2vec2.conv_channels=[32,32,32,32,32,32,32]",
             "wav2vec2.num_entries=8", "wav2vec2.codevector_dim=16", "wav2vec2.final_dim=12",
             *(s for s in SMALL if not s.startswith(("encoder.", "quantizer.")))]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["wav2vec2.feature_encoder=conv"],
                                   ["wav2vec2.feature_encoder=fbank", "features.normalization=global"]])
def test_wav2vec2_resume_continues_exactly(corpus, tmp_path, extra):
    """Gumbel noise, distractors, the temperature schedule and (fbank) the running feature statistics resume."""
    def run(out: str, steps: int):
        return pretrain(load_config("wav2vec2_tiny", [*W2V_SMALL, *extra, f"data.corpus={corpus}",
                                                      f"train.out_dir={tmp_path / out}", f"train.steps={steps}",
                                                      "train.checkpoint_every=3"]))
    straight = run("a", 6)
    first = weights(run("b", 3).model)
    resumed = run("b", 6)
    a, b = weights(straight.model), weights(resumed.model)
    assert not torch.equal(first["project_hid.weight"], b["project_hid.weight"])  # it did train on
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if "features.normalization=global" in extra:
        stats = b["feature_extractor.normalizer.count"]
        assert stats > first["feature_extractor.normalizer.count"] > 0  # statistics kept accumulating


def test_resume_refuses_a_different_model(corpus, tmp_path):
    pretrain(small(corpus, tmp_path, "train.steps=1"))
    with pytest.raises(checkpoint.CheckpointError, match="different encoder config"):
        pretrain(small(corpus, tmp_path, "train.steps=2", "encoder.num_layers=3"))


def test_compile_on_a_torch_that_cannot_train_compiled_is_refused_before_any_step(corpus, tmp_path, monkeypatch):
    """torch 2.11 trains a compiled encoder until the batch length changes, then fails in backward."""
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.11.0+cu130"))
    with pytest.raises(ConfigError, match=r"train\.compile: torch 2\.11\.0\+cu130 .* use torch >= 2\.12, or "
                                          r"train\.compile=false"):
        pretrain(small(corpus, tmp_path / "run", "train.steps=1", "train.compile=true"))
    assert not (tmp_path / "run").exists()


def test_a_missing_corpus_or_split_is_named_with_the_way_out_before_any_work(corpus, tmp_path):
    from bestrq.data.manifest import ManifestError

    with pytest.raises(ManifestError, match=r"^data\.corpus=.*nope: no such folder \(make one with `bestrq synth`"):
        pretrain(small(tmp_path / "nope", tmp_path / "run"))
    with pytest.raises(ManifestError, match=r"^data\.valid_split=held: .* has no held split \(it has: dev, sv, test, "
                                            r"train\); name another, or data\.valid_split='' to train without"):
        pretrain(small(corpus, tmp_path / "run", "data.valid_split=held"))
    with pytest.raises(ManifestError, match=r"^data\.train_split=train\+tran: .* has no tran split"):
        pretrain(small(corpus, tmp_path / "run", "data.train_split=train+tran"))
    assert not (tmp_path / "run").exists()  # nothing written


def test_clips_too_short_for_one_encoder_frame_are_left_out_whatever_min_duration_says(corpus, tmp_path, caplog):
    from bestrq.data.manifest import load_split, save_split

    cuts = load_split(corpus, "train")
    train = list(cuts)[:4]
    short = [c.truncate(duration=0.03).with_id(f"{c.id}-30ms") for c in list(cuts)[4:12]]
    save_split(tmp_path / "mixed", "train", type(cuts).from_cuts(train + short))
    save_split(tmp_path / "short", "train", type(cuts).from_cuts(short))
    extra = ["data.min_duration=0", "data.valid_split=", "data.num_buckets=2", "data.max_batch_duration=6"]
    with caplog.at_level(logging.WARNING, logger="bestrq.train"):
        result = pretrain(small(tmp_path / "mixed", tmp_path / "run", "train.steps=4", *extra))
    assert "train: left out 8 of 12 cuts shorter than 0.055s, one frame of the encoder" in caplog.text
    assert result.step == 4
    with pytest.raises(ValueError, match=r"split 'train' has no cut of at least 0\.055s"):
        pretrain(small(tmp_path / "short", tmp_path / "run2", "train.steps=1", *extra))  # not a conv kernel error


def test_checkpoints_are_pruned_and_foreign_files_refused(corpus, tmp_path):
    pretrain(small(corpus, tmp_path, "train.steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=2"))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    bad = tmp_path / "checkpoints" / "step-00000004" / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors: corrupt"):
        checkpoint.load(bad.parent)
    evil = tmp_path / "checkpoints" / "step-00000003" / "state.pt"
    torch.save({"format": checkpoint.FORMAT, "step": 3, "x": Path("/")}, evil)  # a pickled class
    with pytest.raises(checkpoint.CheckpointError, match="state.pt: corrupt or not"):
        checkpoint.load(evil.parent)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "sharded"])
def test_two_process_torchrun_keeps_identical_weights_and_quantizer(corpus, sharded_corpus, tmp_path, caplog, kind):
    """With global feature statistics, the one kind of buffer that changes: DDP broadcasts no
    buffer, and every rank still ends with the same weights and statistics (each batch's sums are
    summed over the ranks). On shards, each rank reads its own."""
    corpus = sharded_corpus if kind == "sharded" else corpus
    paths = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])  # this checkout's code, whatever is installed
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": paths}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(corpus), str(tmp_path), "features.normalization=global"]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert digests[0]["step"] == digests[1]["step"] == 3
    assert digests[0]["weights"] == digests[1]["weights"]
    assert digests[0]["quantizer"] == digests[1]["quantizer"]
    saved = checkpoint.load(checkpoint.latest(tmp_path / "run"))
    assert [s["rank"] for s in saved.state["loader"]] == [0, 1]  # both ranks' data positions kept
    assert digest_of(saved.weights) == digests[0]["weights"]
    assert saved.weights["normalizer.count"] > 0  # the statistics, equal on both ranks, are in the digests

    # back on one process (a pre-empted job given fewer GPUs): the model and optimizer go on from
    # step 3, the data from the next epoch
    with caplog.at_level(logging.WARNING, logger="bestrq.train"):
        result = pretrain(small(corpus, tmp_path / "run", "train.steps=5", "data.max_batch_duration=10",
                                "features.normalization=global"))
    assert result.step == 5
    assert "written by 2 process(es), this run has 1" in caplog.text
    resumed = checkpoint.load(checkpoint.latest(tmp_path / "run"))
    adam_steps = {float(s["step"]) for s in resumed.state["optimizer"]["state"].values()}
    assert adam_steps == {5.0}  # AdamW's moments were loaded, not started afresh (that would say 2)
    saved_epoch = max(s["epoch"] for s in saved.state["loader"])
    assert resumed.state["loader"][0]["epoch"] >= saved_epoch + 1


def digest_of(weights: dict[str, torch.Tensor]) -> str:
    from ddp_worker import digest

    return digest({k: v for k, v in weights.items() if not k.startswith("quantizer.")})


def test_a_bf16_run_is_validated_in_bf16_as_it_trains(corpus, tmp_path, monkeypatch):
    """Validation runs in the run's precision: every forward of a `train.precision=bf16` run, in
    training and in validation, is under bf16 autocast; an fp32 run's never is."""
    from bestrq.objectives.bestrq import BestRQ

    calls, forward = [], BestRQ.forward

    def spy(self, *args, **kwargs):
        calls.append((self.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BestRQ, "forward", spy)
    pretrain(small(corpus, tmp_path / "bf16", "train.steps=2", "train.valid_every=1", "train.precision=bf16",
                   "data.valid_max_batches=1"))
    assert {c[0] for c in calls} == {True, False}  # trained and validated
    assert all(enabled and dtype == torch.bfloat16 for _, enabled, dtype in calls), calls
    calls.clear()
    pretrain(small(corpus, tmp_path / "fp32", "train.steps=1", "train.valid_every=1", "data.valid_max_batches=1"))
    assert calls and not any(enabled for _, enabled, _ in calls)


def _meter_on_rank(rank: int, init: str, out: str) -> None:
    import datetime
    import types

    import torch.distributed as dist

    from bestrq.train.loop import Meter

    # a short timeout: a rank left alone in a collective fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    meter = Meter(torch.device("cpu"))
    if rank == 0:  # rank 1 meets no batch, as on a validation split of one clip for two processes
        one = torch.tensor(1.0)
        meter.add(types.SimpleNamespace(scalars=lambda: {"code_usage": one * 0.5}, masked_frames=one * 10,
                                        loss=one * 2, accuracy=one * 0.25, frames=one * 40), 3.0)
    metrics = meter.reduce()
    dist.barrier()
    dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(metrics))


def test_metrics_are_reduced_when_a_rank_met_no_batch(tmp_path):
    """Every rank joins the reduction, one with nothing to add too, and all get the same metrics
    (a rank that returned early left the other in a collective it never joined)."""
    torch.multiprocessing.spawn(_meter_on_rank, args=(f"file://{tmp_path / 'init'}", str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1]
    assert got[0]["loss"] == 2.0 and got[0]["code_usage"] == 0.5 and got[0]["audio_seconds"] == 3.0


def test_a_logging_windows_time_per_update_leaves_validation_and_checkpoints_out(monkeypatch):
    """update_seconds and audio_per_second of a window count training only; elapsed is the run's wall time."""
    from bestrq.train import loop

    now = [100.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    clock = loop._Clock(trained_before=50.0)
    for _ in range(10):  # 10 updates of 2 s, each on 30 s of audio
        now[0] += 2.0
        clock.updates += 1
        clock.audio += 30.0
    with clock.aside():  # a validation of 7 s and a checkpoint of 3 s
        now[0] += 7.0
    with clock.aside():
        now[0] += 3.0
    w = clock.window(torch.device("cpu"))
    assert w["update_seconds"] == pytest.approx(2.0) and w["audio_per_second"] == pytest.approx(15.0)
    assert w["elapsed"] == pytest.approx(50.0 + 30.0) and w["updates"] == 10
    now[0] += 4.0  # the next window starts afresh
    clock.updates += 1
    assert clock.window(torch.device("cpu"))["update_seconds"] == pytest.approx(4.0)
