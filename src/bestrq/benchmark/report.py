"""The benchmark's markdown table: each model's time, throughput, memory, FLOPs and utilisation, and
the ratios against the peers measured in the same run."""

from __future__ import annotations

import argparse
import math

import torch

from .peers import LABELS


def report(rows: list[dict], device_name: str, peak_flops: float, args: argparse.Namespace) -> str:
    lines = [(f"device: {device_name}; precision {args.precision}; compile {args.compile}; torch {torch.__version__}; "
              f"matmul peak measured {peak_flops / 1e9:.0f} GFLOP/s "
              "(the best of the trials before and after each size)"),
             "",
             "| size | model | params | step (s) | audio s/s | peak MiB | GFLOP/step | MFU |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        r["mfu"] = r["flop_per_s"] / peak_flops
        memory = "–" if math.isnan(r["peak_mib"]) else f"{r['peak_mib']:.0f}"  # not measured (--no-memory)
        lines.append(f"| {r['size']} | {LABELS[r['model']]} | {r['params'] / 1e6:.1f}M | {r['step_s']:.3f} | "
                     f"{r['audio_per_s']:.1f} | {memory} | {r['gflop']:.1f} | {100 * r['mfu']:.1f}% |")
    lines.append("")
    if args.compile:
        lines += [f"[{r['size']}] {LABELS[r['model']]}: {r['compiled_graphs']} graphs compiled during the timed "
                  "rounds (their compile time is in the step times)" for r in rows if r["compiled_graphs"]]
    for size in dict.fromkeys(r["size"] for r in rows):
        by = {r["model"]: r for r in rows if r["size"] == size}

        def ratio(a: str, b: str, key: str = "audio_per_s", by: dict = by) -> float | None:
            if a not in by or b not in by or not by[b][key] > 0:
                return None
            return by[a][key] / by[b][key]

        checks = [
            ("BEST-RQ (ours) / wav2vec 2.0 (transformers), throughput", ratio("bestrq-ours", "wav2vec2-hf"), ">= 2.4"),
            ("BEST-RQ (ours) / BEST-RQ (SpeechBrain), throughput", ratio("bestrq-ours", "bestrq-sb"), ">= 1.3"),
            ("wav2vec 2.0 (ours) / wav2vec 2.0 (transformers), throughput",
             ratio("wav2vec2-ours", "wav2vec2-hf"), ">= 1.0"),
            ("BEST-RQ (ours) / wav2vec 2.0 (ours), throughput", ratio("bestrq-ours", "wav2vec2-ours"), "(the paper: 2.4)"),
            ("BEST-RQ (ours) / BEST-RQ (SpeechBrain), peak memory",
             ratio("bestrq-ours", "bestrq-sb", "peak_mib"), "<= 1.0"),
            ("BEST-RQ (ours) / BEST-RQ (ours, padding computed), throughput",
             ratio("bestrq-ours", "bestrq-padded"), "> 1.0: skipping padded frames pays on this device"),
        ]
        for label, value, target in checks:
            if value is not None and not math.isnan(value):
                lines.append(f"[{size}] {label}: {value:.2f}x (target {target})")
    return "\n".join(lines)
