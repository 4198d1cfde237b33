from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (acoustic.py)

from bestrq.synth.corpus import SynthConfig, synthesize

# The fuzz tests (test_reliability.py) draw the same examples on every run, so that a failure in CI
# is one that any machine reproduces. HYPOTHESIS_PROFILE=explore draws new examples, 25 times as
# many: run it after changing a parser, and pin what it finds with @example
settings.register_profile("ci", derandomize=True, max_examples=200, deadline=None)
settings.register_profile("explore", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--benchmarks", action="store_true",
                     help="also run the tests marked benchmark (minutes each; `make bench` does)")


def pytest_collection_modifyitems(config, items):
    """`make test` must end within 12 minutes on 2 cores: a test marked benchmark runs only with --benchmarks."""
    if config.getoption("--benchmarks"):
        return
    skip = pytest.mark.skip(reason="a benchmark (minutes): `make bench` or pytest --benchmarks runs it")
    for item in items:
        if "benchmark" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The 1-hour demo corpus (seed 0), made once per test session, by 2 processes whatever the machine's
    cores: the same corpus everywhere, to the sample (792 utterances, 507 of them in train)."""
    out = tmp_path_factory.mktemp("corpus")
    synthesize(out, SynthConfig(hours=1.0, seed=0), jobs=2, progress=False)
    return out


@pytest.fixture(scope="session")
def sharded_corpus(corpus, tmp_path_factory) -> Path:
    """The demo corpus with every split as shards of 50 cuts (train: 11 shards, dev: 2)."""
    from bestrq.data.importers import prepare

    out = tmp_path_factory.mktemp("sharded")
    report = prepare("lhotse", corpus, out, shard_size=50, jobs=2)
    assert report.splits["train"] == 507 and not report.skipped
    return out


@pytest.fixture
def eager_and_compiled_forms(monkeypatch):
    """Run ``fn(x)`` as in eager mode and as torch.compile would trace it (``is_compiling()`` true,
    so a module takes its compile-only form), each forward and backward; return, for each, the
    output, x's gradient and the gradients of ``params``."""
    import torch

    def run(fn, x, params):
        results = []
        for compiling in (False, True):
            with monkeypatch.context() as patch:
                patch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
                xi = x.clone().requires_grad_()
                out = fn(xi)
                out.pow(2).sum().backward()
            results.append((out.detach(), xi.grad, *(p.grad.clone() for p in params)))
            for p in params:
                p.grad = None
        return results

    return run


@pytest.fixture
def compiled_graphs():
    """Compile a module with dynamic shapes, run it forward and backward on inputs of several
    lengths, check each output against eager, and return how many graphs dynamo compiled
    (one means new batch lengths reuse the graph)."""
    import torch
    from torch._dynamo.utils import counters

    def run(module, make_inputs, lengths=(13, 21, 17)) -> int:
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(module, dynamic=True)
        for t in lengths:
            inputs = make_inputs(t)
            out = compiled(*inputs)
            torch.testing.assert_close(out, module(*inputs), rtol=1e-4, atol=1e-5)
            out.sum().backward()
        return counters["stats"]["unique_graphs"]

    yield run
    torch._dynamo.reset()
    # torch 2.4's inductor builds its CPU kernels with -ffast-math: loading one turns on flush-to-zero
    # for the whole process (hypothesis then refuses to draw floats); later torch builds leave it off
    torch.set_flush_denormal(False)


def write_audio(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def tone(freq: float, seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
