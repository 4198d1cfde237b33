"""What the first conv layer's exact fp32 product costs a bf16 wav2vec 2.0 step, against a bf16 product.

    python bench/first_conv_precision.py [--device cpu|cuda] [--seconds 8 6] [--rounds 3] [--steps 2]

`wav2vec2_base` (conv waveform encoder, group norm; 12 Transformer layers of 768), one training
step (forward, backward, AdamW) under bf16 autocast on a batch of clips of --seconds (padded to
the longest). Two forms of the first conv layer's product, the largest tensor of the model
(512 channels at 3200 frames per second):

  fp32   what the model does: the product in exact fp32, its result handed on in bf16
  bf16   the peer: the product under autocast, on frames rounded to bf16 first (what the model
         did before; it leaves high-order differences mostly rounding noise)

Each form also runs the first layer alone (forward and backward). Each measurement is a fresh
process, the two forms in turn, --rounds times: time is the median step over its rounds; memory
(CPU) the peak resident memory the step adds to the process, (CUDA) the allocator's peak above
what was allocated before it. Prints a markdown table with the ratios fp32 / bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
from attention_memory import peak_and_times

FORMS = ("fp32", "bf16")
PARTS = ("first layer", "training step")


def _bf16_product(weight: torch.Tensor, shift: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    with torch.autocast(frames.device.type, dtype=torch.bfloat16):  # exact_fp32 turned it off
        return torch.baddbmm(shift[..., None], weight, frames.transpose(1, 2))


def measure(form: str, part: str, seconds: list[float], steps: int, device: torch.device) -> dict:
    from bestrq.config import load_config
    from bestrq.models import wav2vec2
    from bestrq.objectives import build_model

    if form == "bf16":
        wav2vec2._frames_product = _bf16_product
    torch.manual_seed(0)
    model = build_model(load_config("wav2vec2_base")).to(device).train()
    lengths = torch.tensor([round(s * 16000) for s in seconds], device=device)
    waves = 0.1 * torch.randn(len(seconds), int(lengths.max()), device=device)
    first = model.feature_extractor.conv_layers[0]
    frames = wav2vec2.conv_output_lengths(lengths, model.feature_extractor.layers_spec[:1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if part == "first layer":
                loss = first(waves[:, None], frames).float().square().mean()
            else:
                loss = model(waves, lengths, generator, 0).loss
        loss.backward()
        if part == "training step":
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: kernels chosen, optimizer state allocated
    peak, times = peak_and_times(step, steps, device)
    return {"step_s": min(times), "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, nargs="+", default=[8.0, 6.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process (the fastest is kept)")
    parser.add_argument("--child", nargs=2, metavar=("FORM", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child:
        print(json.dumps(measure(*args.child, args.seconds, args.steps, device)))
        return
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for part in PARTS:
            for form in FORMS:  # in turn, so that a drift of the machine hits both alike
                cmd = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps),
                       "--seconds", *map(str, args.seconds), "--child", form, part]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.setdefault((form, part), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
                m = runs[form, part][-1]
                print(f"  round {r + 1}: {part:>13}, {form} product: {m['step_s']:.3f} s, "
                      f"peak +{m['peak_mib']:.0f} MiB", flush=True)
    clips = " + ".join(f"{s:g} s" for s in args.seconds)
    print(f"\nwav2vec2_base, bf16 autocast, {args.device}, clips of {clips}; median over {args.rounds} rounds\n")
    print("| part | s, fp32 product | s, bf16 product | ratio | peak MiB, fp32 | peak MiB, bf16 | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for part in PARTS:
        (ta, ma), (tb, mb) = ([statistics.median(m[k] for m in runs[form, part]) for k in ("step_s", "peak_mib")]
                              for form in FORMS)
        print(f"| {part} | {ta:.3f} | {tb:.3f} | {ta / tb:.2f} | {ma:.0f} | {mb:.0f} | {ma / mb:.2f} |")


if __name__ == "__main__":
    main()
