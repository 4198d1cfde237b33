"""Streaming encoders: chunked attention hides the future, training draws chunkings reproducibly,
and chunk-by-chunk inference equals a whole-utterance forward with the same chunks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import bestrq
from bestrq.config import ConfigError, load_config
from bestrq.data.manifest import load_split
from bestrq.inference.streaming import Streamer
from bestrq.models.chunking import Chunking, ChunkSpec, attention_mask
from bestrq.objectives import build_model
from bestrq.train.loop import pretrain

SMALL = ["encoder.d_model=32", "encoder.num_layers=2", "encoder.num_heads=2", "encoder.ffn_dim=64",
         "quantizer.codebook_size=64"]
PIECES = {"1 sample": 1, "10 ms": 160, "37 ms": 592, "320 ms": 5120, "2 s": 32000}


def _model(*extra: str, train_batches: int = 1):
    cfg = load_config("bestrq_tiny_streaming", [*SMALL, *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    for i in range(train_batches):  # global feature statistics, from a batch
        model(0.1 * torch.randn(2, 32000), torch.tensor([32000, 24000]), torch.Generator().manual_seed(i), 0)
    return model.eval()


def test_a_chunk_sees_its_own_chunk_and_the_left_ones_only():
    allowed = Chunking(2, left=1).allowed(6, torch.device("cpu")).int()
    assert allowed.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
                                [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert Chunking(4).allowed(6, torch.device("cpu")).int().tolist()[5] == [1, 1, 1, 1, 1, 1]
    # a padded query may attend anywhere (no empty row, hence no NaN); valid queries keep their chunks
    pad = torch.tensor([[False, False, True, True, True, True]])
    mask = attention_mask(Chunking(1, left=0), pad)[0, 0]
    assert mask[:2].int().tolist() == [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]] and mask[2:].all()


@pytest.mark.parametrize("position", ["relative_key", "rotary"])
def test_chunked_attention_hides_everything_after_a_frames_chunk(position):
    model = _model(f"encoder.position={position}")
    wave = 0.1 * torch.randn(1, 40000, generator=torch.Generator().manual_seed(1))
    changed = wave.clone()
    first_unseen = 640 * 8 + 240  # the first sample of frame 8's fbank frames (frames 0-7: chunks 0 and 1)
    changed[:, first_unseen:] = 0.1 * torch.randn(1, 40000 - first_unseen)
    lengths = torch.tensor([40000])
    a = model.encode(wave, lengths, Chunking(4, left=1)).hidden_states
    b = model.encode(changed, lengths, Chunking(4, left=1)).hidden_states
    for x, y in zip(a, b):
        assert torch.equal(x[:, :8], y[:, :8])  # chunks 0 and 1 wait for nothing after them
        assert not torch.allclose(x[:, 8:12], y[:, 8:12])  # chunk 2 sees the change
    full = model.encode(changed, lengths).hidden_states
    assert not torch.allclose(full[-1][:, :8], b[-1][:, :8])  # full context does look ahead


@pytest.mark.parametrize("position", ["relative_key", "rotary"])
def test_chunked_attention_under_bf16_autocast_hides_the_future_and_stays_finite(position):
    """As a GPU run computes it: bf16 autocast, a padded batch with a chunking per utterance (one row of a
    single frame), a training step too."""
    model = _model(f"encoder.position={position}", "encoder.chunk_prob=1").train()
    gen = torch.Generator().manual_seed(4)
    wave, lengths = 0.1 * torch.randn(3, 32000, generator=gen), torch.tensor([32000, 20000, 880])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(wave, lengths, torch.Generator().manual_seed(0), 0).loss)
    model.eval()
    chunkings = [Chunking(4, left=1), None, Chunking(2, left=0)]
    changed = wave.clone()
    changed[0, 640 * 8 + 240 :] = 0.1 * torch.randn(32000 - 640 * 8 - 240, generator=gen)  # after chunk 1
    exact = model.encode(wave, lengths, chunkings).hidden_states
    swapped = model.encode(wave, lengths, [None, Chunking(4, left=1), None]).hidden_states  # another mask
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = model.encode(wave, lengths, chunkings).hidden_states
        b = model.encode(changed, lengths, chunkings).hidden_states
    frames = model.output_lengths(lengths).tolist()
    assert frames[2] == 1
    # bf16's rounding, not another mask, bounded from the precision asked for by the probabilistic model of
    # rounding errors: each product under autocast rounds its two inputs and its output to bf16 (relative
    # error <= u = 2^-8 each), the front-end has 1 product, a layer 14 (relative_key; rotary 13), and r
    # independent roundings add in quadrature, so |x - ref| <= 2 sqrt(r) u |ref| (lambda = 2 in Higham and
    # Mary's probabilistic bound lambda sqrt(r) u, 2019; it assumes no amplification between layers). A CPU
    # without AMX gave 4-10x less; the swapped mask is 3-5x the bound from layer 1 on.
    for layer, (x, y, ref, other) in enumerate(zip(a, b, exact, swapped)):
        assert torch.isfinite(x).all()
        assert torch.equal(x[0, :8], y[0, :8])  # the -inf of the chunk mask is exact in bf16 too
        bound = 2 * (3 * (1 + 14 * layer)) ** 0.5 * 2.0**-8
        for i, t in enumerate(frames):
            assert (x[i, :t].float() - ref[i, :t]).norm() <= bound * ref[i, :t].norm(), (layer, i)
            if layer and i < 2:  # the test tells masks apart
                assert (other[i, :t] - ref[i, :t]).norm() > 2 * bound * ref[i, :t].norm(), (layer, i)


def test_a_batch_with_chunked_attention_equals_each_utterance_alone():
    model = _model()
    gen = torch.Generator().manual_seed(2)
    clips = [0.1 * torch.randn(n, generator=gen) for n in (40000, 23000, 9000)]
    batch = torch.zeros(3, 40000)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = c
    lengths = torch.tensor([len(c) for c in clips])
    chunkings = [Chunking(3, left=2), None, Chunking(5)]  # one per utterance
    together = model.encode(batch, lengths, chunkings)
    for i, c in enumerate(clips):
        alone = model.encode(c[None], lengths[i : i + 1], chunkings[i])
        t = int(alone.lengths[0])
        for x, y in zip(together.hidden_states, alone.hidden_states):
            assert torch.allclose(x[i, :t], y[0], atol=1e-5)
            assert torch.isfinite(x).all()


def test_training_draws_its_chunkings_from_the_step_seed(monkeypatch):
    spec = ChunkSpec(0.6, (8, 32), 0.75, (2, 32), "batch")
    draws = [spec.draw(random.Random(seed)) for seed in range(400)]
    chunked = [d for d in draws if d is not None]
    assert 0.5 < len(chunked) / 400 < 0.7 and 0.65 < sum(d.left is not None for d in chunked) / len(chunked) < 0.85
    assert {d.frames for d in chunked} <= set(range(8, 33)) and min(d.frames for d in chunked) == 8
    assert draws == [spec.draw(random.Random(seed)) for seed in range(400)]  # a resume draws them again

    model = _model("encoder.chunk_prob=1", "encoder.chunk_per=utterance").train()
    seen = []
    forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda *a, chunking=None: seen.append(chunking) or forward(*a))
    for seed in (5, 5, 6):
        model(0.1 * torch.randn(3, 16000), torch.tensor([16000] * 3), torch.Generator().manual_seed(seed), 0)
    assert all(isinstance(c, list) and len(c) == 3 and all(isinstance(x, Chunking) for x in c) for c in seen)
    assert seen[0] == seen[1] != seen[2]
    model.eval()
    model.encode(0.1 * torch.randn(1, 16000), torch.tensor([16000]))
    assert seen[-1] is None  # inference: full context unless asked


@pytest.mark.parametrize("preset, setting, message", [
    ("bestrq_tiny_streaming", "features.normalization=utterance", "needs features.normalization global or none"),
    ("bestrq_tiny_streaming", "encoder.frontend=conv2d", "needs encoder.frontend stack"),
    ("bestrq_tiny_streaming", "encoder.kind=transformer", "needs encoder.kind conformer"),
    ("bestrq_tiny_streaming", "encoder.chunk_frames=[32,8]", "must be \\[smallest, largest\\]"),
    ("wav2vec2_tiny", "encoder.streaming=true", "needs encoder.kind conformer"),
    ("wav2vec2_tiny", "encoder.streaming=true encoder.kind=conformer", "needs wav2vec2.conv_norm layer"),
    ("wav2vec2_fbank_tiny", "encoder.streaming=true encoder.kind=conformer",
     "needs features.normalization global or none"),
])
def test_a_streaming_config_that_would_look_ahead_is_refused(preset, setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset, setting.split())


@pytest.mark.parametrize("preset, extra", [("wav2vec2_tiny", "wav2vec2.conv_norm=layer"),
                                           ("wav2vec2_fbank_tiny", "features.normalization=global")])
def test_wav2vec2_trains_and_streams_chunked_encoders_too(preset, extra):
    """Its waveform encoder (with per-frame layer norms) or fbank frames, then a chunked Conformer: the first
    chunks wait for nothing after them; training draws chunkings as BEST-RQ does; the streamer gives the
    whole forward's states."""
    cfg = load_config(preset, [*SMALL, "encoder.kind=conformer", "encoder.streaming=true", "encoder.chunk_prob=1",
                               extra])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    seen = []
    forward = model.encoder.forward
    model.encoder.forward = lambda *a, chunking=None: seen.append(chunking) or forward(*a, chunking=chunking)
    out = model(0.1 * torch.randn(2, 32000), torch.tensor([32000, 24000]), torch.Generator().manual_seed(1), 10)
    out.loss.backward()
    assert isinstance(seen[0], Chunking) and torch.isfinite(out.loss)
    model.eval()
    wave = 0.1 * torch.randn(1, 32000, generator=torch.Generator().manual_seed(2))
    changed = wave.clone()
    changed[:, 320 * 8 + 240 :] = 0.1 * torch.randn(1, 32000 - 320 * 8 - 240)  # after frame 7 (20 ms) and its windows
    a = model.encode(wave, torch.tensor([32000]), Chunking(4, left=1)).hidden_states
    b = model.encode(changed, torch.tensor([32000]), Chunking(4, left=1)).hidden_states
    assert all(torch.equal(x[:, :8], y[:, :8]) and not torch.allclose(x[:, 8:12], y[:, 8:12]) for x, y in zip(a, b))
    # and it streams: the same states chunk by chunk, from pieces of any size
    whole = torch.stack([h[0] for h in model.encode(wave, torch.tensor([32000]), Chunking(8, left=2)).hidden_states])
    for size in PIECES.values():
        streamer = Streamer(model, 8, 2)
        got = torch.cat([streamer.push(wave[0, i : i + size]) for i in range(0, 32000, size)] + [streamer.flush()], 1)
        assert got.shape == whole.shape and (got - whole).abs().max() < 1e-4, size
    if preset == "wav2vec2_tiny":  # the default group norm needs the whole clip
        grouped = build_model(load_config(preset, [*SMALL, "encoder.kind=conformer"])).eval()
        with pytest.raises(ValueError, match="group norm normalises each channel over the whole clip"):
            Streamer(grouped, 8)


@pytest.mark.parametrize("preset", ["bestrq_tiny", "wav2vec2_tiny"])
def test_a_transformer_encoder_trains_under_either_objective_and_refuses_a_chunking(preset):
    """The objectives hand either encoder kind its chunking (None: full context); the Transformer has no
    chunked attention, so it refuses any other."""
    cfg = load_config(preset, [*SMALL, "encoder.kind=transformer"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    out = model(0.1 * torch.randn(2, 16000), torch.tensor([16000, 12000]), torch.Generator().manual_seed(0), 0)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    model.eval()
    wave, lengths = 0.1 * torch.randn(1, 16000), torch.tensor([16000])
    assert model.encode(wave, lengths).last.shape[1] > 0
    with pytest.raises(ValueError, match="no chunked attention"):
        model.encode(wave, lengths, Chunking(4))


def test_a_model_that_needs_the_whole_clip_cannot_stream():
    cfg = load_config("bestrq_tiny", SMALL)
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="each utterance's statistics"):
        Streamer(model, 8)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """bestrq_tiny_streaming after a short pre-training on the demo corpus."""
    out = tmp_path_factory.mktemp("streaming") / "run"
    cfg = load_config("bestrq_tiny_streaming", [
        f"data.corpus={corpus}", f"train.out_dir={out}", "train.steps=12", "train.progress=false",
        "train.tensorboard=false", "data.num_workers=0", "train.valid_every=0", "data.valid_split=",
        "data.max_batch_duration=30", "encoder.chunk_prob=1"])
    pretrain(cfg)
    return bestrq.load(out)


@pytest.mark.parametrize("chunk_ms, left_chunks", [(320, 2), (1280, None)])
def test_streamed_states_equal_the_whole_utterance_forward_for_any_piece_size(trained, corpus, chunk_ms, left_chunks):
    clip = max(list(load_split(corpus, "dev"))[:8], key=lambda c: c.duration)
    wave = clip.load_audio()[0].astype(np.float32)  # a few seconds: several chunks, a partial one last
    whole = torch.stack([h[0] for h in trained.extract_features(wave, chunk_ms=chunk_ms,
                                                                left_chunks=left_chunks).hidden_states])
    streamer = trained.streamer(chunk_ms=chunk_ms, left_chunks=left_chunks)
    for name, size in PIECES.items():
        outs = [streamer.push(wave[i : i + size]) for i in range(0, len(wave), size)]
        outs.append(streamer.flush())
        got = torch.cat(outs, dim=1)
        assert got.shape == whole.shape, name
        assert (got - whole).abs().max() < 1e-4, name  # every layer, every frame
        assert all(o.shape[0] == trained.num_layers and o.shape[2] == whole.shape[2] for o in outs)
    # a chunk's states come out with its last sample (frame C - 1 ends at sample 640 C + 240), not later
    last = 640 * (chunk_ms // 40) + 240
    assert streamer.push(wave[: last - 1]).shape[1] == 0
    assert streamer.push(wave[last - 1 : last]).shape[1] == chunk_ms // 40
    streamer.flush()


def test_the_streamer_says_what_is_wrong_with_its_arguments(trained):
    with pytest.raises(ValueError, match="multiple of the 40 ms frame"):
        trained.streamer(chunk_ms=100)
    streamer = trained.streamer()
    with pytest.raises(ValueError, match="1-D audio"):
        streamer.push(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        streamer.push(np.full(10, np.nan, dtype=np.float32))
    assert streamer.flush().shape == (trained.num_layers, 0, trained.module.encoder.d_model)


def test_probes_see_the_streamed_states_in_their_own_cache(trained, corpus, tmp_path):
    from bestrq.probes.cache import _fingerprint
    from bestrq.probes.encoders import load_encoder, same_encoder

    run = trained.source.parent.parent  # the run folder of the checkpoint
    full, chunked = load_encoder(str(run)), load_encoder(str(run), chunk_ms=320, left_chunks=2)
    assert chunked.name.endswith("chunks of 320 ms (2 left)")
    wave = torch.from_numpy(load_split(corpus, "dev")[0].load_audio()).float()
    lengths = torch.tensor([wave.shape[1]])
    expected = trained.extract_features(wave[0].numpy(), chunk_ms=320, left_chunks=2).hidden_states
    got = chunked.encode(wave, lengths).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not torch.equal(full.encode(wave, lengths).last, got[-1])
    cuts = list(load_split(corpus, "dev"))[:2]
    assert _fingerprint(full, cuts, "float16") != _fingerprint(chunked, cuts, "float16")
    record = {"name": full.name, "spec": full.spec, **full.info}
    assert not same_encoder(record, {"name": chunked.name, "spec": chunked.spec, **chunked.info})
    with pytest.raises(ValueError, match="multiple of the 40 ms frame"):
        load_encoder(str(run), chunk_ms=100)
    with pytest.raises(ValueError, match="give --chunk-ms too"):  # not full context, silently
        load_encoder(str(run), left_chunks=2)
    with pytest.raises(ValueError, match="give chunk_ms too"):
        trained.extract_features(wave[0].numpy(), left_chunks=2)
    with pytest.raises(ValueError, match="cannot stream: .*each utterance's statistics"):
        load_encoder("random:bestrq_tiny", chunk_ms=320)


def test_the_onnx_step_export_runs_chunk_by_chunk_under_onnxruntime_as_the_streamer(trained, corpus, tmp_path):
    import json
    import subprocess
    import sys

    from bestrq.export.onnx import stream_chunks

    _need_onnx()
    run = trained.source.parent.parent
    done = subprocess.run([sys.executable, "-m", "bestrq", "export", str(run), str(tmp_path / "step.onnx"), "--to",
                           "onnx", "--chunk-ms", "320", "--left-chunks", "2"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "step.json").read_text())
    assert meta["chunk_frames"] == 8 and meta["samples_per_call"] == 640 * 8 + 240
    wave = max(list(load_split(corpus, "dev"))[:8], key=lambda c: c.duration).load_audio()[0].astype(np.float32)
    got, calls = _onnx_states(tmp_path / "step.onnx", wave)
    streamer = trained.streamer(chunk_ms=320, left_chunks=2)
    expected = torch.cat([streamer.push(wave), streamer.flush()], dim=1).numpy()
    assert got.shape == expected.shape and calls > 3
    assert np.abs(got - expected).max() < 1e-4
    # the clip cut as the defaults of stream_chunks cut it (BEST-RQ's geometry)
    assert [f for _, f in stream_chunks(wave, 8)] == [f for _, f in stream_chunks(wave, 8, meta["hop"], meta["window"])]
    refused = subprocess.run([sys.executable, "-m", "bestrq", "export", str(run), str(tmp_path / "x"),
                              "--chunk-ms", "320"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "add --to onnx" in refused.stderr


def _need_onnx() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bestrq.export.onnx import torch_exports_onnx

    if not torch_exports_onnx():
        pytest.skip("exporting to ONNX needs torch >= 2.6")


def _onnx_states(path, wave: np.ndarray) -> tuple[np.ndarray, int]:
    """The states (L + 1, T, D) of the ONNX step function at ``path`` run over ``wave`` chunk by chunk under
    onnxruntime, as its JSON describes it; and the number of calls."""
    import json

    import onnxruntime as ort

    from bestrq.export.onnx import stream_chunks

    meta = json.loads(path.with_suffix(".json").read_text())
    session = ort.InferenceSession(str(path))
    state = {name: np.zeros(shape, dtype=np.float32) for name, shape in meta["state_shapes"].items()}
    seen, outs = np.array([0]), []
    for samples, frames in stream_chunks(wave, meta["chunk_frames"], meta["hop"], meta["window"]):
        assert samples.shape == (meta["samples_per_call"],)
        hidden, state["keys"], state["values"], state["conv"], seen = session.run(
            None, {"samples": samples, "frames": np.array([frames]), "seen": seen, **state})
        outs.append(hidden[:, :frames])
    return np.concatenate(outs, axis=1), len(outs)


@pytest.mark.parametrize("preset, extra", [
    ("wav2vec2_tiny", "wav2vec2.conv_norm=layer"),
    ("wav2vec2_fbank_tiny", "features.normalization=global"),
    ("wav2vec2_fbank_tiny", "features.normalization=global encoder.position=rotary"),
])
def test_the_onnx_step_export_streams_wav2vec2_models_as_the_streamer(preset, extra, tmp_path):
    """Its waveform encoder (20 ms frames of 400 samples) or its fbank frames, through the same step; and
    rotary positions, which the step computes from the frames seen before the chunk."""
    from bestrq.export.onnx import export_onnx_stream
    from bestrq.inference.loading import Loaded

    _need_onnx()
    cfg = load_config(preset, [*SMALL, "encoder.kind=conformer", "encoder.streaming=true", *extra.split()])
    torch.manual_seed(0)
    model = build_model(cfg).train()  # a batch in training mode: global feature statistics
    model(0.1 * torch.randn(2, 32000), torch.tensor([32000, 24000]), torch.Generator().manual_seed(1), 10)
    model.eval()
    path = export_onnx_stream(Loaded(model, cfg, 10, tmp_path / "ckpt"), tmp_path / "step.onnx", 160, 2)
    wave = 0.1 * torch.randn(30001, generator=torch.Generator().manual_seed(2)).numpy()  # a partial chunk last
    got, calls = _onnx_states(path, wave)
    streamer = Streamer(model, 8, 2)  # 160 ms: 8 frames of 20 ms
    expected = torch.cat([streamer.push(wave), streamer.flush()], dim=1).numpy()
    assert got.shape == expected.shape and calls == 12  # 93 frames: 11 whole chunks and 5 frames
    assert np.abs(got - expected).max() < 1e-4
