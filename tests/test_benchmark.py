"""The pre-training benchmark's harness (the timed figures themselves live in bench/RESULTS.md)."""

from __future__ import annotations

import argparse
import json
import math
import sys

import pytest
import torch

from bestrq.benchmark import batches, measure, peers, run
from bestrq.benchmark.report import report


@pytest.fixture(autouse=True)
def _forget_peer_imports():
    """Drop what a peer's import put in ``sys.modules`` (SpeechBrain, the stand-in torchaudio).

    SpeechBrain registers lazy modules that import optional packages when anything inspects
    them; left in ``sys.modules``, they broke later tests whose tools walk every module
    (hypothesis, in tests/test_reliability.py) once ``make bench`` had installed SpeechBrain.
    """
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("speechbrain", "torchaudio"):
            del sys.modules[name]


def _tensors(obj) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, batches.Batch):
        return [obj.waves, obj.lengths]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


@pytest.mark.parametrize("name", peers.MODELS + peers.EXTRA_MODELS)
def test_every_runner_steps_on_a_batch_on_its_own_device(name):
    """What ``prepare`` hands the timed step lives on the model's device.

    A runner that handed over the CPU batch crashed the first GPU run of the benchmark
    ("Expected all tensors to be on the same device"). The CPU cannot show that by running
    a step, so the runner is told its device is ``meta`` and its prepared batch is checked.
    """
    why = peers.available(name)
    if why:
        pytest.skip(why)
    runner = peers.build(name, peers.SIZES["tiny"], torch.device("cpu"), False)
    runner.device = torch.device("meta")
    g = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(2, 3 * 16000, generator=g)
    prepared = runner.prepare(batches.Batch(waves, torch.tensor([3 * 16000, 2 * 16000])))
    tensors = _tensors(prepared)
    assert tensors, f"{name}: prepare returned no tensors"
    assert {t.device.type for t in tensors} == {"meta"}, (name, [t.device for t in tensors])


def test_one_step_through_the_harness_updates_the_weights():
    """One real CPU step of our BEST-RQ through the harness: a finite loss and updated weights."""
    runner = peers.build("bestrq-ours", peers.SIZES["tiny"], torch.device("cpu"), False)
    before = [p.detach().clone() for p in runner.model.parameters() if p.requires_grad]
    waves = 0.1 * torch.randn(2, 3 * 16000, generator=torch.Generator().manual_seed(0))
    batch = batches.Batch(waves, torch.tensor([3 * 16000, 2 * 16000]))
    loss = runner.step(runner.prepare(batch), torch.autocast("cpu", enabled=False))
    after = [p for p in runner.model.parameters() if p.requires_grad]
    assert math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_the_matmul_peak_is_the_best_trial(monkeypatch):
    """A slow moment of a shared machine must not lower the peak the MFU is read against (one
    slow measurement put a model's MFU at 120%): the peak is the fastest of the trials."""
    ticks = iter([0.0, 2.0, 10.0, 11.0, 20.0, 24.0])  # trials of 2 s, 1 s and 4 s
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(ticks))
    n, reps = 1536, 5
    assert measure.matmul_flops(torch.device("cpu"), torch.float32, trials=3) == 2 * n**3 * reps / 1.0


def test_mfu_is_read_against_the_peak_given_to_the_report():
    rows = [{"size": "tiny", "model": "bestrq-ours", "params": 1e6, "step_s": 1.0, "audio_per_s": 60.0,
             "peak_mib": 100.0, "gflop": 50.0, "flop_per_s": 50e9}]
    args = argparse.Namespace(precision="fp32", compile=False)
    text = report(rows, "CPU", 100e9, args)
    assert rows[0]["mfu"] == pytest.approx(0.5) and "| 60.0 | 100 | 50.0 | 50.0% |" in text
    rows[0]["peak_mib"] = float("nan")  # --no-memory: not measured, shown as such rather than "nan"
    assert "| 60.0 | – | 50.0 | 50.0% |" in report(rows, "CPU", 100e9, args)


def test_bucketed_batches_hold_the_same_kind_of_audio_with_less_padding(tmp_path):
    """Sorting the clips by length, as a bucketing sampler, cuts the padding; the clips are the same draw."""
    def padding(made):
        return 1 - sum(int(b.lengths.sum()) for b in made) / sum(b.waves.numel() for b in made)

    random, _ = batches.make_batches(tmp_path, 4, 30.0, seed=1)  # no corpus there: noise clips
    bucketed, _ = batches.make_batches(tmp_path, 4, 30.0, seed=1, bucketed=True)
    assert padding(bucketed) < 0.1
    assert padding(random) > 0.3
    for made in (random, bucketed):
        for b in made:
            assert b.seconds >= 30.0 and all(2.0 <= n / 16000 <= 10.0 for n in b.lengths.tolist())
            assert all(b.waves[i, n:].abs().sum() == 0 for i, n in enumerate(b.lengths.tolist()))


def test_a_model_out_of_memory_or_failing_is_left_out_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    """One model's error must not end the run: a GPU run once lost every figure to one compiler error."""
    class Tiny(peers.Runner):
        def __init__(self, name: str) -> None:
            self.name, self.model = name, torch.nn.Linear(4, 1)
            self.setup_optimizer()

        def loss(self, batch) -> torch.Tensor:
            if self.name == "wav2vec2-hf":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            if self.name == "bestrq-sb":
                raise AssertionError("expected size 2==2, stride 287==464 at dim=0")
            return self.model(batch.waves[:, :4]).pow(2).mean()

    monkeypatch.setattr(run, "build", lambda name, size, device, compile_: Tiny(name))
    args = argparse.Namespace(batch_seconds={"tiny": 3.0}, rounds=2, warmup=1, batching="random", corpus=tmp_path,
                              compile=False, precision="fp32", memory=False)
    rows = run.run_size("tiny", ["bestrq-ours", "wav2vec2-hf", "bestrq-sb"], args, torch.device("cpu"))
    assert [r["model"] for r in rows] == ["bestrq-ours"]
    assert rows[0]["step_s"] > 0 and rows[0]["compiled_graphs"] == 0
    captured = capsys.readouterr()
    assert "wav2vec 2.0 (transformers): out of memory" in captured.out
    assert "BEST-RQ (SpeechBrain): AssertionError (above)" in captured.out
    assert "stride 287==464" in captured.err


def test_a_torchaudio_that_loads_is_used_as_it_is(monkeypatch, tmp_path):
    """Where torchaudio matches the torch installed (a GPU image's), SpeechBrain gets the real one."""
    (tmp_path / "torchaudio").mkdir()
    (tmp_path / "torchaudio" / "__init__.py").write_text('__version__ = "9.9.0"\n')
    monkeypatch.delitem(sys.modules, "torchaudio", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    peers._torchaudio_or_stand_in()
    assert sys.modules["torchaudio"].__version__ == "9.9.0"


def test_a_torchaudio_that_fails_to_load_gives_way_to_a_stand_in_that_says_why(monkeypatch, tmp_path):
    """A torchaudio built for another torch fails part-way through its import (undefined symbols).

    What it loaded before failing is dropped, and the stand-in keeps the error for the note.
    """
    package = tmp_path / "torchaudio"
    package.mkdir()
    (package / "__init__.py").write_text("from . import _extension\n")
    (package / "_extension.py").write_text(
        "from . import utils\nraise OSError('libtorchaudio.so: undefined symbol: _ZN3c104cuda9SetDevice')\n")
    (package / "utils.py").write_text("")
    monkeypatch.delitem(sys.modules, "torchaudio", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    peers._torchaudio_or_stand_in()
    stand_in = sys.modules["torchaudio"]
    assert stand_in.__version__ == peers.STAND_IN
    assert stand_in.reason == "OSError: libtorchaudio.so: undefined symbol: _ZN3c104cuda9SetDevice"
    assert not [m for m in sys.modules if m.startswith("torchaudio.")]


def test_a_run_stopped_in_its_second_size_keeps_the_first_sizes_table_and_rows(monkeypatch, tmp_path, capsys):
    """The GPU run has a few minutes: a timeout while the paper size compiles must not lose the tiny figures."""
    def run_size(size, names, args, device):
        if size == "paper":
            raise KeyboardInterrupt  # what a stop in the middle of the size looks like from here
        return [{"size": size, "model": name, "params": 1e6, "step_s": 1.0, "audio_per_s": 60.0,
                 "peak_mib": 100.0, "gflop": 50.0, "flop_per_s": 50e9, "compiled_graphs": 0} for name in names]

    monkeypatch.setattr(run, "run_size", run_size)
    monkeypatch.setattr(run, "matmul_flops", lambda device, dtype: 100e9)
    (tmp_path / "cuts_train.jsonl.gz").touch()
    out = tmp_path / "rows.json"
    with pytest.raises(KeyboardInterrupt):
        run.main(["--corpus", str(tmp_path), "--device", "cpu", "--sizes", "tiny", "paper",
                        "--models", "bestrq-ours", "wav2vec2-ours", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["size"], r["model"]) for r in rows] == [("tiny", "bestrq-ours"), ("tiny", "wav2vec2-ours")]
    assert rows[0]["mfu"] == pytest.approx(0.5)
    printed = capsys.readouterr().out
    assert "the table so far (next: paper)" in printed and "| tiny | BEST-RQ (ours) |" in printed


def test_the_padded_variant_is_our_bestrq_computing_its_padding_with_the_same_loss():
    """`bestrq-padded` measures what skipping padded frames gains on a device: the same model and
    loss as `bestrq-ours` (the packed path is exact), only with the padded layout throughout."""
    ours = peers.build("bestrq-ours", peers.SIZES["tiny"], torch.device("cpu"), False)
    padded = peers.build("bestrq-padded", peers.SIZES["tiny"], torch.device("cpu"), False)
    assert ours.model.encoder.skip_padding and not padded.model.encoder.skip_padding
    waves = 0.1 * torch.randn(2, 3 * 16000, generator=torch.Generator().manual_seed(0))
    batch = batches.Batch(waves, torch.tensor([3 * 16000, 2 * 16000]))
    for runner in (ours, padded):
        runner.model.eval()  # no dropout: the two layouts compute the same numbers
    assert torch.allclose(ours.loss(ours.prepare(batch)), padded.loss(padded.prepare(batch)), atol=1e-4)
