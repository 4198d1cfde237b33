"""Streaming speed: ``python bench/streaming.py``.

1. Chunk-by-chunk inference (``bestrq.load(...).streamer``) at tiny and base size, random
   weights, one stream, fp32, 10 ms pieces of a 20-s clip: the real-time factor (compute time
   over audio time) and, per chunk, the compute latency (the time of the push that completes
   it) and the algorithmic latency (from the chunk's first sample to the sample that completes
   it: the chunk plus the 15 ms by which its last 25 ms fbank frame outlasts it).
2. The cost of training a streaming preset: one training step of ``bestrq_tiny`` and of
   ``bestrq_tiny_streaming`` (chunked attention in 60% of batches, as the preset; and in every
   batch, the worst case) on the same random batches, alternating, after warm-up; the same for
   the base presets, on fewer and smaller batches. fp32 and no dropout for all (the base
   presets train in bf16 with dropout on GPUs).

Nothing else should run beside it: the times are wall-clock. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bestrq.config import load_config
from bestrq.inference.streaming import Streamer
from bestrq.objectives import build_model

SIZES = {"tiny": "bestrq_tiny_streaming", "base": "bestrq_base_streaming"}


def streamed(size: str, chunk_ms: int, left_chunks: int | None, seconds: float, piece_ms: int = 10) -> dict:
    cfg = load_config(SIZES[size], ["train.precision=fp32"])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    model(0.1 * torch.randn(2, 32000), torch.tensor([32000, 32000]), torch.Generator().manual_seed(0), 0)
    model.eval()
    wave = (0.1 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(1))).numpy()
    chunk = chunk_ms // 40
    streamer = Streamer(model, chunk, left_chunks)
    piece = 16 * piece_ms
    streamer.push(wave[: 16000])  # warm-up: the first call allocates
    streamer.flush()
    per_chunk, total = [], 0.0
    for i in range(0, len(wave), piece):
        start = time.perf_counter()
        out = streamer.push(wave[i : i + piece])
        took = time.perf_counter() - start
        total += took
        if out.shape[1]:
            per_chunk.append(took)
    start = time.perf_counter()
    streamer.flush()
    total += time.perf_counter() - start
    per_chunk.sort()
    return {"size": size, "params": sum(p.numel() for p in model.parameters()) / 1e6, "chunk_ms": chunk_ms,
            "left": left_chunks, "rtf": total / seconds, "median_ms": 1000 * statistics.median(per_chunk),
            "p95_ms": 1000 * per_chunk[int(0.95 * (len(per_chunk) - 1))], "algorithmic_ms": chunk_ms + 15}


def step_times(size: str, rounds: int, batch_seconds: float) -> dict[str, float]:
    """Median seconds per training step (forward, backward, optimizer) of each variant, same batches."""
    plain, streaming = f"bestrq_{size}", f"bestrq_{size}_streaming"
    variants = {plain: [], streaming: [], f"{streaming}, chunks in every batch": ["encoder.chunk_prob=1"]}
    models = {}
    for name, extra in variants.items():
        cfg = load_config(name.split(",")[0], ["train.precision=fp32", "encoder.dropout=0", *extra])
        torch.manual_seed(0)
        model = build_model(cfg).train()
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    gen = torch.Generator().manual_seed(2)
    lengths = [int(16000 * s) for s in (8.0, 7.1, 6.3, 5.2, 4.4, 3.9, 3.1)]
    per_batch = max(1, int(batch_seconds / 8))
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds + 1):
        n = torch.tensor([lengths[(r + i) % len(lengths)] for i in range(per_batch)])
        waves = 0.1 * torch.randn(per_batch, int(n.max()), generator=gen)
        for name, (model, opt) in models.items():
            start = time.perf_counter()
            out = model(waves, n, torch.Generator().manual_seed(r), r)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the streamed clip")
    ap.add_argument("--rounds", type=int, default=20, help="timed training steps per variant")
    ap.add_argument("--batch-seconds", type=float, default=60.0, help="audio per training batch (tiny)")
    ap.add_argument("--base-rounds", type=int, default=4, help="timed training steps per base variant (16 s batches)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| size | params (M) | chunk | left context | RTF | compute per chunk, median / p95 (ms) | "
          "algorithmic latency (ms) |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for size in SIZES:
        for chunk_ms, left in ((320, 4), (1280, 2)):
            r = streamed(size, chunk_ms, left, args.seconds)
            print(f"| {size} | {r['params']:.1f} | {chunk_ms} ms | {left} chunks | {r['rtf']:.3f} | "
                  f"{r['median_ms']:.1f} / {r['p95_ms']:.1f} | {r['algorithmic_ms']} |", flush=True)
    print("\n| preset | audio per step | s per step | vs the non-streaming preset |\n|---|---:|---:|---:|")
    for size, rounds, batch in (("tiny", args.rounds, args.batch_seconds), ("base", args.base_rounds, 16.0)):
        times = step_times(size, rounds, batch)
        plain = times[f"bestrq_{size}"]
        for name, t in times.items():
            print(f"| {name} | {batch:g} s | {t:.3f} | {t / plain:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
