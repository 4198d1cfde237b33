"""Features: Kaldi compatibility (kaldi-native-fbank as the oracle), padding, normalisation, stacking."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from bestrq.data.manifest import load_split
from bestrq.features import FeatureNormalizer, LogMelFbank, kaldi_mel_banks, num_frames, stack_frames

knf = pytest.importorskip("kaldi_native_fbank")


def kaldi_reference(x: np.ndarray) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = 16000
    opts.mel_opts.num_bins = 80
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000, (x * 32768).tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def test_fbank_agrees_with_kaldi_native_fbank_on_speech(corpus):
    fbank = LogMelFbank()
    cuts = list(load_split(corpus, "dev"))[:6]
    worst = 0.0
    for cut in cuts:
        x, rate = sf.read(cut.recording.sources[0].source, dtype="float32")
        assert rate == 16000
        ref = kaldi_reference(x)
        ours, n = fbank(torch.from_numpy(x)[None], torch.tensor([len(x)]))
        assert int(n) == ref.shape[0] == ours.shape[1]
        ours = ours[0].numpy()
        # Bins more than 60 dB (14 nats) below their frame's strongest are at float32's rounding
        # level in any single-precision FFT (both implementations differ from a float64 one
        # there by ~1e-3); everywhere else the two must agree to 1e-3.
        audible = ref >= ref.max(axis=1, keepdims=True) - 14.0
        assert audible.mean() > 0.95
        diff = np.abs(ours - ref)
        worst = max(worst, float(diff[audible].max()))
        assert np.median(diff) < 1e-4
    assert worst <= 1e-3, worst


def test_features_equal_transformers_seamless_m4t_extractor_everywhere(corpus):
    """Normalised features as transformers' float64 extractor makes them, quiet bins included:
    an exported model gets the same input there as here (the float32 Kaldi oracle above
    differs from both by up to 1e-3 in bins 60 dB below their frame's loudest)."""
    transformers = pytest.importorskip("transformers")
    extractor = transformers.SeamlessM4TFeatureExtractor(stride=4)
    fbank, norm = LogMelFbank(), FeatureNormalizer(80, "utterance")
    cuts = list(load_split(corpus, "dev"))[:6]
    clips = [sf.read(c.recording.sources[0].source, dtype="float32")[0] for c in cuts]
    for x in clips:
        raw = extractor._extract_fbank_features(x)
        ours, n = fbank(torch.from_numpy(x)[None], torch.tensor([len(x)]))
        assert np.abs(ours[0].numpy() - raw).max() < 2e-5
    theirs = extractor(clips, sampling_rate=16000, return_tensors="pt")
    batch = torch.zeros(len(clips), max(map(len, clips)))
    for i, x in enumerate(clips):
        batch[i, : len(x)] = torch.from_numpy(x)
    feats, n = fbank(batch, torch.tensor([len(x) for x in clips]))
    ours = norm(feats, n)
    unstacked = theirs["input_features"].reshape(len(clips), -1, 80)  # (B, T4 * 4, 80)
    for i, frames in enumerate(n.tolist()):
        whole = frames // 4 * 4
        diff = (ours[i, :whole] - unstacked[i, :whole]).abs().max().item()
        assert diff < 2e-5, diff


def test_frame_count_follows_kaldi_snip_edges():
    lengths = torch.tensor([0, 399, 400, 559, 560, 16000])
    assert num_frames(lengths, 400, 160).tolist() == [0, 0, 1, 1, 2, 98]


def test_mel_banks_are_triangles_over_the_kaldi_mel_range():
    banks = kaldi_mel_banks(80, 512, 16000, 20.0, 0.0)  # (257, 80)
    assert banks.shape == (257, 80)
    assert torch.all(banks >= 0) and torch.all(banks <= 1)
    assert torch.all(banks[-1] == 0)  # Kaldi leaves out the Nyquist bin
    peaks = banks.argmax(dim=0)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the bin index


def test_batched_fbank_equals_each_utterance_alone():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([16000, 9000, 4321, 400])
    waves = torch.zeros(4, 16000)
    for i, n in enumerate(lengths):
        waves[i, :n] = 0.1 * torch.randn(int(n), generator=g)
    fbank = LogMelFbank()
    batched, frames = fbank(waves, lengths)
    for i, n in enumerate(lengths):
        alone, f = fbank(waves[i : i + 1, :n], lengths[i : i + 1])
        assert f.item() == frames[i].item()
        torch.testing.assert_close(batched[i, : frames[i]], alone[0], rtol=0, atol=1e-5)
        assert torch.all(batched[i, frames[i] :] == 0)


def test_utterance_normalisation_uses_valid_frames_only():
    g = torch.Generator().manual_seed(1)
    feats = 5 + 3 * torch.randn(3, 50, 8, generator=g)
    lengths = torch.tensor([50, 20, 7])
    feats[1, 20:] = 1000.0  # padding garbage must not leak into the statistics
    norm = FeatureNormalizer(8, "utterance")
    out = norm(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        valid = out[i, :n]
        torch.testing.assert_close(valid.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
        torch.testing.assert_close(valid.std(0, unbiased=True), torch.ones(8), atol=1e-3, rtol=0)
        assert torch.all(out[i, n:] == 0)
    torch.testing.assert_close(norm(feats[1:2, :20], lengths[1:2])[0], out[1, :20])


def test_global_normalisation_learns_corpus_statistics_then_freezes():
    g = torch.Generator().manual_seed(2)
    norm = FeatureNormalizer(4, "global", global_frames=300)
    with pytest.raises(RuntimeError, match="no statistics"):
        norm.eval()(torch.zeros(1, 5, 4), torch.tensor([5]))
    norm.train()
    data = 2 + 0.5 * torch.randn(8, 100, 4, generator=g)
    for i in range(0, 8, 2):
        norm(data[i : i + 2], torch.tensor([100, 100]))
    assert norm.count.item() == 400  # stopped accumulating once past 300 frames
    out = norm(data, torch.full((8,), 100))
    assert abs(out.mean().item()) < 0.05 and abs(out.std().item() - 1) < 0.05
    assert {"count", "sum", "sum_sq"} <= set(norm.state_dict())  # saved with the model


def test_stacking_groups_whole_frames_per_utterance():
    feats = torch.arange(2 * 10 * 3, dtype=torch.float32).view(2, 10, 3)
    stacked, lengths = stack_frames(feats, torch.tensor([10, 7]), 4)
    assert stacked.shape == (2, 2, 12) and lengths.tolist() == [2, 1]
    torch.testing.assert_close(stacked[0, 1], feats[0, 4:8].reshape(-1))
