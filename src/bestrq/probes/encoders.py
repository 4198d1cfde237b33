"""The frozen encoders a probe reads: a checkpoint of ours, the fbank features alone, or a random init.

    --checkpoint runs/x                      the newest checkpoint of a pre-training run
    --checkpoint runs/x/checkpoints/step-N   that checkpoint
    --checkpoint fbank                       80-dim log-mel, utterance-normalised: one "layer"
    --checkpoint random:CONFIG               the model CONFIG describes, randomly initialised (seeded)

Every one is a module with ``encode(waveforms, lengths) -> EncoderOutput`` and a
``sample_rate``, in eval mode, with no gradient. A model encodes in the precision it was
trained in (its ``train.precision``: bf16 autocast, or fp32) unless ``precision`` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PretrainConfig, load_config
from ..features import FeatureNormalizer, LogMelFbank, normalised_fbank, padding_mask
from ..inference.loading import load_checkpoint
from ..inference.streaming import chunking_of
from ..models.chunking import Chunking
from ..models.conformer import EncoderOutput
from ..precision import PRECISIONS, autocast
from ..runtime.checkpoint import run_of
from ..runtime.distributed import require_device
from ..runtime.metrics import METRICS, read_metrics


class FbankEncoder(nn.Module):
    """The features alone, as BEST-RQ computes them: the floor every encoder should beat."""

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        f = cfg.features
        self.features = LogMelFbank(num_mel_bins=f.num_mel_bins)
        self.normalizer = FeatureNormalizer(f.num_mel_bins, "utterance")

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        feats, frame_lengths = normalised_fbank(self.features, self.normalizer, waveforms, lengths)
        return EncoderOutput((feats,), frame_lengths, padding_mask(frame_lengths, feats.shape[1]))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.features.output_lengths(lengths)


@dataclass
class Encoder:
    """A frozen encoder and what the report says about it."""

    name: str  # a short label for tables
    spec: str  # what was given to --checkpoint
    module: nn.Module
    info: dict[str, Any] = field(default_factory=dict)  # objective, step, pre-training time and audio
    precision: str = "fp32"  # fp32, or bf16: encode under bf16 autocast
    chunking: Chunking | None = None  # chunked attention: the states streaming inference gives

    def __post_init__(self) -> None:
        if self.precision != "fp32":  # part of what makes two extractions the same (probes/cache.py)
            self.info = {**self.info, "precision": self.precision}

    @property
    def sample_rate(self) -> int:
        return self.module.sample_rate

    @torch.no_grad()
    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        with autocast(waveforms.device, self.precision):
            if self.chunking is not None:
                return self.module.encode(waveforms, lengths, self.chunking)
            return self.module.encode(waveforms, lengths)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for clips of ``lengths`` samples (0: too short for one)."""
        return self.module.output_lengths(lengths)


def same_encoder(a: dict, b: dict) -> bool:
    """Whether two encoder records (``encoder.json``, a probe result's ``encoder``) are of one model:
    the same weights file, or for ``fbank`` and ``random:`` the same name, spec and seed."""
    if any(a.get(k) != b.get(k) for k in ("chunk_ms", "left_chunks")):  # streamed states are others
        return False
    if a.get("weights_id") or b.get("weights_id"):
        return a.get("weights_id") == b.get("weights_id")
    return all(a.get(k) == b.get(k) for k in ("name", "spec", "seed"))


def _pretraining_record(run_dir: Path, step: int) -> dict[str, Any]:
    """Wall time and audio seen up to ``step``, from the run's metrics.jsonl (absent: empty)."""
    path = run_dir / METRICS
    if not path.is_file():
        return {}
    records = [r for r in read_metrics(path) if r["split"] == "train" and r["step"] <= step]
    elapsed = max((r.get("elapsed", 0.0) for r in records), default=0.0)
    audio = sum(r.get("audio_seconds", 0.0) for r in records)
    return {"pretrain_seconds": elapsed, "pretrain_audio_hours": audio / 3600}


def _from_checkpoint(path: Path, device: torch.device, precision: str) -> Encoder:
    loaded = load_checkpoint(path, device)
    run_dir = run_of(loaded.folder)  # None for an export: named after its folder, timed by its run if still there
    source_run = run_dir or run_of(loaded.info.get("exported_from"))
    info = {**loaded.info, **(_pretraining_record(source_run, loaded.step) if source_run else {})}
    return Encoder(f"{(run_dir or loaded.folder).name} (step {loaded.step})", str(path), loaded.module, info,
                   loaded.config.train.precision if precision == "run" else precision)


def load_encoder(spec: str, device: str | torch.device = "cpu", seed: int = 0, precision: str = "run",
                 chunk_ms: float | None = None, left_chunks: int | None = None) -> Encoder:
    """What ``--checkpoint`` names (see the module docstring); clear errors for anything else.

    ``precision``: ``run`` (the model's own ``train.precision``), ``fp32`` or ``bf16``. ``chunk_ms``
    (and ``left_chunks``): encode with chunked attention, as streaming inference does
    (inference/streaming.py): each frame sees its chunk and the left chunks (all with None) only.
    """
    encoder = _load_encoder(spec, device, seed, precision)
    chunking = chunking_of(encoder.module, chunk_ms, left_chunks, ("--chunk-ms", "--left-chunks"), encoder.name)
    if chunking is None:
        return encoder
    left = "all the past" if left_chunks is None else f"{left_chunks} left"
    return Encoder(f"{encoder.name}, chunks of {chunk_ms:g} ms ({left})", encoder.spec, encoder.module,
                   {**encoder.info, "chunk_ms": chunk_ms, "left_chunks": left_chunks}, encoder.precision, chunking)


def _load_encoder(spec: str, device: str | torch.device, seed: int, precision: str) -> Encoder:
    device = require_device(device, "device")
    if precision not in ("run", *PRECISIONS):
        raise ValueError(f"precision: must be run, {', '.join(PRECISIONS)}; not {precision!r}")
    if spec == "fbank":  # the features are fp32 under any autocast
        module = FbankEncoder(load_config("bestrq_tiny"))
        return Encoder("fbank", spec, module.to(device).eval(), {"objective": "none"})
    if spec.startswith("random:"):
        from ..objectives import build_model

        name = spec.split(":", 1)[1]
        if not name:
            raise ValueError("random: needs a config to initialise, e.g. random:bestrq_tiny")
        cfg = load_config(name)
        torch.manual_seed(seed)
        model = build_model(cfg)
        return Encoder(f"random init ({Path(name).stem})", spec, model.to(device).eval().requires_grad_(False),
                       {"objective": cfg.objective, "step": 0, "seed": seed, "pretrain_seconds": 0.0,
                        "pretrain_audio_hours": 0.0}, cfg.train.precision if precision == "run" else precision)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such checkpoint or run folder (or give fbank, random:CONFIG)")
    return _from_checkpoint(path, device, precision)
