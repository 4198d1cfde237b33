"""Pre-training speed, side by side: our BEST-RQ and wav2vec 2.0 against the peers a user would pick.

    bestrq bench                                      (or: make bench, python bench/pretrain_speed.py)
    bestrq bench --sizes tiny --rounds 3
    bestrq bench --device cuda --precision bf16 --sizes tiny paper [--compile]

Models, at matched encoder sizes (same layers, width, heads, FFN):
  bestrq (ours)        fbank -> stacked frames -> Conformer, random-projection targets
  wav2vec2 (ours)      conv waveform encoder -> Transformer, Gumbel quantizer, contrastive loss
  wav2vec2 (hf)        transformers' Wav2Vec2ForPreTraining built from a config (random init)
  bestrq (speechbrain) SpeechBrain's RandomProjectionQuantizer, compute_mask, conv front-end and
                       Conformer, wired as its LibriSpeech BEST-RQ recipe

Batches are clips in random order (mixed lengths, about half padding, which our encoders skip
and the peers compute), or with ``--batching bucketed`` sorted by length first, as a
duration-bucketing sampler would batch them (little padding).

Every model trains on the same batches of audio, one training step each in turn (forward,
backward, clipping, AdamW), so drifts of the machine hit all alike. Masks and distractors
of the peers are drawn before the timer starts, as their data loaders would; ours are drawn
inside the step; every batch is on the model's device before the timer starts. Reported:
mean step time, audio seconds per second, peak memory (CUDA: the allocator's peak during a
step above what all models keep resident, plus this model's weights and optimizer state;
CPU: the peak resident memory a fresh process adds for that model, from a separate process
per model), FLOPs per step (torch's FLOP counter, forward + backward, averaged over the
timed batches) and model FLOPs utilisation: achieved FLOP/s over the matmul FLOP/s this
machine reaches in the same run. With ``--compile``, the graphs each model compiled inside
its timed steps are printed too: their compile time is in those steps (a model whose
compiled graph is tied to one batch length compiles again for each new length).

SpeechBrain imports torchaudio at start-up, and PyPI's torchaudio pins its own torch. The
modules used here are pure PyTorch, so where torchaudio does not load, this script puts a
stand-in module named torchaudio in ``sys.modules`` (this process only, and it says so).
SpeechBrain needs ``pip install --no-deps speechbrain hyperpyyaml ruamel.yaml`` (``make bench``
does it). Without speechbrain or transformers the corresponding rows are skipped and said so.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import math
import subprocess
import sys
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from bestrq.data.manifest import load_split  # lhotse looks for torchaudio once, before any stand-in exists
from bestrq.models.conformer import DYNAMIC_COMPILE_TORCH, dynamic_compile_works
from bestrq.runtime.distributed import require_device

# matched encoder sizes; `conv` etc. size wav2vec 2.0's own parts (as our presets)
SIZES = {
    "tiny": {"layers": 4, "d_model": 144, "heads": 4, "ffn": 576, "conv": 128, "codevector": 128, "final": 64,
             "dropout": 0.0},
    "paper": {"layers": 12, "d_model": 576, "heads": 8, "ffn": 2048, "conv": 512, "codevector": 256, "final": 256,
              "dropout": 0.1},
}
MODELS = ("bestrq-ours", "wav2vec2-ours", "wav2vec2-hf", "bestrq-sb")
# on request (--models): our BEST-RQ computing the padded frames too, to measure what skipping them gains here
EXTRA_MODELS = ("bestrq-padded",)
LABELS = {"bestrq-ours": "BEST-RQ (ours)", "wav2vec2-ours": "wav2vec 2.0 (ours)",
          "wav2vec2-hf": "wav2vec 2.0 (transformers)", "bestrq-sb": "BEST-RQ (SpeechBrain)",
          "bestrq-padded": "BEST-RQ (ours, padding computed)"}


# ----------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    waves: torch.Tensor  # (B, S)
    lengths: torch.Tensor  # (B,)

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / 16000


def make_batches(corpus: Path, n: int, seconds: float, seed: int, bucketed: bool = False
                 ) -> tuple[list[Batch], str]:
    """``n`` batches of about ``seconds`` of audio: demo-corpus clips if there, else noise of speech-like lengths.

    Clips come in random order, so a batch mixes lengths and is often half padding. With
    ``bucketed`` the clips are sorted by length first, as a duration-bucketing sampler would
    group them (``bestrq pretrain`` uses lhotse's), so there is little padding.
    """
    g = torch.Generator().manual_seed(seed)
    clips: list[torch.Tensor] = []
    source = f"random noise clips of 2-10 s (no corpus at {corpus})"
    if (corpus / "cuts_train.jsonl.gz").exists():
        cuts = list(load_split(str(corpus), "train"))
        order = torch.randperm(len(cuts), generator=g).tolist()
        need = n * seconds * 1.2
        for i in order:
            audio = torch.from_numpy(cuts[i].load_audio()[0].copy()).float()
            clips.append(audio[: 10 * 16000])
            if sum(c.numel() for c in clips) / 16000 > need:
                break
        source = f"clips of the corpus at {corpus}"
    if bucketed:
        clips.sort(key=len, reverse=True)  # popped from the end: shortest first
    batches, pending = [], []
    while len(batches) < n:
        if not clips:
            clips = [0.1 * torch.randn(int(16000 * (2 + 8 * torch.rand(1, generator=g).item())), generator=g)
                     for _ in range(200)]
            if bucketed:
                clips.sort(key=len, reverse=True)
        pending.append(clips.pop())
        if sum(c.numel() for c in pending) >= seconds * 16000:
            lengths = torch.tensor([c.numel() for c in pending])
            waves = torch.zeros(len(pending), int(lengths.max()))
            for j, c in enumerate(pending):
                waves[j, : c.numel()] = c
            batches.append(Batch(waves, lengths))
            pending = []
    return batches, source


# ----------------------------------------------------------------------------------------- runners
class Runner:
    """One model and its optimizer; ``step`` runs one training step on a prepared batch."""

    name: str
    model: torch.nn.Module

    def prepare(self, batch: Batch) -> object:
        return batch

    def loss(self, prepared: object) -> torch.Tensor:
        raise NotImplementedError

    def setup_optimizer(self, lr: float = 1e-4) -> None:
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr)

    def step(self, prepared: object, autocast) -> float:
        with autocast:
            loss = self.loss(prepared)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


class Ours(Runner):
    def __init__(self, objective: str, size: dict, device: torch.device, compile_: bool) -> None:
        from bestrq.config import load_config
        from bestrq.objectives import build_model

        s = size
        sets = [f"encoder.num_layers={s['layers']}", f"encoder.d_model={s['d_model']}",
                f"encoder.num_heads={s['heads']}", f"encoder.ffn_dim={s['ffn']}", f"encoder.dropout={s['dropout']}"]
        if objective == "wav2vec2":
            sets += ["encoder.kind=transformer", f"wav2vec2.conv_channels={[s['conv']] * 7}",
                     f"wav2vec2.codevector_dim={s['codevector']}", f"wav2vec2.final_dim={s['final']}",
                     f"wav2vec2.dropout_input={s['dropout']}", f"wav2vec2.dropout_features={s['dropout']}"]
        self.cfg = load_config("bestrq_base" if objective == "bestrq" else "wav2vec2_base", sets)
        torch.manual_seed(0)
        self.model = build_model(self.cfg).to(device).train()
        if compile_:
            self.model.encoder.compile(dynamic=True)
        self.device, self.count = device, 0
        self.setup_optimizer()

    def prepare(self, batch: Batch) -> Batch:
        """The batch on the model's device (as for the peers, the copy is outside the timed step)."""
        return Batch(batch.waves.to(self.device), batch.lengths.to(self.device))

    def loss(self, batch: Batch) -> torch.Tensor:
        self.count += 1
        g = torch.Generator(device=self.device).manual_seed(self.count)
        return self.model(batch.waves, batch.lengths, g, self.count).loss


class HFWav2Vec2(Runner):
    def __init__(self, size: dict, device: torch.device, compile_: bool) -> None:
        import transformers
        from transformers.models.wav2vec2 import modeling_wav2vec2 as m

        s = size
        self._m = m
        self.config = transformers.Wav2Vec2Config(
            hidden_size=s["d_model"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], conv_dim=[s["conv"]] * 7, feat_extract_norm="group", conv_bias=False,
            do_stable_layer_norm=False, num_codevector_groups=2, num_codevectors_per_group=320,
            codevector_dim=s["codevector"], proj_codevector_dim=s["final"], num_negatives=100,
            mask_time_prob=0.65, mask_time_length=10, hidden_dropout=s["dropout"], attention_dropout=s["dropout"],
            activation_dropout=0.0, feat_proj_dropout=s["dropout"], feat_quantizer_dropout=s["dropout"],
            layerdrop=0.0, diversity_loss_weight=0.1, attn_implementation="sdpa")
        torch.manual_seed(0)
        self.model = transformers.Wav2Vec2ForPreTraining(self.config).to(device).train()
        if compile_:
            self.model.wav2vec2.encoder.compile(dynamic=True)
        self.device = device
        self.setup_optimizer()

    def prepare(self, batch: Batch) -> object:
        """Masks and distractors as transformers' pre-training data collator draws them (NumPy, on CPU)."""
        m = self._m
        frames = self.model._get_feat_extract_output_lengths(batch.lengths)
        t = int(self.model._get_feat_extract_output_lengths(torch.tensor(batch.waves.shape[1])))
        sub_attention = (torch.arange(t)[None, :] < frames[:, None]).long()
        mask = m._compute_mask_indices((len(frames), t), 0.65, 10, attention_mask=sub_attention, min_masks=2)
        negatives = m._sample_negative_indices((len(frames), t), 100, mask)
        return (batch.waves.to(self.device), torch.from_numpy(mask).to(self.device),
                torch.from_numpy(negatives).to(self.device))

    def loss(self, prepared) -> torch.Tensor:
        waves, mask, negatives = prepared
        out = self.model(waves, mask_time_indices=mask, sampled_negative_indices=negatives)
        return out.loss / mask.sum()  # transformers sums over masked frames; its training script divides


STAND_IN = "0.0+bestrq-bench-stand-in"


def _torchaudio_or_stand_in() -> None:
    """Import torchaudio; where it does not load, put a stand-in module in its place (this process only).

    A torchaudio built for the torch installed here (a GPU image's, say) is used as it is. PyPI's
    torchaudio beside our CPU torch fails to load, and is often not installed at all; the stand-in
    then records why in ``reason``.
    """
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:  # a build for another torch: undefined symbols
        for name in [m for m in sys.modules if m.split(".")[0] == "torchaudio"]:
            del sys.modules[name]  # what loaded before the failure
        stand_in = types.ModuleType("torchaudio")
        stand_in.__version__ = STAND_IN
        stand_in.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        stand_in.reason = f"{type(e).__name__}: {e}".splitlines()[0]
        sys.modules["torchaudio"] = stand_in


def _speechbrain():
    """Import SpeechBrain, with a stand-in torchaudio module where the real one does not load."""
    _torchaudio_or_stand_in()
    import logging

    logging.getLogger("speechbrain").setLevel(logging.ERROR)
    import speechbrain

    return speechbrain


class SBBestRQ(Runner):
    """SpeechBrain's BEST-RQ pre-training step, wired as its LibriSpeech recipe's train.py."""

    def __init__(self, size: dict, device: torch.device, compile_: bool) -> None:
        _speechbrain()
        from speechbrain.lobes.features import Fbank
        from speechbrain.lobes.models.BESTRQ import compute_mask
        from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
        from speechbrain.lobes.models.transformer.TransformerASR import EncoderWrapper, TransformerASR
        from speechbrain.nnet.linear import Linear
        from speechbrain.nnet.quantisers import RandomProjectionQuantizer
        from speechbrain.processing.features import InputNormalization

        s = size
        self.compute_mask = compute_mask
        torch.manual_seed(0)
        self.fbank = Fbank(sample_rate=16000, n_fft=400, n_mels=80).to(device)
        self.normalize = InputNormalization(norm_type="sentence").to(device)
        cnn = ConvolutionFrontEnd(input_shape=(8, 10, 80), num_blocks=2, num_layers_per_block=1,
                                  out_channels=(128, 32), kernel_sizes=(3, 3), strides=(2, 2),
                                  residuals=(False, False))
        transformer = TransformerASR(
            input_size=640, tgt_vocab=8192, d_model=s["d_model"], nhead=s["heads"], num_encoder_layers=s["layers"],
            num_decoder_layers=0, d_ffn=s["ffn"], dropout=s["dropout"], activation=torch.nn.GELU,
            conformer_activation=torch.nn.GELU, encoder_module="conformer", attention_type="RelPosMHAXL",
            normalize_before=True, causal=False)
        self.cnn, self.wrapper = cnn.to(device), EncoderWrapper(transformer).to(device)
        if compile_:
            self.wrapper.compile(dynamic=True)
        self.quantizer = RandomProjectionQuantizer(320, 16, 8192).to(device)
        self.linear = Linear(input_size=s["d_model"], n_neurons=8192).to(device)
        self.model = torch.nn.ModuleList([self.cnn, self.wrapper, self.linear, self.quantizer])
        self.device = device
        self.setup_optimizer()

    def prepare(self, batch: Batch) -> object:
        """The recipe's collate function: relative lengths and one mask for the batch (its shortest clip)."""
        frames = (batch.lengths // 160 + 1).tolist()
        t = batch.waves.shape[1] // 160 + 1
        mask = self.compute_mask((len(frames), t, 80), frames, 0.15, 4)
        return (batch.waves.to(self.device), (batch.lengths / batch.waves.shape[1]).to(self.device),
                mask.to(self.device))

    def loss(self, prepared) -> torch.Tensor:
        wavs, wav_lens, mask = prepared
        with torch.autocast(wavs.device.type, enabled=False):
            feats = self.fbank(wavs)
            feats = self.normalize(feats, wav_lens, epoch=0)
        b, t, c = feats.shape
        feats = F.pad(feats, (0, 0, 0, (4 - t % 4) % 4))  # the recipe's pad_feats
        mask = mask[mask < feats.shape[1]]
        mask_idx = mask[::4] // 4
        targets = self.quantizer(feats.view(b, feats.shape[1] // 4, -1)[:, mask_idx, :])
        noise = torch.normal(0.0, 0.1, size=(b, mask.shape[0], c), device=feats.device)
        feats[:, mask, :] = noise
        enc = self.wrapper(self.cnn(feats), wav_lens)
        logits = self.linear(enc)[:, mask_idx, :]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def build(name: str, size: dict, device: torch.device, compile_: bool) -> Runner:
    if name == "bestrq-ours":
        return Ours("bestrq", size, device, compile_)
    if name == "wav2vec2-ours":
        return Ours("wav2vec2", size, device, compile_)
    if name == "bestrq-padded":
        runner = Ours("bestrq", size, device, compile_)
        runner.model.encoder.skip_padding = False
        return runner
    if name == "wav2vec2-hf":
        return HFWav2Vec2(size, device, compile_)
    return SBBestRQ(size, device, compile_)


def available(name: str) -> str | None:
    """None if the model can run here, else why not."""
    try:
        if name == "wav2vec2-hf":
            import transformers  # noqa: F401
        if name == "bestrq-sb":
            _speechbrain()
    except ImportError as e:
        return f"{e} (pip install --no-deps speechbrain hyperpyyaml ruamel.yaml)"
    except Exception as e:  # noqa: BLE001 - a peer that fails to import is skipped, and said why
        return f"{type(e).__name__}: {e}"
    return None


# ----------------------------------------------------------------------------------------- measuring
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
        _speechbrain()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status_kib("VmRSS")
    runner = build(args.memory_of, SIZES[size_name], device, False)
    autocast = torch.autocast("cpu", enabled=False)
    for batch in batches:
        runner.step(runner.prepare(batch), autocast)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bestrq bench", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
