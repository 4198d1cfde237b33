"""Downstream probes: the weighted layer sum, the cache, the metrics, the heads and the command line."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lhotse import CutSet
from lhotse.utils import fastcopy

from bestrq.cli import main
from bestrq.data.manifest import load_split, save_split
from bestrq.probes.cache import encode_cuts, extract
from bestrq.probes.encoders import load_encoder
from bestrq.probes.heads import BiLSTM, CTCHead, PooledClassifier, SpeakerHead, WeightedLayerSum
from bestrq.probes.metrics import ctc_greedy, equal_error_rate, error_rates, macro_f1
from bestrq.probes.tasks import Probe, ProbeConfig, task_data


def test_weighted_sum_is_a_convex_combination_that_starts_equal():
    torch.manual_seed(0)
    layers = WeightedLayerSum(4)
    w = layers.weights
    assert torch.allclose(w, torch.full((4,), 0.25))
    layers.logits.data = torch.tensor([0.3, -1.0, 2.0, 0.0])
    w = layers.weights
    assert (w > 0).all() and math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)
    hidden = torch.randn(4, 2, 7, 16) * torch.tensor([1.0, 10.0, 0.1, 3.0])[:, None, None, None]
    normed = F.layer_norm(hidden, (16,))
    expected = sum(w[i] * normed[i] for i in range(4))
    assert torch.allclose(layers(hidden), expected, atol=1e-6)


def test_layer_weights_are_learned_toward_the_useful_layer():
    torch.manual_seed(0)
    hidden = torch.randn(5, 8, 20, 12)
    target = F.layer_norm(hidden[3], (12,))
    layers = WeightedLayerSum(5)
    opt = torch.optim.Adam(layers.parameters(), lr=0.1)
    for _ in range(100):
        loss = (layers(hidden) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert layers.weights.argmax().item() == 3 and layers.weights[3] > 0.9


def test_a_single_layer_probe_reads_that_layer_alone_and_learns_no_weights():
    hidden = torch.randn(5, 2, 7, 16) * 3.0
    layers = WeightedLayerSum(5, only=2)
    assert torch.allclose(layers(hidden), F.layer_norm(hidden[2], (16,)), atol=1e-6)
    assert layers.weights.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert not any(p.requires_grad for p in layers.parameters())
    with pytest.raises(ValueError, match="layer 5: the encoder has hidden states 0 to 4"):
        WeightedLayerSum(5, only=5)


def test_ctc_greedy_merges_repeats_then_drops_blanks():
    # frames: a a _ a b b _ _ c (then padding that must be ignored)
    frames = [1, 1, 0, 1, 2, 2, 0, 0, 3, 3, 3]
    scores = F.one_hot(torch.tensor([frames, [2, 2, 2, 0, 0, 0, 0, 0, 0, 1, 1]]), 4).float().log_softmax(-1)
    assert ctc_greedy(scores, torch.tensor([9, 3])) == [[1, 1, 2, 3], [2]]
    assert ctc_greedy(scores[:1], torch.tensor([0])) == [[]]


def test_eer_on_hand_made_score_lists():
    # targets 0.9 0.8 0.3, non-targets 0.7 0.2 0.1: at threshold 0.7 one of three each way
    assert equal_error_rate([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0, 0]) == pytest.approx(1 / 3)
    assert equal_error_rate([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 0.0  # separable
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0  # inverted
    # the rates cross on a step: at 0.65 both are 1/2 (0.7: FAR 1/4, FRR 1/2; 0.6: FAR 1/2, FRR 1/4)
    assert equal_error_rate([0.9, 0.8, 0.6, 0.1, 0.7, 0.5, 0.65, 0.05],
                            [1, 1, 1, 1, 0, 0, 0, 0]) == pytest.approx(0.5)
    # a tie moves both rates at once (FAR 0 -> 1/2, FRR 1/2 -> 0): read half-way, 1/4
    assert equal_error_rate([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.25)
    assert equal_error_rate([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie accepts both or neither
    with pytest.raises(ValueError):
        equal_error_rate([0.1, 0.2], [1, 1])


def test_eer_of_two_gaussians_matches_theory():
    rng = np.random.default_rng(0)
    n = 20000
    scores = np.r_[rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n)]
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    assert equal_error_rate(scores, labels) == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)), abs=0.006)


def test_error_rates_and_macro_f1():
    r = error_rates(["the cat sat", "a dog"], ["the cat sit", "a dog"])
    assert r["wer"] == pytest.approx(1 / 5) and r["cer"] == pytest.approx(1 / 16)
    assert macro_f1([0, 0, 1, 1], [0, 1, 1, 1], 3) == pytest.approx((2 / 3 + 0.8) / 2)


def _pad(xs):
    lengths = torch.tensor([x.shape[0] for x in xs])
    out = torch.zeros(len(xs), int(lengths.max()), xs[0].shape[1])
    for i, x in enumerate(xs):
        out[i, : x.shape[0]] = x
    return out, lengths


@pytest.mark.parametrize("make", [
    lambda: PooledClassifier(6, 3), lambda: PooledClassifier(6, 3, mlp_hidden=8, lstm_hidden=5),
    lambda: SpeakerHead(6, 4, embedding_dim=5), lambda: BiLSTM(6, 5, 2),
])
def test_heads_give_the_same_output_padded_or_alone(make):
    torch.manual_seed(0)
    head = make().eval()
    xs = [torch.randn(n, 6) for n in (9, 4, 7)]
    batch, lengths = _pad(xs)
    together = head(batch, lengths)
    for i, x in enumerate(xs):
        alone = head(x[None], torch.tensor([x.shape[0]]))
        if together.dim() == 3:  # frame outputs: compare valid frames only
            assert torch.allclose(together[i, : x.shape[0]], alone[0], atol=1e-5)
        else:
            assert torch.allclose(together[i], alone[0], atol=1e-5)


@pytest.mark.parametrize("stack,upsample,t,expected", [(1, 2, 7, 14), (2, 1, 7, 4), (4, 2, 9, 6)])
def test_ctc_head_output_lengths(stack, upsample, t, expected):
    head = CTCHead(6, 5, hidden=4, num_layers=1, stack=stack, upsample=upsample).eval()
    x, lengths = _pad([torch.randn(t, 6), torch.randn(3, 6)])
    out, out_lengths = head(x, lengths)
    assert out_lengths.tolist()[0] == expected and out.shape[1] >= expected
    assert torch.allclose(out.exp().sum(-1), torch.ones(out.shape[:2]), atol=1e-5)


@pytest.fixture(scope="module")
def small_corpus(corpus, tmp_path_factory):
    """A slice of the demo corpus: every task's labels, a few minutes of audio."""
    out = tmp_path_factory.mktemp("small")
    train = load_split(corpus, "train")
    intents = [c for c in train if c.supervisions[0].custom.get("intent")][:24]
    others = [c for c in train if not c.supervisions[0].custom.get("intent")][:40]
    save_split(out, "train", type(train).from_cuts(intents + others))
    for split in ("dev", "test"):
        cuts = load_split(corpus, split)
        pick = [c for c in cuts if c.supervisions[0].custom.get("intent")][:6] + \
               [c for c in cuts if not c.supervisions[0].custom.get("intent")][:10]
        save_split(out, split, type(cuts).from_cuts(pick))
    trials = (corpus / "sv_trials.txt").read_text().splitlines()[:12]
    wanted = {i for line in trials for i in line.split()[1:]}
    sv = load_split(corpus, "sv")
    save_split(out, "sv", type(sv).from_cuts([c for c in sv if c.id in wanted]))
    (out / "sv_trials.txt").write_text("\n".join(trials) + "\n")
    return out


def test_cached_and_uncached_states_give_the_same_probe_outputs(small_corpus, tmp_path):
    encoder = load_encoder("random:bestrq_tiny", seed=0)
    cuts = list(load_split(small_corpus, "dev"))[:5]
    states = extract(encoder, cuts, tmp_path / "dev", dtype="float32", batch_seconds=8.0, progress=False)
    ids = [c.id for c in cuts]
    cached, cached_lengths = states.batch(ids)
    fresh, fresh_lengths = encode_cuts(encoder, cuts)
    assert torch.equal(cached_lengths, fresh_lengths)
    for i, n in enumerate(fresh_lengths.tolist()):  # valid frames agree; padding is never read
        assert torch.allclose(cached[:, i, :n], fresh[:, i, :n], atol=1e-5)
    data = task_data("emotion", {s: list(load_split(small_corpus, s)) for s in ("train", "dev", "test")})
    probe = Probe("emotion", cached.shape[0], cached.shape[-1], len(data.classes), ProbeConfig()).eval()
    assert torch.allclose(probe(cached, cached_lengths), probe(fresh, fresh_lengths), atol=1e-5)
    # a second extraction by the same encoder is read back, not recomputed
    again = extract(encoder, cuts, tmp_path / "dev", dtype="float32", progress=False)
    assert np.array_equal(np.asarray(again.states), np.asarray(states.states))


def test_a_damaged_cache_of_the_same_encoder_is_extracted_again_and_said_so(small_corpus, tmp_path, caplog):
    """An index that still names this encoder but no longer fits its states file (a narrower shape, a range
    past the last frame, a changed cut id, a null range) is not read: the split is extracted again, with a
    warning naming the folder, and the states are those of a fresh extraction."""
    encoder = load_encoder("random:bestrq_tiny", seed=0)
    cuts = list(load_split(small_corpus, "dev"))[:4]
    good = tmp_path / "good"
    want = np.asarray(extract(encoder, cuts, good, dtype="float32", progress=False).states).copy()
    index = json.loads((good / "index.json").read_text())
    n, num_layers, dim = index["shape"]
    first = next(iter(index["ranges"]))

    def edit(**change):
        return lambda folder: (folder / "index.json").write_text(json.dumps({**index, **change}))

    damages = {"a range past the last frame": edit(ranges={**index["ranges"], first: [0, n + 5]}),
               "a null range": edit(ranges={**index["ranges"], first: None}),
               "a cut id changed": edit(ranges={k + "x" * (k == first): v for k, v in index["ranges"].items()}),
               "a narrower shape": edit(shape=[n, num_layers, dim - 1]),
               "a states file cut short": lambda f: os.truncate(f / "states.bin", 4 * num_layers * dim * (n - 1)),
               "an index that is not text": lambda f: (f / "index.json").write_bytes(b"\xff\xfe{"),
               "skipped that is not a list": edit(skipped=5)}
    for what, damage in damages.items():
        folder = tmp_path / what.replace(" ", "_")
        shutil.copytree(good, folder)
        damage(folder)
        caplog.clear()
        with caplog.at_level("WARNING", logger="bestrq.probes.cache"):
            states = extract(encoder, cuts, folder, dtype="float32", progress=False)
        assert np.array_equal(np.asarray(states.states), want), what
        assert f"{folder}: the cached states are damaged (" in caplog.text, what
        caplog.clear()
        with caplog.at_level("WARNING", logger="bestrq.probes.cache"):
            extract(encoder, cuts, folder, dtype="float32", progress=False)
        assert "damaged" not in caplog.text, what  # the new cache is read back


def test_the_cache_size_is_known_before_extraction_and_a_disk_too_small_refused(small_corpus, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from bestrq.probes import cache

    encoder = load_encoder("random:bestrq_tiny", seed=0)
    needs, check = [], cache._check_space
    monkeypatch.setattr(cache, "_check_space", lambda folder, need: (needs.append(need), check(folder, need)))
    extract(encoder, list(load_split(small_corpus, "dev")), tmp_path / "dev", progress=False)
    assert needs == [(tmp_path / "dev" / "states.bin").stat().st_size]  # the estimate is what gets written
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: SimpleNamespace(free=10_000))
    with pytest.raises(OSError, match=r"the hidden-state cache of these test cuts needs about [\d.]+ GB and [\d.]+ GB "
                                      r"are free there: free some, or give --out a larger disk"):
        extract(encoder, list(load_split(small_corpus, "test")), tmp_path / "test", progress=False)
    assert not list((tmp_path / "test").iterdir())  # refused after one batch, nothing left behind


def test_a_random_encoder_needs_a_config():
    with pytest.raises(ValueError, match="random: needs a config to initialise, e.g. random:bestrq_tiny"):
        load_encoder("random:")  # it built the default config's model (d 576, 12 layers) unasked
    with pytest.raises(FileNotFoundError, match="no config 'nope'"):
        load_encoder("random:nope")


def test_an_encoder_for_a_device_this_machine_lacks_is_refused_by_name():
    with pytest.raises(ValueError, match="device: 'tpu' is not a device this runs on: cpu, cuda or cuda:N"):
        load_encoder("fbank", "tpu")
    if not torch.cuda.is_available():  # it failed in torch's .to("cuda"), after building the model
        with pytest.raises(ValueError, match="device=cuda, but no CUDA device is available"):
            load_encoder("random:bestrq_tiny", "cuda")


def test_task_labels_come_from_the_manifest(small_corpus):
    splits = {s: list(load_split(small_corpus, s)) for s in ("train", "dev", "test")}
    intent = task_data("intent", splits)
    assert len(intent.train) == 24 and all(isinstance(it.label, int) for it in intent.train)
    asr = task_data("asr", splits)
    assert " " in asr.classes and all(set(it.label) <= set(asr.classes) for it in asr.test)
    assert len(task_data("emotion", splits).classes) == 4


@pytest.mark.filterwarnings("error:No artists with labels:UserWarning")  # the fbank alone has no layers to weigh
def test_probe_and_report_from_the_command_line(small_corpus, tmp_path, capsys):
    out = tmp_path / "fbank"
    assert main(["probe", "--checkpoint", "fbank", "--task", "all", "--data", str(small_corpus), "--out", str(out),
                 "--epochs", "2", "--asr-hidden", "32", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "asr: test wer" in text and "speaker: test accuracy" in text and "eer" in text
    result = json.loads((out / "probe_speaker.json").read_text())
    assert 0 <= result["test"]["eer"] <= 1 and result["trials"] == 12
    speakers = task_data("speaker", {s: list(load_split(small_corpus, s)) for s in ("train", "dev", "test")})
    assert result["data"]["folder"] == str(small_corpus.resolve())
    assert result["data"]["test_items"] == len(speakers.test) and len(result["data"]["test_ids"]) == 16
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| fbank | none |" in report
    for png in ("layer_weights.png", "probe_curves.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
    assert main(["probe", "--checkpoint", str(tmp_path / "nothing"), "--data", str(small_corpus)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_layer_by_layer_probes_share_one_cache_and_keep_their_layer(small_corpus, tmp_path, capsys):
    """`--layer N` probes hidden state N alone (its weight stays one-hot while the head trains), and
    `--cache` lets probes of one encoder in several folders extract its states once."""
    common = ["probe", "--checkpoint", "random:bestrq_tiny", "--task", "emotion", "--data", str(small_corpus),
              "--epochs", "2", "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main([*common, "--layer", "1", "--out", str(tmp_path / "L1")]) == 0
    states = tmp_path / "cache" / "train" / "states.bin"
    made = states.stat().st_mtime_ns
    assert main([*common, "--layer", "3", "--out", str(tmp_path / "L3")]) == 0
    assert states.stat().st_mtime_ns == made and not (tmp_path / "L3" / "cache").exists()
    for layer in (1, 3):
        result = json.loads((tmp_path / f"L{layer}" / "probe_emotion.json").read_text())
        assert result["config"]["layer"] == layer
        one_hot = [float(i == layer) for i in range(5)]
        assert result["layer_weights"] == one_hot and result["curve"][-1]["layer_weights"] == one_hot
    capsys.readouterr()
    assert main([*common, "--layer", "9", "--out", str(tmp_path / "L9")]) == 2
    assert "layer 9: the encoder has hidden states 0 to 4" in capsys.readouterr().err


def test_unfrozen_asr_trains_the_encoder_too(small_corpus, tmp_path, caplog):
    from bestrq.probes import run_probes

    # one training clip whose file is damaged: skipped and counted (it stopped the fine-tuning with a traceback)
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    (tmp_path / "damaged.flac").write_bytes(b"not audio")
    train = list(load_split(corpus, "train"))
    source = fastcopy(train[0].recording.sources[0], source=str(tmp_path / "damaged.flac"))
    train[0] = fastcopy(train[0], recording=fastcopy(train[0].recording, sources=[source]))
    save_split(corpus, "train", CutSet.from_cuts(train))
    encoder = load_encoder("random:bestrq_tiny", seed=0)
    before = {k: v.clone() for k, v in encoder.module.encoder.state_dict().items()}
    cfg = ProbeConfig(epochs=1, asr_hidden=16, unfreeze=True, encoder_lr=1e-3)
    with caplog.at_level("WARNING", logger="bestrq.probes.run"):
        result = run_probes(encoder, ["asr"], corpus, tmp_path / "out", cfg, progress=False)["asr"]
    assert result["unfreeze"] and 0 <= result["test"]["cer"]
    assert "damaged.flac" in caplog.text and "asr/train: 1 items skipped (bad audio)" in caplog.text
    assert result["train_items"] == len(task_data("asr", {s: list(load_split(small_corpus, s))
                                                          for s in ("train", "dev", "test")}).train) - 1
    after = encoder.module.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="ASR only"):
        run_probes(encoder, ["emotion"], small_corpus, tmp_path, cfg, progress=False)


def test_a_fixed_seed_reproduces_a_probe(small_corpus, tmp_path):
    from bestrq.probes import run_probes

    cfg = ProbeConfig(epochs=3, seed=3)
    first = run_probes("fbank", ["emotion"], small_corpus, tmp_path / "a", cfg, progress=False)["emotion"]
    again = run_probes("fbank", ["emotion"], small_corpus, tmp_path / "b", cfg, progress=False)["emotion"]
    assert first["curve"] == again["curve"] and first["test"] == again["test"]
    other = run_probes("fbank", ["emotion"], small_corpus, tmp_path / "a", ProbeConfig(epochs=3, seed=4),
                       progress=False)["emotion"]
    assert other["curve"] != first["curve"]


def test_a_probe_keeps_per_item_outcomes_that_rescore_to_its_test_metrics(small_corpus, tmp_path):
    """The bootstrap (probes/stats.py) resamples the sheets a probe writes: on the whole test set they
    must give exactly the metrics reported, for every task; and the result says what stopped it."""
    from bestrq.probes import run_probes
    from bestrq.probes.stats import estimate

    results = run_probes("random:bestrq_tiny", ["asr", "speaker", "emotion", "intent"], small_corpus, tmp_path,
                         ProbeConfig(epochs=2, patience=1, asr_hidden=16), progress=False)
    for task, r in results.items():
        assert set(r["sheets"]) == set(r["test"]), task  # one sheet per test metric, EER included
        for metric, sheet in r["sheets"].items():
            assert estimate(metric, [sheet], replicates=100).value == pytest.approx(r["test"][metric]), (task, metric)
        main = r["sheets"]["cer" if task == "asr" else "accuracy"]
        assert len(next(iter(main.values()))) == len(r["test_ids"]) == r["data"]["test_items"], task
        # with a patience of 1, an epoch that does not improve ends the probe; the limit ends one that does
        assert r["stopped"] == ("patience" if r["best_epoch"] < r["epochs"] else "epochs"), task
    assert len(results["speaker"]["sheets"]["eer"]["labels"]) == results["speaker"]["trials"]
    # every sheet names each item's speaker, the unit its bootstrap resamples (verification: both speakers
    # of each trial)
    test = {c.id: c.supervisions[0].speaker for c in load_split(small_corpus, "test")}
    for task, r in results.items():
        for metric, sheet in r["sheets"].items():
            if metric != "eer":
                assert sheet["unit"] == [test[i] for i in r["test_ids"]], (task, metric)
    sv = {c.id: c.supervisions[0].speaker for c in load_split(small_corpus, "sv")}
    trials = [line.split() for line in (small_corpus / "sv_trials.txt").read_text().splitlines()]
    assert results["speaker"]["sheets"]["eer"]["unit"] == [sv[a] for _, a, _ in trials]
    assert results["speaker"]["sheets"]["eer"]["unit2"] == [sv[b] for _, _, b in trials]


def test_asr_train_hours_trains_asr_on_the_first_hours_of_train_only(small_corpus, tmp_path):
    from bestrq.probes import run_probes
    from bestrq.probes.tasks import Item, first_hours

    items = [Item(f"u{i}", 900.0, "a") for i in range(6)]  # 15 minutes each
    assert [it.cut_id for it in first_hours(items, 0.5)] == ["u0", "u1"]
    assert [it.cut_id for it in first_hours(items, 0.01)] == ["u0"]  # at least one
    cfg = ProbeConfig(epochs=1, asr_hidden=8, asr_layers=1, asr_train_hours=0.01)
    result = run_probes("fbank", ["asr"], small_corpus, tmp_path, cfg, progress=False)["asr"]
    train = task_data("asr", {s: list(load_split(small_corpus, s)) for s in ("train", "dev", "test")}).train
    assert result["train_items"] == len(first_hours(train, 0.01)) < len(train)


def test_cuts_too_short_for_one_frame_are_left_out_and_counted(small_corpus, tmp_path, caplog):
    from bestrq.probes import run_probes

    corpus = tmp_path / "corpus"
    trials = (small_corpus / "sv_trials.txt").read_text()
    corpus.mkdir()
    (corpus / "sv_trials.txt").write_text(trials)
    short_sv = trials.split()[1]  # the first trial's first utterance
    for split in ("train", "dev", "test", "sv"):
        cuts = list(load_split(small_corpus, split))
        if split in ("train", "test"):  # 30 ms copies: a 25 ms fbank window fits, 4 stacked frames (55 ms) do not
            cuts += [c.truncate(duration=0.03).with_id(f"{c.id}-30ms") for c in cuts[-3:]]
        if split == "sv":
            cuts = [c.truncate(duration=0.03, preserve_id=True) if c.id == short_sv else c for c in cuts]
        save_split(corpus, split, CutSet.from_cuts(cuts))
    cfg = ProbeConfig(epochs=1)
    with caplog.at_level("WARNING", logger="bestrq.probes.run"):
        result = run_probes("random:bestrq_tiny", ["emotion", "speaker"], corpus, tmp_path / "out", cfg,
                            progress=False)
    assert "train: 3 cuts too short for one frame of the encoder are left out" in caplog.text
    assert "test: 3 cuts too short" in caplog.text and "sv: 1 cuts too short" in caplog.text
    emotion_items = len(task_data("emotion", {s: list(load_split(small_corpus, s))
                                              for s in ("train", "dev", "test")}).train)
    assert result["emotion"]["train_items"] == emotion_items  # the 30 ms copies are not among them
    lost = sum(short_sv in line.split() for line in trials.splitlines())
    assert 0 < lost < len(trials.splitlines()) and f"{lost} trials dropped" in caplog.text
    assert math.isfinite(result["speaker"]["test"]["eer"])  # on the trials that are left
    caplog.clear()
    with caplog.at_level("WARNING", logger="bestrq.probes.run"):
        fbank = run_probes("fbank", ["emotion"], corpus, tmp_path / "fbank", cfg, progress=False)
    assert "too short" not in caplog.text and fbank["emotion"]["train_items"] == emotion_items + 3


def test_trial_lists_that_cannot_give_an_eer_are_refused_before_any_work_or_skipped(small_corpus, tmp_path, caplog):
    from bestrq.probes import run_probes

    corpus, out, cfg = tmp_path / "corpus", tmp_path / "out", ProbeConfig(epochs=1)
    shutil.copytree(small_corpus, corpus)
    trials = [line.split() for line in (small_corpus / "sv_trials.txt").read_text().splitlines()]
    target = next(t for t in trials if t[0] == "1")
    other = next(t for t in trials if t[0] == "0" and set(t[1:]) - set(target[1:]))
    (corpus / "sv_trials.txt").write_text("".join(" ".join(t) + "\n" for t in trials if t[0] == "1"))
    with pytest.raises(ValueError, match=r"sv_trials.txt: all \d+ trials are target \(1\): the EER needs both kinds"):
        run_probes("random:bestrq_tiny", ["speaker"], corpus, out, cfg, progress=False)
    (corpus / "sv_trials.txt").write_text(" ".join(target) + "\n" + f"0 {target[1]} nope\n")
    with pytest.raises(ValueError, match="sv_trials.txt: 1 trial utterances are not in the sv split, e.g. nope"):
        run_probes("random:bestrq_tiny", ["speaker"], corpus, out, cfg, progress=False)
    (corpus / "sv_trials.txt").write_bytes(f"{' '.join(target)}\n0 {target[1]} caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="sv_trials.txt: 1 trial utterances are not in the sv split, e.g. caf\ufffd"):
        run_probes("random:bestrq_tiny", ["speaker"], corpus, out, cfg, progress=False)  # not UTF-8: not a crash
    assert not out.exists()  # both refused before an encoder was loaded or anything written

    (corpus / "sv_trials.txt").write_text("\n")
    with caplog.at_level("WARNING", logger="bestrq.probes.run"):
        result = run_probes("random:bestrq_tiny", ["speaker"], corpus, out, cfg, progress=False)
    assert "sv_trials.txt holds no trials: speaker verification (EER) is skipped" in caplog.text
    assert "eer" not in result["speaker"]["test"] and result["speaker"]["test"]["accuracy"] >= 0

    # both kinds, but the non-target trial's own utterance is too short to encode: only targets are left
    (corpus / "sv_trials.txt").write_text(" ".join(target) + "\n" + " ".join(other) + "\n")
    short = (set(other[1:]) - set(target[1:])).pop()
    sv = [c.truncate(duration=0.03, preserve_id=True) if c.id == short else c for c in load_split(corpus, "sv")]
    save_split(corpus, "sv", CutSet.from_cuts(sv))
    caplog.clear()
    with caplog.at_level("WARNING", logger="bestrq.probes.run"):
        result = run_probes("random:bestrq_tiny", ["speaker"], corpus, out, cfg, progress=False)
    assert "1 trials dropped" in caplog.text and "the usable trials are not of both kinds" in caplog.text
    assert "eer" not in result["speaker"]["test"] and "trials" not in result["speaker"]


def test_a_task_without_labels_is_refused_before_any_work_or_left_out_by_task_all(small_corpus, tmp_path, caplog):
    from bestrq.probes import run_probes

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    for split in ("train", "dev", "test"):  # a corpus without emotion labels (LibriSpeech, say)
        cuts = [c.map_supervisions(lambda s: fastcopy(s, custom={k: v for k, v in s.custom.items() if k != "emotion"}))
                for c in load_split(small_corpus, split)]
        save_split(corpus, split, CutSet.from_cuts(cuts))
    with pytest.raises(ValueError, match=r"emotion: no utterance of the train split has its label "
                                         r"\(custom\[\"emotion\"\]\)"):  # it failed after probing intent
        run_probes("fbank", ["intent", "emotion"], corpus, out, ProbeConfig(epochs=1), progress=False)
    assert not out.exists()
    with caplog.at_level("WARNING", logger="bestrq.probes.run"):
        result = run_probes("fbank", ["intent", "emotion"], corpus, out, ProbeConfig(epochs=1), progress=False,
                            skip_unlabelled=True)
    assert set(result) == {"intent"} and "emotion: no utterance of the train split" in caplog.text
    assert "the task is skipped" in caplog.text and not (out / "probe_emotion.json").exists()
    with pytest.raises(ValueError, match="no task has the labels it needs"):
        run_probes("fbank", ["emotion"], corpus, out, ProbeConfig(epochs=1), progress=False, skip_unlabelled=True)


def test_heads_train_on_a_batch_of_one():
    # a split's last batch can hold a single utterance: no batch statistics anywhere
    for head in (SpeakerHead(6, 4), PooledClassifier(6, 3, mlp_hidden=8)):
        head.train()(torch.randn(1, 5, 6), torch.tensor([5])).sum().backward()


def test_report_table_bolds_a_columns_best_only_where_the_models_differ():
    from pathlib import Path

    from bestrq.report import Model, table

    def model(name, wer, accuracy, eer):
        return Model(name, Path(name), {"objective": "bestrq"},
                     {"asr": {"test": {"wer": wer}}, "speaker": {"test": {"accuracy": accuracy, "eer": eer}}})

    rows = {line.split(" | ")[0][2:]: line.split(" | ")
            for line in table([model("a", 1.0, 0.0, 0.2), model("b", 1.0, 0.0, float("nan")),
                               model("c", 1.0, 0.0, 0.3)]).splitlines()[2:]}
    wer, acc, eer = 4, 6, 7  # cells of a row
    assert [rows[m][wer] for m in "abc"] == ["100.0"] * 3  # all tie: no best
    assert [rows[m][acc] for m in "abc"] == ["0.0"] * 3
    assert [rows[m][eer] for m in "abc"] == ["**20.0**", "–", "30.0"]  # lower is better; NaN never best
    single = table([model("a", 0.5, 0.5, 0.5)])
    assert "**" not in single


def test_report_names_a_malformed_result_file_and_reads_past_bad_metric_lines(tmp_path):
    from bestrq.report import write_report

    run = tmp_path / "run"
    probes = run / "probes"
    probes.mkdir(parents=True)
    (probes / "encoder.json").write_text(json.dumps({"name": "m", "objective": "bestrq",
                                                     "checkpoint": str(run / "checkpoints" / "step-00000002")}))
    good = {"test": {"accuracy": 0.5}, "curve": [{"epoch": 1, "dev_accuracy": 0.4}], "layer_weights": [0.6, 0.4]}
    (probes / "probe_emotion.json").write_text(json.dumps(good))
    (run / "metrics.jsonl").write_text("\n".join([
        json.dumps({"split": "train", "step": 1, "elapsed": 1.0, "loss": 9.0}), "5", '{"split": "train"}',
        json.dumps({"split": "valid", "step": 1, "accuracy": 0.1, "baseline_accuracy": 0.05}),
        json.dumps({"split": "train", "step": 2, "elapsed": 2.0, "loss": 8.5}),
        json.dumps({"split": "train", "step": 3, "elapsed": "late", "loss": 8.0}),  # a TypeError in the plot
        '{"split": "tr']))
    assert "| m |" in write_report([run], tmp_path / "report").read_text()
    assert (tmp_path / "report" / "pretraining.png").is_file()
    for bad, problem in [([1, 2], "expected a JSON object, got list"), ({"curve": []}, "no 'test' scores"),
                         ({**good, "test": {"accuracy": "high"}}, "no 'test' scores"),
                         ({**good, "curve": [{"epoch": 1}]}, "no 'curve' of epochs with 'epoch' and 'dev_accuracy'"),
                         ({**good, "layer_weights": "even"}, "'layer_weights' is not a list of numbers")]:
        (probes / "probe_emotion.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"probe_emotion.json: not a probe result.*: {re.escape(problem)}$"):
            write_report([run], tmp_path / "report")
    (probes / "probe_emotion.json").write_text(json.dumps(good))
    (probes / "encoder.json").write_text("[")
    with pytest.raises(ValueError, match=r"encoder\.json: not an encoder record: Expecting value"):
        write_report([run], tmp_path / "report")
    for key, value, kind in [("name", ["m"], "text"), ("objective", None, "text"),
                             ("pretrain_seconds", "long", "a number"), ("pretrain_audio_hours", True, "a number")]:
        (probes / "encoder.json").write_text(json.dumps({"name": "m", key: value}))  # each a TypeError in the table
        with pytest.raises(ValueError, match=rf"encoder\.json: not an encoder record: its '{key}' is "
                                             rf"{re.escape(repr(value))}, not {kind}$"):
            write_report([run], tmp_path / "report")

    with pytest.raises(FileNotFoundError, match=r"nothing: no such folder \(give run or probe result folders\)"):
        write_report([tmp_path / "nothing"], tmp_path / "report")  # it said "no probe results" there
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl: not a folder"):
        write_report([run / "metrics.jsonl"], tmp_path / "report")


def test_the_probe_writes_only_results_its_readers_take_and_reads_back_what_it_wrote(tmp_path):
    """One definition of probe_<task>.json and encoder.json serves the writer and the readers."""
    from bestrq.probes.results import read_encoder, read_result, write_encoder, write_result
    from bestrq.study.probing import _done

    good = {"test": {"accuracy": 0.5, "macro_f1": None}, "curve": [{"epoch": 1, "dev_accuracy": 0.4}],
            "layer_weights": [0.6, 0.4], "sheets": {}, "config": {}, "encoder": {"name": "m"}}
    for bad, problem in [({"curve": []}, "no 'test' scores"),
                         ({**good, "curve": [{"epoch": 1, "dev_cer": 0.3}]}, "no 'curve' of epochs"),
                         ({**good, "layer_weights": [0.5, "x"]}, "'layer_weights' is not a list of numbers")]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            write_result(tmp_path / "written", "emotion", bad)
        assert not (tmp_path / "written" / "probe_emotion.json").exists()
        (tmp_path / "probe_emotion.json").write_text(json.dumps(bad))  # as a damaged file would be
        with pytest.raises(ValueError, match=re.escape(problem)):
            read_result(tmp_path / "probe_emotion.json", "emotion")
        assert not _done(tmp_path / "probe_emotion.json", None, {"name": "m"})  # a study probes it again
    assert read_result(write_result(tmp_path, "emotion", good), "emotion") == good
    with pytest.raises(ValueError, match="its 'pretrain_seconds' is 'long', not a number"):
        write_encoder(tmp_path, {"name": "m", "pretrain_seconds": "long"})
    assert read_encoder(write_encoder(tmp_path, {"name": "m", "step": 3})) == {"name": "m", "step": 3}


def test_report_says_which_tasks_were_tested_on_different_test_sets(tmp_path, caplog):
    from bestrq.report import write_report

    good = {"test": {"accuracy": 0.5}, "curve": [{"epoch": 1, "dev_accuracy": 0.4}], "layer_weights": [1.0]}
    for name, ids, items, score in [("a", "x1", 10, 0.5), ("b", "x1", 10, 0.6), ("c", "y2", 9, 0.7)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "encoder.json").write_text(json.dumps({"name": name, "objective": "bestrq"}))
        (tmp_path / name / "probe_emotion.json").write_text(json.dumps(
            {**good, "test": {"accuracy": score}, "data": {"folder": f"/data/{name}", "test_items": items,
                                                            "test_ids": ids}}))
    with caplog.at_level("WARNING", logger="bestrq.report"):
        text = write_report([tmp_path / m for m in "abc"], tmp_path / "report").read_text()
    line = ("emotion: the models were tested on different test sets (a, b: 10 items of /data/a; c: 9 items of "
            "/data/c); its scores do not compare")
    assert f"> **Not comparable.** {line}" in text and line in caplog.text
    assert "**70.0**" not in text and "| 70.0 |" in text  # no best where the sets differ
    text = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "report").read_text()
    assert "Not comparable" not in text and "**60.0**" in text


def test_results_of_another_encoder_in_a_probe_folder_are_flagged(small_corpus, tmp_path, caplog):
    from bestrq.probes import run_probes
    from bestrq.report import write_report

    out, cfg = tmp_path / "probes", ProbeConfig(epochs=1)
    run_probes("fbank", ["emotion"], small_corpus, out, cfg, progress=False)
    with caplog.at_level("WARNING"):  # a later probe into the same folder, of another encoder, for another task
        run_probes("random:bestrq_tiny", ["intent"], small_corpus, out, cfg, progress=False)
    assert "probe_emotion.json is of another encoder (fbank), not random init (bestrq_tiny)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the report showed fbank's emotion scores as the random encoder's
        text = write_report([out], tmp_path / "report").read_text()
    line = ("random init (bestrq_tiny): its emotion result was made with another encoder (fbank), so its emotion "
            "scores are not this model's")
    assert f"> **Mixed encoders.** {line}" in text and line in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same encoder again, for the other task: nothing to flag
        run_probes("random:bestrq_tiny", ["emotion"], small_corpus, out, cfg, progress=False)
        text = write_report([out], tmp_path / "report").read_text()
    assert "another encoder" not in caplog.text and "Mixed" not in text


def test_a_bf16_model_is_probed_in_bf16_unless_told_otherwise(tmp_path):
    """An encoder trained with `train.precision=bf16` encodes under bf16 autocast (what it trained
    on), `precision=fp32` overrides it, and the two extractions are cached apart."""
    from bestrq.probes.cache import _fingerprint

    config = tmp_path / "bf16.yaml"
    config.write_text("encoder: {d_model: 32, num_layers: 2, num_heads: 2, ffn_dim: 64}\ntrain: {precision: bf16}\n")
    bf16 = load_encoder(f"random:{config}", seed=0)
    fp32 = load_encoder(f"random:{config}", seed=0, precision="fp32")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    wave = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([16000, 12000])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = bf16.module.encode(wave, lengths).hidden_states[-1]
    assert torch.equal(bf16.encode(wave, lengths).hidden_states[-1], expected)
    plain = fp32.encode(wave, lengths).hidden_states[-1]
    assert plain.dtype == torch.float32 and not torch.equal(plain, expected.float())
    assert _fingerprint(bf16, [], "float16") != _fingerprint(fp32, [], "float16")
    assert "precision" not in _fingerprint(fp32, [], "float16")  # fp32 caches keep their key
    with pytest.raises(ValueError, match="precision: must be run, fp32, bf16"):
        load_encoder("fbank", precision="fp16")
