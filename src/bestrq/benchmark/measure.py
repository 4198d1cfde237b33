"""What the benchmark measures beside time: the machine's matmul FLOP/s, a step's FLOPs, and the peak
memory one model adds to a fresh process (CPU)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from .batches import make_batches
from .peers import SIZES, Runner, build, import_speechbrain


def matmul_flops(device: torch.device, dtype: torch.dtype, trials: int = 5) -> float:
    """FLOP/s of a large square matmul on this machine: the best of a few short trials.

    A shared machine's speed drifts (other tenants, clocks), and one slow measurement of the
    peak would put a model's utilisation above 100%; the best trial is what the machine can
    reach. The benchmark measures it before and after each size and uses the best of all.
    """
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 50 if device.type == "cuda" else 5
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def state_bytes(runner: Runner) -> int:
    """Bytes of a model's weights and its optimizer's state (gradients are freed between steps)."""
    tensors = list(runner.model.parameters()) + list(runner.model.buffers())
    tensors += [v for st in runner.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(runner: Runner, prepared: object, autocast) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast:
            loss = runner.loss(prepared)
        loss.backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_memory_cpu(name: str, size_name: str, args: argparse.Namespace) -> float:
    """Peak resident memory (MiB) that one model's training steps add to a fresh process."""
    cmd = [sys.executable, "-m", "bestrq.benchmark", "--memory-of", name, "--sizes", size_name, "--batch-seconds",
           str(args.batch_seconds[size_name]), "--corpus", str(args.corpus), "--device", "cpu",
           "--batching", args.batching]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        print(f"  (memory of {name} failed: {out.stderr.strip().splitlines()[-1:]})")
        return float("nan")
    return json.loads(lines[-1])["peak_mib"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args: argparse.Namespace) -> None:
    """Peak RSS above the RSS before the model exists (Linux: the high-water mark is reset first)."""
    size_name = args.sizes[0]
    device = torch.device("cpu")
    batches, _ = make_batches(args.corpus, 2, args.batch_seconds[size_name], seed=0,
                              bucketed=args.batching == "bucketed")
    if args.memory_of == "bestrq-sb":
        import_speechbrain()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status_kib("VmRSS")
    runner = build(args.memory_of, SIZES[size_name], device, False)
    autocast = torch.autocast("cpu", enabled=False)
    for batch in batches:
        runner.step(runner.prepare(batch), autocast)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))
