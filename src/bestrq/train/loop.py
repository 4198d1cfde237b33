"""The pre-training loop: one readable function, the same on a laptop CPU and on many GPUs.

Launch one process (``bestrq pretrain``) or many (``torchrun --nproc_per_node N -m bestrq
pretrain``); each process reads its rank from torchrun's environment, draws its own
batches and wraps the model in DistributedDataParallel, which syncs gradients on the last
micro-batch of each step only.

Everything random is either restored from the checkpoint (weights, optimizer, data
position, the dropout RNG) or derived from (seed, step, rank) (the masks and their noise),
so stopping and resuming gives the same weights as training straight through.

Faults a long run survives:
- SIGKILL anywhere, a checkpoint write included: checkpoints appear by an atomic rename, so
  the same command resumes from the last complete one (see checkpoint.py).
- SIGTERM / SIGINT (a cluster's pre-emption, Ctrl-C): the step under way finishes, a
  checkpoint is saved and the run ends with :class:`RunResult` ``.signal`` set; the CLI
  exits 128 + the signal number. A second Ctrl-C stops at once.
- A non-finite loss or gradient norm: the update is skipped, counted (``bad_steps``) and
  logged; ``train.max_bad_steps`` in a row raise :class:`TrainingDiverged`, leaving the
  last checkpoint (saved before the trouble) as it was.
- Bad audio: skipped, counted per file and reason, kept across resumes in the checkpoint,
  written to ``out_dir/skipped_audio.json`` and summarised at the end.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import ConfigError, PretrainConfig, to_dict
from ..data.audio import by_kind
from ..data.loader import AudioDataset, AudioLoader
from ..data.manifest import ManifestError, list_splits, load_split
from ..files import atomic_path, is_count, is_number
from ..loading import BESTRQ_CONFIG, load_checkpoint
from ..models.conformer import DYNAMIC_COMPILE_TORCH, dynamic_compile_works
from ..objectives import build_model, min_samples
from ..precision import autocast, use_tf32
from . import checkpoint, distributed
from .optim import build_optimizer, lr_at

log = logging.getLogger("bestrq.train")

# config sections that define the model: a checkpoint resumes only into the same ones
MODEL_SECTIONS = ("objective", "features", "quantizer", "encoder", "wav2vec2")


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    step: int
    train: dict[str, float]  # the last logged training metrics
    valid: dict[str, float]  # the last validation metrics (empty without a validation split)
    model: torch.nn.Module  # the trained objective module (unwrapped), on its training device
    signal: int | None = None  # SIGTERM or SIGINT ended the run early (a checkpoint was saved)
    bad_steps: int = 0  # updates skipped for a non-finite loss or gradient, over the whole run
    skipped_audio: dict[str, dict] = field(default_factory=dict)  # cut id -> path, reason, times


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the last checkpoint is intact."""


class _StopSignals:
    """SIGTERM and SIGINT set a flag that the loop reads between steps; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: finishing this step, saving a checkpoint, then stopping",
                    signal.Signals(signum).name)

    def __enter__(self) -> typing.Self:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _usable(batches, skipped: dict[str, dict]):
    """The batches that hold any audio; every bad clip on the way is recorded in ``skipped``."""
    for batch in batches:
        for item in batch.skipped:
            entry = skipped.setdefault(item.cut_id, {"path": item.path, "reason": item.reason, "times": 0})
            entry["times"] += 1
        if len(batch):  # else every clip of the batch was bad
            yield batch


def skipped_summary(skipped: dict[str, dict]) -> str:
    """One line per kind of problem: how many files, and an example."""
    kinds = by_kind((entry["path"], entry["reason"]) for entry in skipped.values())
    return "\n".join(f"  {kind}: {len(paths)} file(s), e.g. {paths[0]}" for kind, paths in kinds.items())


class Meter:
    """Sums of per-batch metrics, reduced across ranks on demand.

    ``loss`` and ``accuracy`` are weighted by masked frames; an objective's ``scalars()``
    are averaged over batches. Every rank runs the same objective, so the names agree.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None

    def add(self, out, audio_seconds: float) -> None:
        scalars = out.scalars()
        if self.sums is None:
            self.names = list(scalars)
            self.sums = torch.zeros(2 + len(self.names) + 4, dtype=torch.float64, device=self.device)
        m = out.masked_frames.double()
        values = [out.loss.detach().double() * m, out.accuracy.double() * m] + [
            scalars[name].double() for name in self.names]
        self.sums += torch.stack(values + [  # fills, not copies from the host: no sync on a GPU
            m, out.frames.double(), m.new_full((), audio_seconds), m.new_ones(())])

    def reduce(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        s = distributed.all_reduce_sum(self.sums.clone()).tolist()
        masked, frames, audio, batches = s[-4:]
        out = {"loss": s[0] / max(masked, 1), "accuracy": s[1] / max(masked, 1)}
        out.update({name: s[2 + i] / max(batches, 1) for i, name in enumerate(self.names)})
        out.update(mask_fraction=masked / max(frames, 1), audio_seconds=audio)
        self.sums.zero_()
        return out


def _mask_generator(device: torch.device, seed: int, *counters: int) -> torch.Generator:
    """A generator for masks and noise that depends only on (seed, counters): no state to save."""
    key = seed
    for c in counters:
        key = (key * 1_000_003 + c) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(key)


@torch.no_grad()
def validate(model: torch.nn.Module, loader: AudioLoader, cfg: PretrainConfig, device: torch.device,
             rank: int, step: int = 0) -> dict[str, float]:
    """Masked accuracy on held-out data with fixed masks, and the objective's baseline to read it against.

    BEST-RQ: the majority-code accuracy; wav2vec 2.0: chance, 1 / (1 + distractors kept) per frame.
    In the run's precision (``train.precision``), as training.
    """
    was_training = model.training
    model.eval()
    meter = Meter(device)
    counts = model.baseline_counts(None, device)  # zeros, also on a rank that gets no batch
    for i, cuts in enumerate(loader.epoch_batches()):
        if i >= cfg.data.valid_max_batches:
            break
        batch = loader.dataset[cuts]
        if len(batch) == 0:
            continue
        with autocast(device, cfg.train.precision):
            out = model(batch.waveforms.to(device), batch.lengths.to(device),
                        _mask_generator(device, cfg.train.seed, 7, i, rank), step)
        meter.add(out, float(batch.lengths.sum()) / model.sample_rate)
        counts += model.baseline_counts(out, device)
    metrics = meter.reduce()
    metrics["baseline_accuracy"] = model.baseline_accuracy(distributed.all_reduce_sum(counts))
    model.train(was_training)
    return metrics


def _model_differences(saved: dict, cfg: PretrainConfig, sections: tuple[str, ...] = MODEL_SECTIONS,
                       free: frozenset[str] = frozenset()) -> list[str]:
    """``section.key: X there, Y here`` for each model setting of ``cfg`` that a saved config
    (a dict) does not share; settings named in ``free`` may differ."""
    now, differ = to_dict(cfg), []
    for section in sections:
        ours, theirs = now[section], saved.get(section)
        if not isinstance(ours, dict):
            if ours != theirs:
                differ.append(f"{section}: {theirs!r} there, {ours!r} here")
            continue
        theirs = theirs if isinstance(theirs, dict) else {}
        for key in [*ours, *(k for k in theirs if k not in ours)]:
            name = f"{section}.{key}"
            if name not in free and ours.get(key) != theirs.get(key):
                differ.append(f"{name}: {theirs.get(key)!r} there, {ours.get(key)!r} here")
    return differ


def _check_resumable(saved: dict, cfg: PretrainConfig, path: Path) -> None:
    differ = _model_differences(saved, cfg)
    if differ:
        sections = dict.fromkeys(d.split(":")[0].split(".")[0] for d in differ)
        raise checkpoint.CheckpointError(
            f"{path} was trained with a different {', '.join(sections)} config ({'; '.join(differ)}): "
            f"pick a new train.out_dir or the same model settings")


# settings that may differ between a run and the model it starts from (--init-from)
_INIT_FREE = frozenset({"encoder.dropout", "quantizer.seed"} | {
    f"wav2vec2.{k}" for k in ("feature_grad_mult", "temperature", "num_negatives", "logit_temperature",
                              "diversity_weight", "feature_penalty", "mask_prob", "mask_span", "dropout_input",
                              "dropout_features")})


def _init_from(model: torch.nn.Module, cfg: PretrainConfig, source: str):
    """Copy a trained model's weights and frozen buffers into ``model``; its settings must describe the same model."""
    try:
        loaded = load_checkpoint(source)
    except (checkpoint.CheckpointError, FileNotFoundError, NotADirectoryError) as e:
        raise type(e)(f"train.init_from: {e}") from None  # the setting that named it: a --set, a YAML key or --init-from
    sections = tuple(s for s in MODEL_SECTIONS if s != "wav2vec2" or cfg.objective == "wav2vec2")
    differ = _model_differences(to_dict(loaded.config), cfg, sections, _INIT_FREE)
    if differ:
        config_file = loaded.folder / BESTRQ_CONFIG
        config_file = config_file if config_file.is_file() else loaded.folder / "config.json"
        raise checkpoint.CheckpointError(
            f"train.init_from={source}: describes a different model ({'; '.join(differ)}); start from its "
            f"config: --config {config_file}")
    model.load_state_dict(loaded.module.state_dict())
    return loaded


def pretrain(cfg: PretrainConfig) -> RunResult:
    """Train (or resume training of) the model ``cfg`` describes; returns the final metrics."""
    ctx = distributed.setup(cfg.train.device, timeout_minutes=cfg.train.dist_timeout_minutes)
    try:
        with _StopSignals() as signals, contextlib.ExitStack() as held:
            return _pretrain(cfg, ctx, signals, held)
    finally:
        distributed.teardown()


@contextlib.contextmanager
def _run_lock(out_dir: Path) -> typing.Iterator[None]:
    """One training process per run folder: a second one (the same command in another shell)
    would interleave its checkpoints and metrics with the first's. The lock is the kernel's
    (flock), so a process that dies holds nothing; where the file system has no locks, none."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            raise OSError(errno.EBUSY, f"in use by {owner}: wait for it to end, or pick another train.out_dir",
                          str(out_dir)) from None
        except OSError:  # no locks on this file system
            yield
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"bestrq pretrain (pid {os.getpid()} on {socket.gethostname()})\n")
        fh.flush()
        yield


def _check_splits(cfg: PretrainConfig) -> None:
    """The corpus and its splits exist, before any work; the error says how to put it right."""
    corpus = Path(cfg.data.corpus)
    if not corpus.is_dir():
        raise ManifestError(f"data.corpus={cfg.data.corpus}: no such folder (make one with `bestrq synth` or "
                            "`bestrq prepare`)")
    have = list_splits(corpus)
    for key, split in (("data.train_split", cfg.data.train_split), ("data.valid_split", cfg.data.valid_split)):
        absent = [s for s in split.split("+") if s not in have] if split else []
        if absent:
            raise ManifestError(
                f"{key}={split}: {corpus} has no {absent[0]} split (it has: {', '.join(have) or 'none'})"
                + ("; name another, or data.valid_split='' to train without validation" if "valid" in key else ""))


def _pretrain(cfg: PretrainConfig, ctx: distributed.Context, signals: _StopSignals,
              held: contextlib.ExitStack) -> RunResult:
    t, device = cfg.train, ctx.device
    if t.compile and not dynamic_compile_works():
        raise ConfigError(
            f"train.compile: torch {torch.__version__} does not train these encoders compiled for batches of "
            f"changing length (torch 2.11 failed at the second length, torch 2.4 compiled again for every "
            f"length); use torch >= {DYNAMIC_COMPILE_TORCH}, or train.compile=false")
    if t.threads:
        torch.set_num_threads(t.threads)
    _check_splits(cfg)
    out_dir = Path(t.out_dir)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    torch.manual_seed(t.seed + 1 + ctx.rank)  # dropout differs across ranks

    # data.min_duration, or one frame of the encoder (55 ms for BEST-RQ) if that is longer
    shortest = max(cfg.data.min_duration, min_samples(model) / model.sample_rate)
    why = f"data.min_duration={cfg.data.min_duration:g}s" if shortest == cfg.data.min_duration else \
        f"{shortest:g}s, one frame of the encoder"

    def make_loader(split: str, train: bool) -> AudioLoader:
        dataset = AudioDataset(max_duration=cfg.data.max_duration, min_duration=shortest, seed=t.seed)
        cuts = load_split(cfg.data.corpus, split)
        # too-short clips are dropped up front from the manifest's durations, once, not warned per batch
        kept = cuts.filter(lambda c: c.duration >= shortest).to_eager()
        if ctx.is_main and len(kept) < len(cuts):
            log.warning("%s: left out %d of %d cuts shorter than %s", split, len(cuts) - len(kept), len(cuts), why)
        if len(kept) == 0:
            raise ValueError(f"{cfg.data.corpus}: split {split!r} has no cut of at least {shortest:g}s")
        return AudioLoader(kept, dataset,
                           max_batch_duration=cfg.data.max_batch_duration, num_buckets=cfg.data.num_buckets,
                           shuffle=train, seed=t.seed, rank=ctx.rank, world_size=ctx.world_size,
                           num_workers=cfg.data.num_workers if train else 0, drop_last=train,
                           pin_memory=train and device.type == "cuda")  # so non_blocking copies overlap

    loader = make_loader(cfg.data.train_split, train=True)
    valid_loader = make_loader(cfg.data.valid_split, train=False) if cfg.data.valid_split else None

    step, bad_steps, skipped, trained_before = 0, 0, {}, 0.0
    if ctx.is_main:
        held.enter_context(_run_lock(out_dir))  # before recover(), which would clear a live run's writes
        checkpoint.recover(out_dir)  # a write cut short by a kill: restore or remove its leftovers
    distributed.barrier()
    resume_from, ckpt = checkpoint.latest_loadable(out_dir)
    if ckpt is not None:
        _check_resumable(ckpt.config, cfg, resume_from)
        checkpoint.fit_weights(model, ckpt.weights, resume_from, "this run's model")
        try:
            optimizer.load_state_dict(ckpt.state["optimizer"])
            saved_world = len(ckpt.state["loader"])
            same_cuts = all(s.get("cuts", loader.fingerprint) == loader.fingerprint for s in ckpt.state["loader"])
            if saved_world == ctx.world_size and same_cuts:  # data position, random states: as if never stopped
                loader.load_state_dict(ckpt.state["loader"][ctx.rank])
                torch.set_rng_state(ckpt.state["rng"][ctx.rank]["torch"])
                if device.type == "cuda" and ckpt.state["rng"][ctx.rank].get("cuda") is not None:
                    torch.cuda.set_rng_state(ckpt.state["rng"][ctx.rank]["cuda"])
            else:
                # another number of processes (a pre-empted job back on fewer or more GPUs), or a training
                # split that changed: the model and optimizer continue exactly; a position in the old
                # epoch means nothing in the new one, so the next epoch starts
                epoch = max(int(s["epoch"]) for s in ckpt.state["loader"]) + 1
                loader.load_state_dict({**loader.state_dict(), "epoch": epoch, "position": 0})
                torch.manual_seed(t.seed * 1_000_003 + ckpt.step * 1009 + ctx.rank)
                if ctx.is_main:
                    why = (f"was written by {saved_world} process(es), this run has {ctx.world_size}"
                           if saved_world != ctx.world_size else
                           f"read another {cfg.data.train_split} split (its cuts changed since)")
                    log.warning("%s %s: the model and optimizer continue exactly; the data starts epoch %d, "
                                "sharded anew, and random states are re-seeded", resume_from, why, epoch)
            step = ckpt.step
            bad_steps = int(ckpt.state.get("bad_steps", 0))
            trained_before = float(ckpt.state.get("train_seconds", 0.0))  # max_minutes and `elapsed` go on from it
            skipped = {k: dict(v) for k, v in ckpt.state.get("skipped_audio", {}).items()}
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            # a state.pt that unpickles but whose contents do not fit: damaged, or not written by this loop
            raise checkpoint.CheckpointError(
                f"{resume_from / 'state.pt'}: damaged or not this run's training state ({type(e).__name__}: {e}); "
                f"move {resume_from} aside to resume from the checkpoint before it") from None
        if ctx.is_main:
            log.warning("resuming from %s (step %d)", resume_from, step)
    elif t.init_from:
        source = _init_from(model, cfg, t.init_from)
        if ctx.is_main:
            log.warning("initialised from %s (step %d): weights, quantizer and heads; fresh optimizer",
                        source.folder, source.step)

    if t.compile:
        model.encoder.compile(dynamic=True)
    # every buffer is identical on every rank by construction (the frozen quantizer and mel filters
    # from their seeds, global feature statistics summed over all ranks): DDP need not broadcast them
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  broadcast_buffers=False) if ctx.distributed else model
    step_autocast = autocast(device, t.precision)
    use_tf32(device, t.tf32)

    writer, metrics_file = None, out_dir / "metrics.jsonl"
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(to_dict(cfg), indent=2))
        _truncate_metrics(metrics_file, step)
        if t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step)

    def record(split: str, values: dict[str, float]) -> None:
        if not ctx.is_main:
            return
        with open(metrics_file, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if writer is not None:
            for name, value in values.items():
                writer.add_scalar(f"{split}/{name}", value, step)

    def save() -> None:
        states = {"loader": loader.state_dict(), "skipped": skipped, "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}}
        gathered = [None] * ctx.world_size
        if ctx.distributed:
            dist.all_gather_object(gathered, states)
        else:
            gathered = [states]
        if ctx.is_main:
            merged = {}
            for g in gathered:  # each rank reads its own batches: one list for the run
                merged.update(g["skipped"])
            checkpoint.save(out_dir, step, model.state_dict(), {
                "optimizer": optimizer.state_dict(),
                "loader": [g["loader"] for g in gathered], "rng": [g["rng"] for g in gathered],
                "bad_steps": bad_steps, "skipped_audio": merged, "train_seconds": time.monotonic() - started,
            }, to_dict(cfg), keep=t.keep_checkpoints)
            if merged:
                with atomic_path(out_dir / "skipped_audio.json") as tmp:
                    tmp.write_text(json.dumps(merged, indent=2))
        distributed.barrier()

    meter = Meter(device)
    bad_in_a_row, bad_since_log = 0, 0
    train_metrics: dict[str, float] = {}
    valid_metrics: dict[str, float] = {}
    batches = _usable(iter(loader), skipped)
    window_start, window_audio = time.monotonic(), 0.0
    started = window_start - trained_before  # the run's training time, across resumes
    bar = tqdm(total=t.steps, initial=step, disable=not (ctx.is_main and t.progress), unit="step",
               dynamic_ncols=True)
    model.train()
    out_of_time = signalled = False
    while step < t.steps:
        lr = lr_at(step, cfg.optim, t.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        outputs, finite = [], torch.ones((), dtype=torch.bool, device=device)
        for micro in range(cfg.optim.grad_accum):
            batch = next(batches)
            waveforms = batch.waveforms.to(device, non_blocking=True)
            lengths = batch.lengths.to(device, non_blocking=True)
            last = micro == cfg.optim.grad_accum - 1
            sync = contextlib.nullcontext() if last or not ctx.distributed else ddp.no_sync()
            with sync:
                with step_autocast:
                    out = ddp(waveforms, lengths, _mask_generator(device, t.seed, step, micro, ctx.rank), step)
                (out.loss / cfg.optim.grad_accum).backward()
            seconds = float(batch.lengths.sum()) / model.sample_rate
            finite &= torch.isfinite(out.loss.detach())  # read once per step, with the norm: no extra sync
            outputs.append((out, seconds))
            window_audio += seconds
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        bad = not bool(finite & torch.isfinite(grad_norm))
        if ctx.distributed:  # gradients are all-reduced before the norm, the loss is not: agree on every rank
            bad = _any_rank(bad, device)
        if bad:
            bad_steps, bad_in_a_row, bad_since_log = bad_steps + 1, bad_in_a_row + 1, bad_since_log + 1
            log.warning("step %d: non-finite %s, update skipped (%d in a row, %d in this run)", step,
                        "gradient norm" if bool(finite) else "loss", bad_in_a_row, bad_steps)
            optimizer.zero_grad(set_to_none=True)
            if bad_in_a_row >= t.max_bad_steps:
                last = checkpoint.latest(out_dir)
                raise TrainingDiverged(
                    f"{bad_in_a_row} consecutive steps with a non-finite loss or gradient (train.max_bad_steps="
                    f"{t.max_bad_steps}) at step {step}: stopping. The last checkpoint, "
                    f"{last if last else 'none yet'}, is untouched; lower optim.lr, raise optim.warmup_steps "
                    f"or use train.precision=fp32, then run the same command to resume from it")
            continue  # the step is not taken: the same step number, the next batch
        bad_in_a_row = 0
        for out, seconds in outputs:
            meter.add(out, seconds)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        if step % t.log_every == 0 or step == t.steps:
            train_metrics = meter.reduce()
            now = time.monotonic()
            audio_rate = distributed.all_reduce_sum(torch.tensor([window_audio], device=device)).item() / max(
                now - window_start, 1e-9)
            window_start, window_audio = now, 0.0
            train_metrics.update(lr=lr, grad_norm=float(grad_norm), audio_per_second=audio_rate,
                                 elapsed=now - started, bad_steps=bad_since_log,
                                 skipped_audio=float(len(skipped)))
            bad_since_log = 0
            record("train", train_metrics)
            bar.set_postfix(loss=f"{train_metrics['loss']:.3f}", acc=f"{train_metrics['accuracy']:.3f}",
                            lr=f"{lr:.2e}", audio=f"{audio_rate:.0f}s/s")
        timed_out = t.max_minutes > 0 and time.monotonic() - started > 60 * t.max_minutes
        stop = _any_ranks([timed_out, signals.received is not None], device)  # every rank stops together
        out_of_time, signalled = stop[0], stop[1]
        if valid_loader is not None and ((t.valid_every and step % t.valid_every == 0) or step == t.steps
                                         or out_of_time):
            valid_metrics = validate(model, valid_loader, cfg, device, ctx.rank, step)
            record("valid", valid_metrics)
            if ctx.is_main:
                baseline = model.baseline_name
                bar.write(f"step {step}: valid loss {valid_metrics['loss']:.3f}, masked accuracy "
                          f"{valid_metrics['accuracy']:.4f} ({baseline} {valid_metrics['baseline_accuracy']:.4f})")
        if step % t.checkpoint_every == 0 or step == t.steps or out_of_time or signalled:
            save()
        if signalled:
            if ctx.is_main:
                name = signal.Signals(signals.received).name if signals.received else "a signal on another rank"
                bar.write(f"stopped by {name} at step {step} (checkpoint saved): run the same command to resume")
            break
        if out_of_time:
            if ctx.is_main:
                bar.write(f"stopping after {t.max_minutes} minutes at step {step} (checkpoint saved)")
            break
    bar.close()
    if writer is not None:
        writer.close()
    if skipped and ctx.is_main:
        log.warning("%d audio files were skipped (listed in %s):\n%s", len(skipped), out_dir / "skipped_audio.json",
                    skipped_summary(skipped))
    return RunResult(out_dir, step, train_metrics, valid_metrics, model,
                     signal=(signals.received or signal.SIGTERM) if signalled else None, bad_steps=bad_steps,
                     skipped_audio=skipped)


def _any_rank(flag: bool, device: torch.device) -> bool:
    return _any_ranks([flag], device)[0]


def _any_ranks(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag OR-ed over the ranks, in one all-reduce (one process: the flags, with no device round trip)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [bool(f) for f in flags]
    total = distributed.all_reduce_sum(torch.tensor([float(f) for f in flags], device=device))
    return [bool(v > 0) for v in total.tolist()]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl (none if it is absent). A line that is not a record is
    skipped: the last one cut short by a crash silently, any other (damaged) with a warning that counts them."""
    path = Path(path)
    if not path.is_file():
        return []
    records, damaged = [], 0
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    for n, line in enumerate(lines, 1):
        record = _metrics_record(line)
        if record is not None:
            records.append(record)
        elif line.strip() and (n < len(lines) or line.endswith("\n")):
            damaged += 1
    if damaged:
        log.warning("%s: skipped %d damaged lines (each record needs a whole-number step, a split and numbers)",
                    path, damaged)
    return records


def _metrics_record(line: str) -> dict | None:
    """The record a metrics.jsonl line holds: a whole-number step, a split's name and numbers; else None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(record, dict) and isinstance(record.get("split"), str) and is_count(record.get("step"))
            and all(is_number(v) for k, v in record.items() if k != "split")):
        return None
    return record


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (by a run that crashed later): a resume rewrites them."""
    if not path.exists():
        return
    kept = [rec for rec in read_metrics(path) if rec["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(rec) + "\n" for rec in kept))
