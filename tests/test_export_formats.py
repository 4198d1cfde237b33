"""Exports: a trained bestrq_tiny as transformers' Wav2Vec2BertModel and as ONNX give our hidden
states; exported folders load back and continue pre-training; what cannot be exported says why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.torch_version import TorchVersion

import bestrq
from bestrq.cli import main
from bestrq.config import load_config, to_dict
from bestrq.data.manifest import load_split
from bestrq.export.hf import export_blockers, export_hf, whole_frames
from bestrq.export.onnx import torch_exports_onnx
from bestrq.features import num_frames
from bestrq.inference.api import Loaded
from bestrq.objectives import build_model
from bestrq.runtime import checkpoint
from bestrq.train.loop import _init_from, pretrain

transformers = pytest.importorskip("transformers")
onnx_export = pytest.mark.skipif(not torch_exports_onnx(), reason="ONNX export needs torch >= 2.6")

# bestrq_tiny as it is, briefly trained so the weights are not their initial ones
TINY = ["data.max_batch_duration=30", "data.num_workers=0", "data.valid_max_batches=2", "train.device=cpu",
        "train.progress=false", "train.tensorboard=false", "train.valid_every=0", "train.log_every=1",
        "optim.warmup_steps=10", "train.max_minutes=0"]
TOL = 1e-4  # the acceptance's bound, fp32, every layer


def tiny(corpus: Path, out: Path, *extra: str):
    return load_config("bestrq_tiny", [*TINY, f"data.corpus={corpus}", f"train.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    pretrain(tiny(corpus, out, "train.steps=30", "train.checkpoint_every=30"))
    return out


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "bestrq-tiny"
    assert main(["export", str(trained), str(out), "--to", "hf"]) == 0
    return out


def frames(num_samples: int) -> int:
    """10 ms frames of a clip (25 ms windows)."""
    return int(num_frames(torch.tensor(num_samples), 400, 160))


@pytest.fixture(scope="module")
def clips(corpus) -> list[np.ndarray]:
    """Real-length synthetic speech, with every remainder of the 10 ms frame count modulo 4."""
    out, seen = [], set()
    for cut in load_split(corpus, "dev"):
        x = sf.read(cut.recording.sources[0].source, dtype="float32")[0]
        if frames(len(x)) % 4 not in seen or len(out) < 6:
            seen.add(frames(len(x)) % 4)
            out.append(x)
        if len(seen) == 4 and len(out) >= 6:
            return out
    pytest.fail("the dev split lacks a clip for some frame-count remainder")


def max_diff(ours, theirs, rows) -> float:
    """Largest |difference| over every hidden state and each row's valid frames."""
    return max((a[i, :n] - b[i, :n]).abs().max().item()
               for a, b in zip(ours, theirs, strict=True) for i, n in enumerate(rows))


@pytest.mark.slow
def test_transformers_loads_the_export_and_gives_our_hidden_states(trained, exported, clips):
    hf, info = transformers.Wav2Vec2BertModel.from_pretrained(exported, output_loading_info=True)
    assert not any(info.values()), info  # no weight missing, unexpected or re-initialised
    hf.eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(exported)
    ours_model = bestrq.load(trained)
    assert ours_model.module.encoder.layers[0].ffn1_layer_norm.weight.std() > 0  # trained, not the init
    # one clip at a time, as transformers' extractor is usually called
    for clip in clips:
        if frames(len(clip)) % 4 == 3:
            # the extractor would add a last 40 ms frame with 10 ms of padding (see export/hf.py)
            clip = clip[: whole_frames(len(clip))]
        ours = ours_model.extract_features(clip)
        inputs = extractor(clip, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            theirs = hf(**inputs, output_hidden_states=True).hidden_states
        assert theirs[0].shape[1] == ours.lengths.item()
        assert len(theirs) == len(ours.hidden_states) == 5
        assert max_diff(ours.hidden_states, theirs, ours.lengths.tolist()) <= TOL
    # a padded batch of clips trimmed to whole 40 ms frames
    batch = [c[: whole_frames(len(c))] for c in clips]
    ours = ours_model.extract_features(batch)
    inputs = extractor(batch, sampling_rate=16000, return_tensors="pt")
    assert inputs["attention_mask"].sum(1).tolist() == ours.lengths.tolist()
    with torch.no_grad():
        theirs = hf(**inputs, output_hidden_states=True).hidden_states
    assert max_diff(ours.hidden_states, theirs, ours.lengths.tolist()) <= TOL


def test_the_export_loads_back_bit_for_bit_with_its_quantizer_and_heads(trained, exported):
    original, again = bestrq.load(trained), bestrq.load(exported)
    assert again.step == original.step == 30
    a, b = original.module.state_dict(), again.module.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("quantizer.") for k in a) and "heads.weight" in a
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    config = json.loads((exported / "bestrq_config.json").read_text())
    assert config == to_dict(original.config)
    assert load_config(str(exported / "bestrq_config.json")) == original.config  # usable as --config


def test_a_probed_export_is_named_after_itself_and_timed_by_the_run_it_came_from(trained, exported, tmp_path):
    from bestrq.cli import _probe_out
    from bestrq.probes.encoders import load_encoder
    from bestrq.report import collect
    from bestrq.runtime.metrics import read_metrics

    run, export = load_encoder(str(trained)), load_encoder(str(exported))
    assert export.name == "bestrq-tiny (step 30)"  # it took the name of the folder two levels up
    assert export.info["exported_from"] == str(checkpoint.latest(trained).resolve())
    assert export.info["pretrain_seconds"] == run.info["pretrain_seconds"] > 0
    assert _probe_out(str(exported)) == Path("runs/probes/bestrq-tiny")  # not inside the transformers folder
    (tmp_path / "encoder.json").write_text(json.dumps({"name": export.name, **export.info}))
    (tmp_path / "probe_emotion.json").write_text(json.dumps(
        {"test": {"accuracy": 0.5}, "curve": [{"epoch": 1, "dev_accuracy": 0.4}], "layer_weights": [1.0]}))
    (model,) = collect([tmp_path])
    assert model.pretraining and model.pretraining == read_metrics(trained / "metrics.jsonl")  # the run's curve


def test_continued_pretraining_starts_from_the_export(corpus, trained, exported, tmp_path):
    cfg = tiny(corpus, tmp_path / "cont", "train.steps=2", f"train.init_from={exported}", "encoder.dropout=0.1")
    torch.manual_seed(0)
    model = build_model(cfg)
    _init_from(model, cfg, str(exported))
    for name, value in bestrq.load(trained).module.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    # end to end: it trains from step 0 with a fresh optimizer, and starts far better than from scratch
    cont = pretrain(cfg)
    pretrain(tiny(corpus, tmp_path / "scratch", "train.steps=2", "encoder.dropout=0.1"))
    first = [json.loads(line) for line in (tmp_path / "cont" / "metrics.jsonl").read_text().splitlines()]
    first_scratch = [json.loads(x) for x in (tmp_path / "scratch" / "metrics.jsonl").read_text().splitlines()]
    assert cont.step == 2 and first[0]["step"] == 1
    assert first[0]["loss"] < first_scratch[0]["loss"] - 0.3, (first[0], first_scratch[0])
    # a run folder already holding a checkpoint resumes from it: init_from applies to a fresh run only
    more = pretrain(tiny(corpus, tmp_path / "cont", "train.steps=3", f"train.init_from={exported}",
                         "encoder.dropout=0.1"))
    lines = [json.loads(x) for x in (tmp_path / "cont" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines if m["split"] == "train"]
    assert more.step == 3 and steps == [1, 2, 3]


def test_continuing_into_a_different_model_names_the_settings(corpus, trained, exported, tmp_path):
    cfg = tiny(corpus, tmp_path / "x", f"train.init_from={exported}", "encoder.num_layers=2",
               "quantizer.codebook_size=1024")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"quantizer\.codebook_size: 8192 there, 1024 here; encoder\.num_layers: 4 there, 2 here.*"
                             r"--config .*bestrq_config\.json"):
        _init_from(build_model(cfg), cfg, str(exported))
    # from a run folder, the config it names is its checkpoint's config.json, which --config takes as it is
    with pytest.raises(checkpoint.CheckpointError, match=r"--config (.*step-\d+/config\.json)$") as raised:
        _init_from(build_model(cfg), cfg, str(trained))
    named = raised.value.args[0].rsplit("--config ", 1)[1]
    assert to_dict(load_config(named)) == to_dict(bestrq.load(trained).config)
    with pytest.raises(FileNotFoundError, match=f"^train.init_from: {tmp_path / 'nothing'}: no such run"):
        _init_from(build_model(cfg), cfg, str(tmp_path / "nothing"))
    with pytest.raises(checkpoint.CheckpointError, match=f"^train.init_from: {corpus}: not a bestrq run"):
        _init_from(build_model(cfg), cfg, str(corpus))  # a corpus folder, given by mistake


@pytest.mark.parametrize("option, blocker", [
    ("encoder.frontend=conv2d", "encoder.frontend=conv2d"),
    ("encoder.position=rotary", "encoder.position=rotary"),
    ("features.normalization=global", "features.normalization=global"),
    ("encoder.streaming=true", "encoder.streaming=true"),  # with global statistics, as streaming needs
])
def test_what_transformers_cannot_express_is_refused_naming_the_option(option, blocker, tmp_path, capsys):
    extra = ["features.normalization=global"] if option == "encoder.streaming=true" else []
    cfg = load_config("bestrq_tiny", ["encoder.num_layers=1", option, *extra])
    assert [b for b in export_blockers(cfg) if b.startswith(blocker)]
    loaded = Loaded(build_model(cfg).eval(), cfg, 0, tmp_path / "ckpt")
    with pytest.raises(ValueError, match=rf"cannot be expressed as a Wav2Vec2BertModel: {blocker}"):
        export_hf(loaded, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    for preset in ("wav2vec2_tiny", "wav2vec2_fbank_tiny"):
        assert any(b.startswith("objective=wav2vec2") for b in export_blockers(load_config(preset)))
    assert export_blockers(load_config("bestrq_tiny")) == [] == export_blockers(load_config("bestrq_base"))


def test_export_never_overwrites_unless_asked(trained, exported, capsys):
    assert main(["export", str(trained), str(exported)]) == 2
    assert "exists and is not empty (pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(exported.parent / "missing"), str(exported.parent / "o")]) == 2
    assert "no such run, checkpoint or export folder" in capsys.readouterr().err


def test_onnx_export_on_a_torch_older_than_2_6_says_so(monkeypatch, tmp_path):
    from bestrq.export.onnx import export_onnx

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.5.1+cpu"))
    with pytest.raises(ImportError, match=r"ONNX needs torch >= 2\.6 .*this is torch 2\.5\.1\+cpu"):
        export_onnx(None, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
@onnx_export
def test_onnx_export_matches_pytorch_under_onnxruntime(trained, clips, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "tiny.onnx"
    assert main(["export", str(trained), str(path), "--to", "onnx"]) == 0
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["num_hidden_states"] == 5 and meta["sample_rate"] == 16000
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = bestrq.load(trained)
    for group in (clips[:1], clips[1:4], clips):  # dynamic batch and time
        lengths = np.array([len(c) for c in group], dtype=np.int64)
        waves = np.zeros((len(group), lengths.max()), dtype=np.float32)
        for i, c in enumerate(group):
            waves[i, : len(c)] = c
        hidden, frame_lengths = session.run(None, {"waveforms": waves, "lengths": lengths})
        ours = model.extract_features(list(group))
        assert frame_lengths.tolist() == ours.lengths.tolist()
        assert hidden.shape == (5, len(group), ours.last.shape[1], 144)
        assert max_diff(ours.hidden_states, torch.from_numpy(hidden), ours.lengths.tolist()) <= TOL


@pytest.mark.slow
@onnx_export
@pytest.mark.parametrize("preset", ["wav2vec2_tiny", "wav2vec2_fbank_tiny"])
def test_onnx_export_of_a_wav2vec2_model(tmp_path, preset):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bestrq.export.onnx import export_onnx

    cfg = load_config(preset, ["encoder.num_layers=2"])
    torch.manual_seed(0)
    loaded = Loaded(build_model(cfg).eval().requires_grad_(False), cfg, 0, tmp_path / "ckpt")
    path = export_onnx(loaded, tmp_path / "w2v.onnx")
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (48_000, 30_000, 17_000)]
    lengths = np.array([len(c) for c in clips])
    waves = np.zeros((3, lengths.max()), dtype=np.float32)
    for i, c in enumerate(clips):
        waves[i, : len(c)] = c
    hidden, frame_lengths = ort.InferenceSession(str(path)).run(None, {"waveforms": waves, "lengths": lengths})
    ours = bestrq.inference.api.Model(loaded).extract_features(clips)
    assert frame_lengths.tolist() == ours.lengths.tolist() == [149, 93, 52]  # 20 ms frames
    assert max_diff(ours.hidden_states, torch.from_numpy(hidden), ours.lengths.tolist()) <= TOL


def test_a_plain_transformers_folder_and_a_damaged_checkpoint_are_told_apart(trained, exported, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(exported / name, plain / name)
    with pytest.raises(checkpoint.CheckpointError, match="a transformers model folder without"):
        bestrq.load(plain)
    damaged = tmp_path / "step-00000030"
    shutil.copytree(checkpoint.latest(trained), damaged)
    (damaged / "state.pt").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="missing state.pt"):
        bestrq.load(damaged)
    # an export folder missing one of its two weight files: the file is named
    for missing, problem in [("model.safetensors", "an export folder without its model.safetensors"),
                             ("bestrq.safetensors", "an export folder without its bestrq.safetensors")]:
        partial = tmp_path / f"no-{missing}"
        shutil.copytree(exported, partial)
        (partial / missing).unlink()  # "a transformers model folder without bestrq_config.json" / missing heads
        with pytest.raises(checkpoint.CheckpointError, match=problem):
            bestrq.load(partial)
