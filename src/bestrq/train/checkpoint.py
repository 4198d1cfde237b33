"""Checkpoints: weights in safetensors, training state in a weights-only torch file.

    out_dir/checkpoints/step-00001000/
        model.safetensors   every parameter and buffer (the quantizer's frozen tensors too)
        state.pt            optimizer, step, data-loader position, RNG states
        config.json         the full run config and the step, human-readable

A checkpoint is written into a hidden temporary folder and renamed into place, so a
crash never leaves a half-written one under a real name; the newest ``keep`` are kept.
Loading never unpickles code: safetensors holds tensors only and ``state.pt`` is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "bestrq-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any]


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
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata={"format": FORMAT, "step": str(step)})
    torch.save({"format": FORMAT, "step": step, **state}, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps({"format": FORMAT, "step": step, "config": config}, indent=2))
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # the same step saved again (a resumed run): replace it
        old = folder / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    for stale in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder; a clear CheckpointError names the file if it is not ours or broken."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    for name in ("model.safetensors", "state.pt", "config.json"):
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
    return Checkpoint(path, int(state["step"]), weights, state, meta.get("config", {}))


def latest(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None
