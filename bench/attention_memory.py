"""Peak memory and time of one base-size Conformer layer's step, materialised bias against query blocks.

    python bench/attention_memory.py [--device cpu|cuda] [--seconds 5 20 40] [--batch 2] [--rounds 3]

One layer of `bestrq_base` (d_model 576, 8 heads, FFN 2048, relative_key -64..+8), forward and
backward on (batch, T, 576) inputs, T = seconds / 40 ms, in fp32 (CUDA: bf16 autocast). Two
attention paths: `materialised`, the (B, H, T, T) bias through scaled_dot_product_attention
(what clips up to models/relative_attention.BLOCK frames use), and `blocks`, the query-block
attention with no (B, H, T, T) tensor. Memory: on CPU, the peak resident memory the step adds
to a fresh process (its high-water mark, Linux); on CUDA, the allocator's peak above what was
allocated before the step. Time: the median over --rounds steps after one warm-up. Prints a
markdown table with the ratios of blocks to materialised.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_and_times(step: Callable[[], None], rounds: int, device: torch.device) -> tuple[float, list[float]]:
    """Run ``step`` ``rounds`` times: the peak memory they add, in MiB (CPU: the process's resident
    high-water mark above its resident memory before them, Linux; CUDA: the allocator's peak above what
    was allocated before them), and each step's time in seconds."""
    if device.type == "cpu":
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark, reset to the current RSS
        base = _status_kib("VmRSS") * 1024
    else:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM") * 1024 if device.type == "cpu" else torch.cuda.max_memory_allocated(device)
    return (peak - base) / 2**20, times


def measure(path: str, seconds: float, batch: int, rounds: int, device: torch.device) -> dict:
    from bestrq.models import relative_attention
    from bestrq.models.conformer import ConformerLayer

    t = round(seconds / 0.04)
    # materialised: the block path only above a length no clip reaches; blocks: every clip
    relative_attention.BLOCK = 10**9 if path == "materialised" else 256
    relative_attention.CPU_BLOCKS = 1  # the path itself is measured, wherever its default would apply
    if path == "blocks" and t <= relative_attention.BLOCK:
        relative_attention.BLOCK = max(1, t // 2)  # a clip within one block would take the other path
    torch.manual_seed(0)
    layer = ConformerLayer(576, 8, 2048, conv_kernel=31, dropout=0.0, position="relative_key",
                           left_context=64, right_context=8).to(device).train()
    x = torch.randn(batch, t, 576, device=device, requires_grad=True)
    pad = torch.zeros(batch, t, dtype=torch.bool, device=device)
    pad[-1, t * 3 // 4:] = True  # one clip a quarter shorter: the padded path
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            out = layer(x, pad, None, None)
        out.float().square().mean().backward()

    peak, _ = peak_and_times(step, 1, device)  # the first step's peak
    _, times = peak_and_times(step, rounds, device)
    return {"path": path, "seconds": seconds, "frames": t, "peak_mib": peak, "step_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5.0, 20.0, 40.0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child:
        print(json.dumps(measure(args.child[0], float(args.child[1]), args.batch, args.rounds, device)))
        return
    rows = {}
    for seconds in args.seconds:
        for path in ("materialised", "blocks"):  # each in a fresh process: its own high-water mark
            cmd = [sys.executable, __file__, "--device", args.device, "--batch", str(args.batch),
                   "--rounds", str(args.rounds), "--child", path, str(seconds)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{path} at {seconds:g} s failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            rows[path, seconds] = json.loads(done.stdout.strip().splitlines()[-1])
            r = rows[path, seconds]
            print(f"  {path:>12} {seconds:>4g} s ({r['frames']} frames): peak {r['peak_mib']:.0f} MiB, "
                  f"step {r['step_s']:.3f} s", flush=True)
    print(f"\none base-size layer, batch {args.batch}, {args.device}, forward + backward\n")
    print("| clip | frames | peak MiB, materialised | peak MiB, blocks | ratio | step s, materialised | "
          "step s, blocks | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seconds in args.seconds:
        a, b = rows.get(("materialised", seconds)), rows.get(("blocks", seconds))
        if a and b:
            print(f"| {seconds:g} s | {a['frames']} | {a['peak_mib']:.0f} | {b['peak_mib']:.0f} | "
                  f"{b['peak_mib'] / a['peak_mib']:.2f} | {a['step_s']:.3f} | {b['step_s']:.3f} | "
                  f"{b['step_s'] / a['step_s']:.2f} |")


if __name__ == "__main__":
    main()
