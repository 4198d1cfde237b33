"""Any bestrq folder into a model: a run (its newest complete checkpoint), a checkpoint, or an export.

Training (``--init-from``), the probes and users (``bestrq.load``) all load through
:func:`load_checkpoint`. Checkpoints load without unpickling code (runtime/checkpoint.py
defines their format); a checkpoint whose weights do not fit the model its own config
describes is refused, naming the keys.

An export folder (``bestrq export --to hf``, written by export/hf.py) holds::

    bestrq_config.json   our full config
    model.safetensors    the encoder's weights under transformers' Wav2Vec2BertModel names
    bestrq.safetensors   the rest of the state dict (quantizer, heads, feature statistics); its
                         metadata names the step and checkpoint it came from

:func:`read_export` reads one back into our state-dict layout, without transformers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ..config import ConfigError, PretrainConfig, from_dict
from ..runtime import checkpoint as ckpt_io
from ..runtime.checkpoint import CheckpointError
from ..runtime.distributed import require_device
from ..runtime.metrics import METRICS

BESTRQ_CONFIG = "bestrq_config.json"
EXTRAS = "bestrq.safetensors"
WEIGHTS = "model.safetensors"


@dataclass
class Loaded:
    """An objective module rebuilt from a checkpoint, with its config and where it came from."""

    module: nn.Module
    config: PretrainConfig
    step: int
    folder: Path  # the checkpoint or exported folder
    info: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
    """A run folder (its newest complete checkpoint), a checkpoint folder or a folder that
    ``bestrq export --to hf`` wrote -> the model, in eval mode, frozen."""
    from ..objectives import build_model

    device = require_device(str(device), "device")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run, checkpoint or export folder")
    if path.is_file():
        raise ckpt_io.CheckpointError(f"{path}: a file; give a bestrq run, checkpoint or export folder")
    source = None  # for an export: the checkpoint it was made from
    if is_export(path):
        folder = path
        config, step, weights, source = read_export(path)
    else:
        if (path / BESTRQ_CONFIG).is_file():
            raise ckpt_io.CheckpointError(f"{path}: an export folder without its {WEIGHTS} (the encoder's weights)")
        if _is_transformers_folder(path):
            raise ckpt_io.CheckpointError(
                f"{path}: a transformers model folder without {path.name}/bestrq_config.json; bestrq loads "
                "its own checkpoints and the folders `bestrq export --to hf` writes")
        is_run = ckpt_io.checkpoint_dir(path).exists() or (path / METRICS).is_file()  # a run before its first save too
        folder = ckpt_io.latest(path) if is_run else path
        if folder == path and not ckpt_io.is_checkpoint_name(path.name) and not any(
                (path / name).exists() for name in ckpt_io.FILES):
            raise ckpt_io.CheckpointError(f"{path}: not a bestrq run, checkpoint or export folder (it holds no "
                                          "checkpoints/ folder, model.safetensors or bestrq_config.json)")
        if folder is None:
            raise ckpt_io.CheckpointError(f"{path}: a run folder without any complete checkpoint (a run writes its "
                                          "first at step train.checkpoint_every)")
        try:
            ckpt = ckpt_io.load(folder)
        except ckpt_io.CheckpointError as e:
            if folder == path:
                raise
            raise ckpt_io.CheckpointError(f"{e}. {_older_checkpoint(path)}") from None
        config, step, weights = ckpt.config, ckpt.step, ckpt.weights
    try:
        cfg = from_dict(PretrainConfig, config).validate()
    except ConfigError as e:
        raise ckpt_io.CheckpointError(f"{folder}: not a usable model config: {e}") from None
    model = build_model(cfg)
    ckpt_io.fit_weights(model, weights, folder, f"a {cfg.objective} model of its own config")
    info = {"objective": cfg.objective, "step": step, "checkpoint": str(folder), "weights_id": weights_id(folder)}
    if source:
        info["exported_from"] = source
    return Loaded(model.to(device).eval().requires_grad_(False), cfg, step, folder, info)


def weights_id(folder: Path) -> str:
    """The id of a checkpoint's (or export's) weights file: its size and modification time, so that a run
    trained again to the same step gets another id."""
    stat = (Path(folder) / WEIGHTS).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _older_checkpoint(run: Path) -> str:
    """Where to turn when a run's newest checkpoint is damaged: never silently to an older step."""
    try:
        older, _ = ckpt_io.latest_loadable(run, warn=False)
    except ckpt_io.CheckpointError:  # none loads
        older = None
    if older is None:
        return "It is the run's newest checkpoint, and no older one loads"
    return f"It is the run's newest checkpoint; the newest that loads is {older}: name it to use that one"


def _is_transformers_folder(path: Path) -> bool:
    """A folder whose config.json is a transformers model config (ours carry a ``format`` instead)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


# our encoder's prefixes -> Wav2Vec2BertModel's; the rest of the names are the same
_PREFIXES = (("frontend.", "feature_projection."), ("layers.", "encoder.layers."))


def to_hf_names(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder's state dict (keys relative to the encoder) -> Wav2Vec2BertModel's."""
    out = {}
    for key, value in encoder_state.items():
        prefix = next((p for p in _PREFIXES if key.startswith(p[0])), None)
        if prefix is None:
            raise ValueError(f"encoder weight {key!r} has no place in Wav2Vec2BertModel")
        out[prefix[1] + key[len(prefix[0]):]] = value
    return out


def from_hf_names(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wav2Vec2BertModel's weights -> our encoder's state dict (``masked_spec_embed`` is dropped)."""
    out = {}
    for key, value in hf_state.items():
        key = key.removeprefix("wav2vec2_bert.")  # saved from a model with a head (e.g. ForCTC)
        prefix = next((p for p in _PREFIXES if key.startswith(p[1])), None)
        if prefix is not None:
            out[prefix[0] + key[len(prefix[1]):]] = value
    return out


def is_export(folder: Path) -> bool:
    return (folder / BESTRQ_CONFIG).is_file() and (folder / WEIGHTS).is_file()


def read_export(folder: Path) -> tuple[dict[str, Any], int, dict[str, torch.Tensor], str | None]:
    """An exported folder -> (our config as a dict, its step, our full state dict, the checkpoint
    folder it was exported from, as recorded then)."""
    try:
        config = json.loads((folder / BESTRQ_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / BESTRQ_CONFIG}: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / BESTRQ_CONFIG}: not a mapping of config sections")
    if not (folder / EXTRAS).is_file():
        raise CheckpointError(f"{folder}: an export folder without its {EXTRAS} (the feature normaliser, "
                              "quantizer and heads that `bestrq export` writes beside the encoder)")
    try:
        state = {"encoder." + k: v for k, v in from_hf_names(load_file(str(folder / WEIGHTS))).items()}
        state.update(load_file(str(folder / EXTRAS)))
        with safe_open(str(folder / EXTRAS), "pt") as f:
            meta = f.metadata() or {}
        step = int(meta.get("step", 0))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{folder}: unreadable weights ({e})") from None
    return config, step, state, meta.get("source")
