"""Checkpoints: weights in safetensors, training state in a weights-only torch file.

    out_dir/checkpoints/step-00001000/
        model.safetensors   every parameter and buffer (the quantizer's frozen tensors too)
        state.pt            optimizer, step, data-loader position, RNG states
        config.json         the full run config, the step and the sha256 of the other two files

A checkpoint is written into a hidden temporary folder, synced to disk and renamed into
place, so a crash (SIGKILL included) never leaves a half-written one under a real name;
``recover`` clears what such a crash leaves behind. The newest ``keep`` are kept.
Loading never unpickles code: safetensors holds tensors only and ``state.pt`` is read with
``torch.load(weights_only=True)``. Loading checks the two files against the sha256 saved with them,
so that damage on disk that still parses (a flipped bit in a weight) is found, not trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import is_count

FORMAT = "bestrq-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8,})$")
FILES = ("model.safetensors", "state.pt", "config.json")  # what a complete checkpoint folder holds
HASHED = FILES[:2]  # config.json holds their sha256
_OLD = re.compile(r"^\.old-(step-\d{8,})-\d+$")
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any]


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` is that of a checkpoint folder (``step-00000100``)."""
    return _NAME.match(name) is not None


def run_of(folder: str | os.PathLike | None) -> Path | None:
    """The run folder a checkpoint folder (``RUN/checkpoints/step-N``) belongs to; None for any other."""
    if not folder:
        return None
    folder = Path(folder)
    return folder.parent.parent if folder.parent.name == "checkpoints" and is_checkpoint_name(folder.name) else None


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save(out_dir: str | os.PathLike, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any],
         config: dict[str, Any], keep: int) -> Path:
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": FORMAT, "step": str(step)})
        torch.save({"format": FORMAT, "step": step, **state}, tmp / "state.pt")
        sha256 = {name: _sha256(tmp / name) for name in HASHED}
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, "step": step, "config": config,
                                                     "sha256": sha256}, indent=2))
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except OSError as e:  # a full disk, say: the half-written files go, the earlier checkpoints stay
        shutil.rmtree(tmp, ignore_errors=True)
        before = list_checkpoints(out_dir)
        kept = f"the newest checkpoint, {before[-1].name}, is intact" if before else "there is no earlier checkpoint"
        raise OSError(e.errno, f"{e.strerror or e}: not saved; {kept}. Run the same command to resume once the "
                               "cause is fixed", str(final)) from e
    if final.exists():  # the same step saved again (a resumed run): replace it; recover() undoes a cut
        old = folder / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(folder)  # the rename itself survives a power cut
    for stale in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        # out of sight first (one atomic rename), then deleted: a kill during the deletion must not
        # leave a folder with a checkpoint's name and half its files; recover() clears the rest
        doomed = folder / f".tmp-step-deleting-{stale.name}-{os.getpid()}"
        stale.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder; a clear CheckpointError names the file if it is not ours or broken."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}: not a complete bestrq checkpoint")
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / 'config.json'}: not a {FORMAT} file")
    try:
        weights = load_file(str(path / "model.safetensors"), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'model.safetensors'}: corrupt or not safetensors: {e}") from None
    try:
        state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad or foreign file
        raise CheckpointError(f"{path / 'state.pt'}: corrupt or not a bestrq training state: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path / 'state.pt'}: not a {FORMAT} file")
    step = state.get("step")
    if not is_count(step):
        raise CheckpointError(f"{path / 'state.pt'}: damaged: its step is {step!r}, not a count of steps")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path / 'config.json'}: damaged: its 'config' is "
                              f"{type(meta.get('config')).__name__}, not the run's settings")
    _check_sha256(path, meta.get("sha256"))
    return Checkpoint(path, step, weights, state, meta["config"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(folder: Path, saved: Any) -> None:
    """The files against the sha256 that config.json saved with them (checkpoints written before it are not checked)."""
    if saved is None:
        return
    if not isinstance(saved, dict) or not all(isinstance(saved.get(name), str) for name in HASHED):
        raise CheckpointError(f"{folder / 'config.json'}: damaged: its 'sha256' is not a digest of each of "
                              f"{', '.join(HASHED)}")
    for name in HASHED:
        if (found := _sha256(folder / name)) != saved[name]:
            raise CheckpointError(
                f"{folder / name}: damaged: its bytes changed after it was saved (sha256 {found[:12]}..., saved as "
                f"{saved[name][:12]}...). If it was changed on purpose, delete 'sha256' from {folder / 'config.json'}")


def fit_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str | os.PathLike, what: str) -> None:
    """Load ``weights`` into ``model``; a CheckpointError naming ``where`` if they do not fit it (names missing
    or unexpected, or a tensor of another shape: a damaged or swapped file) or hold NaN or infinite values
    (never saved by training, which skips non-finite steps: a damaged file, or one of a diverged run)."""
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{where}: damaged: its weight {bad} holds NaN or infinite values")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # torch lists every tensor of another shape; the first says enough
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise CheckpointError(f"{where}: its weights do not fit {what} ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(f"{where}: its weights do not fit {what} (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def recover(out_dir: str | os.PathLike) -> list[str]:
    """Clear what a save cut short left: a replaced checkpoint whose successor never arrived is
    put back, temporary folders are removed. Returns what was done, one line per folder."""
    folder = checkpoint_dir(out_dir)
    done = []
    if not folder.is_dir():
        return done
    for p in sorted(folder.iterdir()):
        m = _OLD.match(p.name)
        if m and not (folder / m.group(1)).exists():
            p.rename(folder / m.group(1))
            done.append(f"restored {m.group(1)} (its replacement was never completed)")
        elif m or p.name.startswith(".tmp-step-"):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name} (an unfinished write)")
    for line in done:
        log.warning("%s: %s", folder, line)
    return done


def latest_loadable(out_dir: str | os.PathLike, map_location: str | torch.device = "cpu", warn: bool = True
                    ) -> tuple[Path | None, Checkpoint | None]:
    """The newest checkpoint that loads; broken newer ones (damaged after the write) are passed over,
    each with a warning unless ``warn`` is false."""
    errors = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load(path, map_location)
        except CheckpointError as e:
            if warn:
                log.warning("passing over a damaged checkpoint: %s", e)
            errors.append(str(e))
    if errors:
        raise CheckpointError(f"{checkpoint_dir(out_dir)}: no checkpoint loads ({'; '.join(errors)})")
    return None, None


def latest(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None
