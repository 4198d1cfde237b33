"""The pre-training loop, the same on a laptop CPU and on many GPUs: :func:`_train` is one step after
another (batch, mask, forward, loss, backward, update, log, validate, save); :func:`_pretrain`
sets it up. What a run keeps on disk, and how it resumes from it, is run.py's.

Launch one process (``bestrq pretrain``) or many (``torchrun --nproc_per_node N -m bestrq
pretrain``); each process reads its rank from torchrun's environment, draws its own
batches and wraps the model in DistributedDataParallel, which syncs gradients on the last
micro-batch of each step only.

Everything random is either restored from the checkpoint (weights, optimizer, data
position, the dropout RNG) or derived from (seed, step, rank) (the masks and their noise),
so stopping and resuming gives the same weights as training straight through.

Faults a long run survives:
- SIGKILL anywhere, a checkpoint write included: checkpoints appear by an atomic rename, so
  the same command resumes from the last complete one (see runtime/checkpoint.py).
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
import logging
import math
import signal
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
from ..data.loader import AudioDataset, AudioLoader
from ..data.manifest import ManifestError, list_splits, open_split, split_identity
from ..inference.loading import BESTRQ_CONFIG, load_checkpoint
from ..models.conformer import DYNAMIC_COMPILE_TORCH, dynamic_compile_works
from ..objectives import build_model, min_samples
from ..precision import autocast, use_tf32
from ..runtime import checkpoint, distributed
from ..runtime.metrics import MetricsLog
from . import run
from .optim import build_optimizer, lr_at

log = logging.getLogger("bestrq.train")


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
        """The metrics over every rank's batches since the last call; every rank must call it, one that
        added no batch (a validation split too small to give every rank one) too."""
        size = 0 if self.sums is None else len(self.sums)
        largest, smallest = distributed.all_reduce_max(torch.tensor([size, -size], device=self.device)).tolist()
        if largest == 0:
            return {}
        if smallest == 0:  # some rank added nothing: it sums zeros, under the names another rank has
            self.names = next(names for names in distributed.all_gather_object(self.names) if names)
            if self.sums is None:
                self.sums = torch.zeros(largest, dtype=torch.float64, device=self.device)
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
    sections = tuple(s for s in run.MODEL_SECTIONS if s != "wav2vec2" or cfg.objective == "wav2vec2")
    differ = run.model_differences(to_dict(loaded.config), cfg, sections, _INIT_FREE)
    if differ:
        config_file = loaded.folder / BESTRQ_CONFIG
        config_file = config_file if config_file.is_file() else loaded.folder / "config.json"
        raise checkpoint.CheckpointError(
            f"train.init_from={source}: describes a different model ({'; '.join(differ)}); start from its "
            f"config: --config {config_file}")
    model.load_state_dict(loaded.module.state_dict())
    return loaded


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


def pretrain(cfg: PretrainConfig) -> RunResult:
    """Train (or resume training of) the model ``cfg`` describes; returns the final metrics."""
    ctx = distributed.setup(cfg.train.device, timeout_minutes=cfg.train.dist_timeout_minutes)
    try:
        with _StopSignals() as signals, contextlib.ExitStack() as held:
            return _pretrain(cfg, ctx, signals, held)
    finally:
        distributed.teardown()


def _pretrain(cfg: PretrainConfig, ctx: distributed.Context, signals: _StopSignals,
              held: contextlib.ExitStack) -> RunResult:
    """Set up (model, optimizer, data, resume or --init-from), then train."""
    t = cfg.train
    if t.compile and not dynamic_compile_works():
        raise ConfigError(
            f"train.compile: torch {torch.__version__} does not train these encoders compiled for batches of "
            f"changing length (torch 2.11 failed at the second length, torch 2.4 compiled again for every "
            f"length); use torch >= {DYNAMIC_COMPILE_TORCH}, or train.compile=false")
    if t.threads:
        torch.set_num_threads(t.threads)
    _check_splits(cfg)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = build_model(cfg).to(ctx.device)
    optimizer = build_optimizer(model, cfg.optim)
    torch.manual_seed(t.seed + 1 + ctx.rank)  # dropout differs across ranks
    loader = _make_loader(cfg, ctx, model, cfg.data.train_split, train=True)
    valid_loader = _make_loader(cfg, ctx, model, cfg.data.valid_split, train=False) if cfg.data.valid_split else None

    if ctx.is_main:
        held.enter_context(run.lock(Path(t.out_dir)))  # before resume() repairs a write cut short
    progress = run.resume(cfg, ctx, model, optimizer, loader)
    if progress is None:
        progress = run.Progress()
        if t.init_from:
            source = _init_from(model, cfg, t.init_from)
            if ctx.is_main:
                log.warning("initialised from %s (step %d): weights, quantizer and heads; fresh optimizer",
                            source.folder, source.step)
    if t.compile:
        model.encoder.compile(dynamic=True)
    # every buffer is identical on every rank by construction (the frozen quantizer and mel filters
    # from their seeds, global feature statistics summed over all ranks): DDP need not broadcast them
    ddp = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                  broadcast_buffers=False) if ctx.distributed else model
    use_tf32(ctx.device, t.tf32)
    if ctx.is_main:
        run.write_config(Path(t.out_dir), cfg)
    return _train(cfg, ctx, signals, model, ddp, optimizer, loader, valid_loader, progress)


def _train(cfg: PretrainConfig, ctx: distributed.Context, signals: _StopSignals, model: torch.nn.Module,
           ddp: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: AudioLoader,
           valid_loader: AudioLoader | None, progress: run.Progress) -> RunResult:
    """The training loop, from ``progress.step`` to ``train.steps`` (or a signal, or ``train.max_minutes``)."""
    t, opt, device = cfg.train, cfg.optim, ctx.device
    metrics = MetricsLog(Path(t.out_dir), progress.step, write=ctx.is_main, tensorboard=t.tensorboard)
    meter, clock, bad = Meter(device), _Clock(progress.trained_before), _BadSteps(progress, t, ctx)
    train_metrics: dict[str, float] = {}
    valid_metrics: dict[str, float] = {}
    batches = _usable(iter(loader), progress.skipped)
    bar = tqdm(total=t.steps, initial=progress.step, disable=not (ctx.is_main and t.progress), unit="step",
               dynamic_ncols=True)
    step_autocast = autocast(device, t.precision)
    model.train()
    signalled = out_of_time = False
    while progress.step < t.steps:
        step = progress.step
        lr = lr_at(step, opt, t.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # forward and backward over grad_accum micro-batches; DDP syncs gradients on the last one
        outputs, finite = [], torch.ones((), dtype=torch.bool, device=device)
        for micro in range(opt.grad_accum):
            batch = next(batches)
            waveforms = batch.waveforms.to(device, non_blocking=True)
            lengths = batch.lengths.to(device, non_blocking=True)
            masks = _mask_generator(device, t.seed, step, micro, ctx.rank)  # masks and noise: from (seed, step)
            last = micro == opt.grad_accum - 1
            with contextlib.nullcontext() if last or not ctx.distributed else ddp.no_sync():
                with step_autocast:
                    out = ddp(waveforms, lengths, masks, step)  # the objective: mask, encode, predict, loss
                (out.loss / opt.grad_accum).backward()
            seconds = float(batch.lengths.sum()) / model.sample_rate
            finite &= torch.isfinite(out.loss.detach())  # read once per step, with the norm: no extra sync
            outputs.append((out, seconds))
            clock.audio += seconds
        clip = opt.grad_clip if opt.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if bad.skip(finite, grad_norm, step):  # a non-finite loss or gradient: no update, the next batch
            optimizer.zero_grad(set_to_none=True)
            continue
        for out, seconds in outputs:
            meter.add(out, seconds)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.updates += 1
        progress.step = step = step + 1
        bar.update(1)

        if step % t.log_every == 0 or step == t.steps:
            train_metrics = {**meter.reduce(), "lr": lr, "grad_norm": float(grad_norm),
                             **clock.window(device), "bad_steps": bad.since_log(),
                             "skipped_audio": float(len(progress.skipped))}
            metrics.record(step, "train", train_metrics)
            bar.set_postfix(loss=f"{train_metrics['loss']:.3f}", acc=f"{train_metrics['accuracy']:.3f}",
                            lr=f"{lr:.2e}", audio=f"{train_metrics['audio_per_second']:.0f}s/s")
        timed_out = t.max_minutes > 0 and clock.trained() > 60 * t.max_minutes
        out_of_time, signalled = _any_ranks([timed_out, signals.received is not None], device)  # all stop together
        if valid_loader is not None and ((t.valid_every and step % t.valid_every == 0) or step == t.steps
                                         or out_of_time):
            with clock.aside():
                valid_metrics = validate(model, valid_loader, cfg, device, ctx.rank, step)
            metrics.record(step, "valid", valid_metrics)
            if ctx.is_main:
                bar.write(f"step {step}: valid loss {valid_metrics['loss']:.3f}, masked accuracy "
                          f"{valid_metrics['accuracy']:.4f} ({model.baseline_name} "
                          f"{valid_metrics['baseline_accuracy']:.4f})")
        if step % t.checkpoint_every == 0 or step == t.steps or out_of_time or signalled:
            with clock.aside():
                run.save(cfg, ctx, model, optimizer, loader, progress, clock.trained())
        if signalled or out_of_time:
            if ctx.is_main:
                bar.write(_stopped_message(signals, t.max_minutes, step, signalled))
            break
    bar.close()
    metrics.close()
    if progress.skipped and ctx.is_main:
        log.warning("%d audio files were skipped (listed in %s):\n%s", len(progress.skipped),
                    Path(t.out_dir) / run.SKIPPED_AUDIO, run.skipped_summary(progress.skipped))
    return RunResult(Path(t.out_dir), progress.step, train_metrics, valid_metrics, model,
                     signal=(signals.received or signal.SIGTERM) if signalled else None,
                     bad_steps=progress.bad_steps, skipped_audio=progress.skipped)


def _make_loader(cfg: PretrainConfig, ctx: distributed.Context, model: torch.nn.Module, split: str,
                 train: bool) -> AudioLoader:
    """Batches of one split (or ``a+b``): clips shorter than the encoder's one frame (55 ms for BEST-RQ),
    or than ``data.min_duration`` if that is longer, are left out up front, from the manifest."""
    shortest = max(cfg.data.min_duration, min_samples(model) / model.sample_rate)
    why = f"data.min_duration={cfg.data.min_duration:g}s" if shortest == cfg.data.min_duration else \
        f"{shortest:g}s, one frame of the encoder"
    dataset = AudioDataset(max_duration=cfg.data.max_duration, min_duration=shortest, seed=cfg.train.seed)
    # read as the sampler goes: start-up and memory do not grow with the corpus
    loader = AudioLoader(open_split(cfg.data.corpus, split, skip_bad=True), dataset,
                         max_batch_duration=cfg.data.max_batch_duration, num_buckets=cfg.data.num_buckets,
                         shuffle=train, seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size,
                         num_workers=cfg.data.num_workers if train else 0, drop_last=train,
                         pin_memory=train and ctx.device.type == "cuda",  # so non_blocking copies overlap
                         min_duration=shortest, identity=split_identity(cfg.data.corpus, split), name=split,
                         too_short=why)
    shards = loader.cuts.data.sources if loader.cuts.data.sharded else []
    if train and ctx.is_main and 0 < len(shards) < ctx.world_size:
        log.warning("%s: %d shards for %d processes: each process reads them all and takes its share of the "
                    "batches; for each to read its own, write more shards (bestrq prepare --shard-size)",
                    split, len(shards), ctx.world_size)
    if next(iter(loader.usable_cuts()), None) is None:  # reads up to the first usable cut
        raise ValueError(f"{cfg.data.corpus}: split {split!r} has no cut of at least {shortest:g}s")
    return loader


class _Clock:
    """The run's training time across resumes, and each logging window's audio per second and time per
    update. Validation and checkpointing run :meth:`aside`: their time is in ``elapsed`` (the run's wall
    time) but not in a window's ``update_seconds`` or ``audio_per_second``."""

    def __init__(self, trained_before: float) -> None:
        self.window_start = time.monotonic()
        self.started = self.window_start - trained_before
        self.audio = 0.0  # seconds of audio trained on since the window started, this rank
        self.updates = 0  # updates made since the window started
        self.set_aside = 0.0  # seconds of validation and checkpointing since the window started

    def trained(self) -> float:
        return time.monotonic() - self.started

    @contextlib.contextmanager
    def aside(self) -> typing.Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.set_aside += time.monotonic() - start

    def window(self, device: torch.device) -> dict[str, float]:
        """Since the last call: ``audio_per_second`` over all ranks and ``update_seconds``, the mean time of
        an update, both without validation and checkpoints; ``updates``, how many this process made (after
        a resume from a checkpoint saved between two logs, fewer than the steps since the last log); and
        ``elapsed``. Starts a new window."""
        now = time.monotonic()
        audio = distributed.all_reduce_sum(torch.tensor([self.audio], device=device)).item()
        training = max(now - self.window_start - self.set_aside, 1e-9)
        out = {"audio_per_second": audio / training, "update_seconds": training / max(self.updates, 1),
               "updates": float(self.updates), "elapsed": now - self.started}
        self.window_start, self.audio, self.updates, self.set_aside = now, 0.0, 0, 0.0
        return out


class _BadSteps:
    """A step whose loss or gradient norm is not finite: its update is skipped and counted; after
    ``train.max_bad_steps`` in a row the run stops (:class:`TrainingDiverged`), its last checkpoint
    (saved before the trouble) untouched."""

    def __init__(self, progress: run.Progress, t, ctx: distributed.Context) -> None:
        self.progress, self.limit, self.out_dir, self.ctx = progress, t.max_bad_steps, Path(t.out_dir), ctx
        self.in_a_row, self.logged = 0, progress.bad_steps

    def skip(self, finite_loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> bool:
        bad = not bool(finite_loss & torch.isfinite(grad_norm))
        if self.ctx.distributed:  # gradients are all-reduced before the norm, the loss is not: agree on every rank
            bad = _any_rank(bad, self.ctx.device)
        if not bad:
            self.in_a_row = 0
            return False
        self.progress.bad_steps += 1
        self.in_a_row += 1
        log.warning("step %d: non-finite %s, update skipped (%d in a row, %d in this run)", step,
                    "gradient norm" if bool(finite_loss) else "loss", self.in_a_row, self.progress.bad_steps)
        if self.in_a_row >= self.limit:
            last = checkpoint.latest(self.out_dir)
            raise TrainingDiverged(
                f"{self.in_a_row} consecutive steps with a non-finite loss or gradient (train.max_bad_steps="
                f"{self.limit}) at step {step}: stopping. The last checkpoint, "
                f"{last if last else 'none yet'}, is untouched; lower optim.lr, raise optim.warmup_steps "
                f"or use train.precision=fp32, then run the same command to resume from it")
        return True

    def since_log(self) -> int:
        """Bad steps since the last call: the ``bad_steps`` of a metrics record."""
        count, self.logged = self.progress.bad_steps - self.logged, self.progress.bad_steps
        return count


def _stopped_message(signals: _StopSignals, max_minutes: float, step: int, signalled: bool) -> str:
    if signalled:
        name = signal.Signals(signals.received).name if signals.received else "a signal on another rank"
        return f"stopped by {name} at step {step} (checkpoint saved): run the same command to resume"
    return f"stopping after {max_minutes} minutes at step {step} (checkpoint saved)"


def _any_rank(flag: bool, device: torch.device) -> bool:
    return _any_ranks([flag], device)[0]


def _any_ranks(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag OR-ed over the ranks, in one all-reduce (one process: the flags, with no device round trip)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [bool(f) for f in flags]
    total = distributed.all_reduce_sum(torch.tensor([float(f) for f in flags], device=device))
    return [bool(v > 0) for v in total.tolist()]
