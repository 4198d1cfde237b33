"""The Python API: bestrq.load round-trips a checkpoint; extract_features and the s3prl upstream contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small

import bestrq
from bestrq.config import load_config
from bestrq.data.audio import resample
from bestrq.inference.api import Loaded, Model
from bestrq.objectives import build_model
from bestrq.runtime import checkpoint
from bestrq.train.loop import pretrain


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("run")
    result = pretrain(small(corpus, out, "train.steps=2"))
    return out, {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def speech(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (150 + 100 * t) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def test_load_round_trips_the_trained_weights(run):
    out, trained = run
    model = bestrq.load(out)  # the run folder: its newest checkpoint
    assert model.step == 2 and model.source == checkpoint.latest(out)
    state = model.module.state_dict()
    assert state.keys() == trained.keys()
    for name, value in trained.items():
        assert torch.equal(state[name], value), name
    assert not any(p.requires_grad for p in model.parameters()) and not model.module.training
    again = bestrq.load(checkpoint.latest(out))  # a checkpoint folder gives the same model
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_extract_features_batched_equals_each_clip_alone_and_any_rate_is_resampled(run):
    model = bestrq.load(run[0])
    clips = [speech(2.3, 0), speech(1.1, 1), speech(0.5, 2)]
    batch = model.extract_features(clips)
    assert len(batch.hidden_states) == model.num_layers == 3
    assert batch.lengths.tolist() == [((len(c) - 400) // 160 + 1) // 4 for c in clips]  # 25 ms / 10 ms, 4 stacked
    for i, clip in enumerate(clips):
        alone = model.extract_features(clip)
        t = int(alone.lengths[0])
        assert t == batch.lengths[i]
        for h_batch, h_alone in zip(batch.hidden_states, alone.hidden_states):
            assert (h_batch[i, :t] - h_alone[0]).abs().max() <= 1e-5
    # a padded (B, S) tensor with lengths reads the same as the list
    padded = torch.zeros(3, len(clips[0]))
    for i, c in enumerate(clips):
        padded[i, : len(c)] = torch.from_numpy(c)
    same = model.extract_features(padded, lengths=[len(c) for c in clips])
    assert torch.equal(same.last, batch.last)
    # 8 kHz audio is resampled to the model's 16 kHz first
    low = speech(1.5, 3, rate=8000)
    ours = model.extract_features(low, sample_rate=8000)
    direct = model.extract_features(resample(low, 8000, 16000))
    assert torch.equal(ours.last, direct.last)


def test_s3prl_upstream_contract(run):
    model = bestrq.load(run[0])
    upstream = model.upstream()
    wavs = [torch.from_numpy(speech(s, i)) for i, s in enumerate((1.0, 2.56, 0.7))]
    out = upstream(wavs)
    assert set(out) >= {"hidden_states", "last_hidden_state"}
    assert len(out["hidden_states"]) == model.num_layers and out["last_hidden_state"] is out["hidden_states"][-1]
    rate = upstream.get_downsample_rates("hidden_states")
    assert rate == 640  # 10 ms hop x 4 stacked frames
    longest = max(len(w) for w in wavs)
    for h in out["hidden_states"]:
        assert h.shape[0] == 3 and h.shape[2] == model.config.encoder.d_model
        assert abs(h.shape[1] - longest / rate) <= 1  # s3prl checks the frame count against the rate


@pytest.mark.parametrize("preset, overrides, rate", [
    ("wav2vec2_tiny", [], 320), ("wav2vec2_fbank_tiny", [], 320),
    ("wav2vec2_fbank_tiny", ["wav2vec2.fbank_stack=4"], 640),
])
def test_wav2vec2_models_report_their_frame_rate(preset, overrides, rate):
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    model = Model(Loaded(build_model(cfg).eval().requires_grad_(False), cfg, 0, Path("."), {}))
    assert model.downsample_rate == rate
    out = model.extract_features(speech(1.0, 0))
    assert abs(out.lengths.item() - 16000 / rate) <= 1 and len(out.hidden_states) == cfg.encoder.num_layers + 1


@pytest.mark.parametrize("preset, overrides, shortest", [
    ("bestrq_tiny", [], 880), ("bestrq_tiny", ["encoder.frontend=conv2d"], 880), ("wav2vec2_tiny", [], 400),
    ("wav2vec2_fbank_tiny", [], 560),
])
def test_the_shortest_clip_gives_one_frame_and_output_lengths_are_the_encoders(preset, overrides, shortest):
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    model = Model(Loaded(build_model(cfg).eval().requires_grad_(False), cfg, 0, Path("."), {}))
    assert model.min_samples == shortest  # 25 ms windows: 55 ms for 4 stacked 10 ms frames, 35 ms for 2
    sizes = [shortest, shortest + 1, 3 * shortest + 7, 5000, 16000]
    out = model.extract_features([speech(1.0, i)[:n] for i, n in enumerate(sizes)])
    assert out.lengths.tolist() == model.output_lengths(torch.tensor(sizes)).tolist()
    assert out.lengths[0] == 1
    with pytest.raises(ValueError, match=rf"clip 1 has {shortest - 1} samples at 16000 Hz, too short for one frame: "
                                         rf"the encoder needs at least {shortest} \({shortest / 16:g} ms\)$"):
        model.extract_features([speech(1.0, 0), speech(1.0, 1)[:shortest - 1]])


def test_bad_calls_name_the_problem(run, tmp_path):
    model = bestrq.load(run[0])
    with pytest.raises(ValueError, match="expected 1-D audio"):
        model.extract_features([np.zeros((2, 16000), dtype=np.float32)])
    with pytest.raises(ValueError, match="do not fit"):
        model.extract_features(torch.zeros(2, 100), lengths=[100, 200])
    with pytest.raises(ValueError, match=r"clip 0 has 0 samples .* at least 880 \(55 ms\)$"):
        model.extract_features(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"clip 0 has 2 samples .*a 2-D input is a batch \(B, S\); this one is "
                                         r"\(16000, 2\)"):
        model.extract_features(torch.zeros(16000, 2))  # (S, channels) audio taken for a batch
    noisy = speech(1.0, 0)
    noisy[100] = np.nan
    with pytest.raises(ValueError, match="clip 1 holds NaN or infinite samples"):
        model.extract_features([speech(1.0, 0), noisy])
    for rate in (0, -8000, 8000.0, True):
        with pytest.raises(ValueError, match=f"sample_rate must be a positive whole number of Hz, got {rate!r}"):
            model.extract_features(speech(1.0, 0), sample_rate=rate)
    assert model.extract_features(speech(1.0, 0, 8000), sample_rate=np.int64(8000)).lengths.item() == 24
    with pytest.raises(TypeError, match="expected audio as a tensor or numpy array, got str"):
        model.extract_features("speech.wav")
    with pytest.raises(ValueError, match="device: 'gpu' is not a device this runs on"):
        bestrq.load(run[0], device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device=cuda, but no CUDA device is available"):
            bestrq.load(run[0], device="cuda")
    with pytest.raises(FileNotFoundError, match="no such run"):
        bestrq.load(tmp_path / "nothing")
    # a folder or file of something else (a corpus, say): said so, rather than "missing model.safetensors"
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "summary.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match=r"corpus: not a bestrq run, checkpoint or export folder"):
        bestrq.load(tmp_path / "corpus")
    with pytest.raises(checkpoint.CheckpointError, match=r"summary\.json: a file; give a bestrq run, checkpoint"):
        bestrq.load(tmp_path / "corpus" / "summary.json")
    (tmp_path / "run" / "checkpoints" / "step-00000003").mkdir(parents=True)  # a checkpoint emptied on disk
    with pytest.raises(checkpoint.CheckpointError, match=r"step-00000003: missing model\.safetensors"):
        bestrq.load(tmp_path / "run" / "checkpoints" / "step-00000003")
    with pytest.raises(checkpoint.CheckpointError, match="without any complete checkpoint"):
        (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
        bestrq.load(tmp_path / "empty")
    # a run before its first checkpoint (its config.json and metrics.jsonl, no checkpoints/ yet): it said
    # "missing model.safetensors: not a complete bestrq checkpoint", as if the run folder were a checkpoint
    (tmp_path / "young").mkdir()
    shutil.copy(run[0] / "config.json", tmp_path / "young")
    shutil.copy(run[0] / "metrics.jsonl", tmp_path / "young")
    with pytest.raises(checkpoint.CheckpointError, match=r"young: a run folder without any complete checkpoint \(a "
                                                         r"run writes its first at step train\.checkpoint_every\)"):
        bestrq.load(tmp_path / "young")
