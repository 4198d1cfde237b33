"""``bestrq bench``: its flags, and the rounds of every model at each size."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from ..models.conformer import DYNAMIC_COMPILE_TORCH, dynamic_compile_works
from ..runtime.distributed import require_device
from .batches import make_batches
from .measure import matmul_flops, memory_child, peak_memory_cpu, state_bytes, step_flops, sync
from .peers import EXTRA_MODELS, LABELS, MODELS, SIZES, STAND_IN, available, build
from .report import report

DESCRIPTION = "Pre-training speed, side by side: our BEST-RQ and wav2vec 2.0 against the peers a user would pick."


def run_size(size_name: str, names: list[str], args: argparse.Namespace, device: torch.device) -> list[dict]:
    size = SIZES[size_name]
    seconds = args.batch_seconds[size_name]
    batches, source = make_batches(args.corpus, args.rounds + args.warmup, seconds, seed=1,
                                   bucketed=args.batching == "bucketed")
    padding = 1 - sum(int(b.lengths.sum()) for b in batches) / sum(b.waves.numel() for b in batches)
    print(f"\n[{size_name}] {size['layers']} layers, width {size['d_model']}, {size['heads']} heads, FFN "
          f"{size['ffn']}; {args.batching} batches of ~{seconds:g} s from {source} (padding is "
          f"{100 * padding:.0f}% of the padded batches); {args.warmup} warm-up + {args.rounds} timed rounds")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    autocast = torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16")
    runners = {}
    for name in names:
        runners[name] = build(name, size, device, args.compile)
    prepared = {name: [r.prepare(b) for b in batches] for name, r in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks = dict.fromkeys(names, 0.0)
    compiled = dict.fromkeys(names, 0)  # --compile: graphs compiled inside timed steps (their time is in the step)
    for i in range(len(batches)):
        for name, runner in list(runners.items()):  # interleaved: every model on this batch, in turn
            if device.type == "cuda":
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                resident = torch.cuda.memory_allocated(device)  # every model's weights and batches
            sync(device)
            graphs = counters["stats"]["unique_graphs"]
            start = time.perf_counter()
            try:
                runner.step(prepared[name][i], autocast)
            except Exception as e:  # noqa: BLE001 - a model that fails (memory, a compiler) leaves the others' figures
                on = f"on a batch of {batches[i].seconds:.0f} s of audio; left out of this size"
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    print(f"  {LABELS[name]}: out of memory {on} (a smaller --batch-seconds fits)", flush=True)
                else:
                    traceback.print_exc()
                    print(f"  {LABELS[name]}: {type(e).__name__} (above) {on}", flush=True)
                del runners[name], prepared[name], runner
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
                compiled[name] += counters["stats"]["unique_graphs"] - graphs
            if device.type == "cuda":  # this step's peak above what was resident, plus this model's own state
                step_peak = torch.cuda.max_memory_allocated(device) - resident + state_bytes(runner)
                peaks[name] = max(peaks[name], step_peak / 2**20)
        done = ", ".join(f"{n} {times[n][-1]:.2f}s" for n in runners) if i >= args.warmup else "warm-up"
        print(f"  round {i + 1}/{len(batches)}: {done}", flush=True)
    rows = []
    audio = sum(b.seconds for b in batches[args.warmup:])  # the same batches for every model
    for name, runner in runners.items():
        # counted on every timed batch: batches differ in shape (bucketed ones a lot), and attention's
        # FLOPs grow with the square of a batch's length
        flops = sum(step_flops(runner, p, autocast) for p in prepared[name][args.warmup:]) / len(times[name])
        t = sum(times[name]) / len(times[name])
        memory = peaks[name] if device.type == "cuda" else (
            peak_memory_cpu(name, size_name, args) if args.memory else float("nan"))
        rows.append({"size": size_name, "model": name, "params": sum(p.numel() for p in runner.model.parameters()),
                     "step_s": t, "audio_per_s": audio / sum(times[name]), "peak_mib": memory, "gflop": flops / 1e9,
                     "flop_per_s": flops / t, "compiled_graphs": compiled[name]})
    del runners
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bestrq bench", description=DESCRIPTION)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "paper"], choices=list(SIZES),
                        help="encoder sizes, matched across models: tiny (4 x 144) and the paper's (12 x 576)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, *EXTRA_MODELS],
                        help="which to time (default the four above; bestrq-padded, our BEST-RQ computing its "
                             "padding too, on request; a peer that is not installed is skipped, said so)")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--batch-seconds", type=float, nargs="+", default=None,
                        help="seconds of audio per batch, per size (default: 60 and 20 on CPU; 300 and 120 on CUDA)")
    parser.add_argument("--batching", default="random", choices=["random", "bucketed"],
                        help="random: clips in random order, batches of mixed lengths (about half padding); "
                             "bucketed: clips sorted by length, as a duration-bucketing sampler (little padding)")
    parser.add_argument("--corpus", type=Path, default=Path("data/demo"),
                        help="manifest folder whose train split gives the audio (default data/demo)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default cuda where there is one)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: autocast, for GPUs (a CPU without fast bf16 matmuls runs it far slower)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every encoder")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="CPU: skip the per-model memory processes")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes, args.models = list(dict.fromkeys(args.sizes)), list(dict.fromkeys(args.models))  # each once
    if args.rounds < 1 or args.warmup < 0:
        parser.error(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if args.batch_seconds and (len(args.batch_seconds) > len(args.sizes) or min(args.batch_seconds) <= 0):
        parser.error(f"--batch-seconds takes one positive number per size ({' '.join(args.sizes)}), "
                     f"got {' '.join(f'{b:g}' for b in args.batch_seconds)}")
    try:
        require_device(args.device, "--device")
    except ValueError as e:
        parser.error(str(e))
    if not (args.corpus / "cuts_train.jsonl.gz").exists():
        parser.error(f"{args.corpus}: no train split to take batches from; make one with "
                     f"`bestrq synth --out {args.corpus}` or pass --corpus DIR")
    device = torch.device(args.device)
    # CUDA: the paper size's batch is about wav2vec 2.0 BASE's per GPU (1.4M samples, 87.5 s)
    defaults = {"tiny": 60.0, "paper": 20.0} if device.type == "cpu" else {"tiny": 300.0, "paper": 120.0}
    given = args.batch_seconds or []
    args.batch_seconds = {s: (given[i] if i < len(given) else defaults[s]) for i, s in enumerate(args.sizes)}
    for s in SIZES:
        args.batch_seconds.setdefault(s, defaults[s])
    if args.memory_of:
        memory_child(args)
        return 0

    names = []
    for name in args.models:
        why = available(name)
        if why:
            print(f"skipping {LABELS[name]}: {why}")
        else:
            names.append(name)
    if "bestrq-sb" in names:
        torchaudio = sys.modules["torchaudio"]
        if getattr(torchaudio, "__version__", "") == STAND_IN:
            print("note: SpeechBrain runs with a stand-in module for torchaudio in sys.modules (its BEST-RQ "
                  f"modules are pure PyTorch; torchaudio did not load: {torchaudio.reason})")
        else:
            print(f"note: SpeechBrain runs with torchaudio {torchaudio.__version__}")
    if args.compile and not dynamic_compile_works():
        print(f"note: torch {torch.__version__} compiles our encoders again for new batch lengths, or fails at "
              f"them (torch >= {DYNAMIC_COMPILE_TORCH} keeps one graph; docs/implementation.md); a model whose step fails "
              "is left out")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_flops(device, dtype)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    rows = []
    for i, size in enumerate(args.sizes):
        rows += run_size(size, names, args, device)
        peak = max(peak, matmul_flops(device, dtype))
        text = report(rows, device_name, peak, args)  # adds each row's MFU against the run's best peak so far
        if args.json:  # after each size: a run stopped (or timed out) in the next size keeps these rows
            args.json.write_text(json.dumps(rows, indent=2))
        if i + 1 < len(args.sizes):
            print(f"\nthe table so far (next: {', '.join(args.sizes[i + 1:])})\n" + text)
    print("\n" + text)
    return 0
