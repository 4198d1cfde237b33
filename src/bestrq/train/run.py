"""The run folder: everything a pre-training run keeps on disk, and how a run picks up from it.

    OUT/.lock                 one training process per folder (a POSIX lock, see lock())
    OUT/config.json           the run's whole config
    OUT/checkpoints/step-N/   complete checkpoints (runtime/checkpoint.py: weights, training state, config)
    OUT/metrics.jsonl         one JSON record a line: {"step": int, "split": str, NAME: number, ...}
    OUT/skipped_audio.json    cut id -> {"path", "reason", "times"}: the audio the run could not use
    OUT/tensorboard/          the same metrics for TensorBoard (train.tensorboard)

:func:`resume` turns the newest loadable checkpoint back into a model, an optimizer, a data
position and random states, and returns the counters the loop goes on from; :func:`save`
writes them. The formats of ``checkpoints/`` and ``metrics.jsonl`` are defined below this
layer, in ``runtime/checkpoint.py`` and ``runtime/metrics.py``, which every reader uses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import PretrainConfig, to_dict
from ..data.audio import by_kind
from ..files import atomic_path
from ..runtime import checkpoint, distributed
from ..runtime.runs import RUN_CONFIG

log = logging.getLogger("bestrq.train")

# config sections that define the model: a checkpoint resumes only into the same ones
MODEL_SECTIONS = ("objective", "features", "quantizer", "encoder", "wav2vec2")
SKIPPED_AUDIO = "skipped_audio.json"


_LOCKED: set[Path] = set()  # run folders this process holds: a POSIX lock does not exclude its own process


@contextlib.contextmanager
def lock(out_dir: Path) -> typing.Iterator[None]:
    """One training process per run folder: a second one (the same command in another shell)
    would interleave its checkpoints and metrics with the first's.

    The lock is a POSIX record lock (``fcntl.lockf``) on ``OUT/.lock``. The kernel drops it when
    the process that took it ends, however it ends, and the processes it forks (loader workers)
    do not inherit it: a restart right after a SIGKILL finds the folder free. (A ``flock`` would
    be shared with forked workers, which outlive a killed trainer by seconds.) The file names the
    holder while it runs and is emptied when it ends, so a run that finds a name in a free lock
    says that its last holder died. Where the file system has no locks, none."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    key = out_dir.resolve()
    with open(out_dir / ".lock", "a+") as fh:
        fh.seek(0)
        owner = fh.read().strip()
        busy = OSError(errno.EBUSY, f"in use by {owner or 'another process'}: wait for it to end, or pick "
                                    "another train.out_dir", str(out_dir))
        if key in _LOCKED:
            raise busy
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):  # no locks on this file system
                yield
                return
            raise busy from None
        if owner:
            log.warning("%s: its last process (%s) ended without releasing it (killed?); taking the run over",
                        out_dir / ".lock", owner.removeprefix("bestrq pretrain "))
        _write_owner(fh, f"bestrq pretrain (pid {os.getpid()} on {socket.gethostname()})\n")
        _LOCKED.add(key)
        try:
            yield
        finally:
            _LOCKED.discard(key)
            _write_owner(fh, "")  # a clean end: the next run takes the folder without a word


def _write_owner(fh, text: str) -> None:
    fh.seek(0)
    fh.truncate()
    fh.write(text)
    fh.flush()


def write_config(out_dir: Path, cfg: PretrainConfig) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / RUN_CONFIG) as tmp:
        tmp.write_text(json.dumps(to_dict(cfg), indent=2))


# ---------------------------------------------------------------------------------------------
# resuming and saving


@dataclass
class Progress:
    """What the loop counts across resumes, as a checkpoint restores it (zeros for a new run)."""

    step: int = 0
    bad_steps: int = 0  # updates skipped for a non-finite loss or gradient
    skipped: dict[str, dict] = field(default_factory=dict)  # cut id -> path, reason, times
    trained_before: float = 0.0  # seconds of training before this process (max_minutes goes on from it)


def model_differences(saved: dict, cfg: PretrainConfig, sections: tuple[str, ...] = MODEL_SECTIONS,
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
    differ = model_differences(saved, cfg)
    if differ:
        sections = dict.fromkeys(d.split(":")[0].split(".")[0] for d in differ)
        raise checkpoint.CheckpointError(
            f"{path} was trained with a different {', '.join(sections)} config ({'; '.join(differ)}): "
            f"pick a new train.out_dir or the same model settings")


def resume(cfg: PretrainConfig, ctx: distributed.Context, model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, loader) -> Progress | None:
    """Restore the newest loadable checkpoint of ``cfg.train.out_dir`` into the model, the
    optimizer, the loader and the random states; None when the run has no checkpoint yet.

    Every rank calls it. The main rank first repairs a checkpoint write cut short by a kill."""
    out_dir = Path(cfg.train.out_dir)
    if ctx.is_main:
        checkpoint.recover(out_dir)  # a write cut short by a kill: restore or remove its leftovers
    distributed.barrier()
    path, ckpt = checkpoint.latest_loadable(out_dir)
    if ckpt is None:
        return None
    _check_resumable(ckpt.config, cfg, path)
    checkpoint.fit_weights(model, ckpt.weights, path, "this run's model")
    try:
        optimizer.load_state_dict(ckpt.state["optimizer"])
        _restore_position(cfg, ctx, loader, ckpt, path)
        progress = Progress(step=ckpt.step, bad_steps=int(ckpt.state.get("bad_steps", 0)),
                            skipped={k: dict(v) for k, v in ckpt.state.get("skipped_audio", {}).items()},
                            trained_before=float(ckpt.state.get("train_seconds", 0.0)))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        # a state.pt that unpickles but whose contents do not fit: damaged, or not written by this loop
        raise checkpoint.CheckpointError(
            f"{path / 'state.pt'}: damaged or not this run's training state ({type(e).__name__}: {e}); "
            f"move {path} aside to resume from the checkpoint before it") from None
    if ctx.is_main:
        log.warning("resuming from %s (step %d)", path, progress.step)
    return progress


def _restore_position(cfg: PretrainConfig, ctx: distributed.Context, loader, ckpt, path: Path) -> None:
    """The data position and random states, exactly where the same processes on the same data can
    continue; otherwise the next epoch, sharded anew, with random states re-seeded."""
    saved = ckpt.state["loader"]
    same_cuts = all(s.get("cuts", loader.fingerprint) == loader.fingerprint for s in saved)
    if len(saved) == ctx.world_size and same_cuts:  # as if never stopped
        loader.load_state_dict(saved[ctx.rank])
        rng = ckpt.state["rng"][ctx.rank]
        torch.set_rng_state(rng["torch"])
        if ctx.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
        return
    # another number of processes (a pre-empted job back on fewer or more GPUs), or a training split
    # that changed: the model and optimizer continue exactly; a position in the old epoch means
    # nothing in the new one, so the next epoch starts
    epoch = max(int(s["epoch"]) for s in saved) + 1
    loader.load_state_dict({**loader.state_dict(), "epoch": epoch, "position": 0})
    torch.manual_seed(cfg.train.seed * 1_000_003 + ckpt.step * 1009 + ctx.rank)
    if ctx.is_main:
        why = (f"was written by {len(saved)} process(es), this run has {ctx.world_size}"
               if len(saved) != ctx.world_size else
               f"read another {cfg.data.train_split} split (its cuts changed since)")
        log.warning("%s %s: the model and optimizer continue exactly; the data starts epoch %d, "
                    "sharded anew, and random states are re-seeded", path, why, epoch)


def save(cfg: PretrainConfig, ctx: distributed.Context, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         loader, progress: Progress, train_seconds: float) -> None:
    """A checkpoint at ``progress.step``: each rank's data position and random states gathered on the
    main rank, which writes it (and ``skipped_audio.json``). Every rank calls it."""
    states = {"loader": loader.state_dict(), "skipped": progress.skipped, "rng": {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if ctx.device.type == "cuda" else None}}
    gathered = [states]
    if ctx.distributed:
        gathered = [None] * ctx.world_size
        dist.all_gather_object(gathered, states)
    if ctx.is_main:
        skipped = {}
        for g in gathered:  # each rank reads its own batches: one list for the run
            skipped.update(g["skipped"])
        out_dir = Path(cfg.train.out_dir)
        checkpoint.save(out_dir, progress.step, model.state_dict(), {
            "optimizer": optimizer.state_dict(),
            "loader": [g["loader"] for g in gathered], "rng": [g["rng"] for g in gathered],
            "bad_steps": progress.bad_steps, "skipped_audio": skipped, "train_seconds": train_seconds,
        }, to_dict(cfg), keep=cfg.train.keep_checkpoints)
        if skipped:
            with atomic_path(out_dir / SKIPPED_AUDIO) as tmp:
                tmp.write_text(json.dumps(skipped, indent=2))
    distributed.barrier()


def skipped_summary(skipped: dict[str, dict]) -> str:
    """One line per kind of problem: how many files, and an example."""
    kinds = by_kind((entry["path"], entry["reason"]) for entry in skipped.values())
    return "\n".join(f"  {kind}: {len(paths)} file(s), e.g. {paths[0]}" for kind, paths in kinds.items())
