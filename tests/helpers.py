"""Helpers shared by test modules and by scripts the tests launch (ddp_worker.py runs without pytest)."""

from __future__ import annotations

from pathlib import Path

from bestrq.config import load_config

# a 2-layer, 32-wide BEST-RQ that trains a step in well under a second on the demo corpus
SMALL = ["encoder.d_model=32", "encoder.num_layers=2", "encoder.num_heads=2", "encoder.ffn_dim=64",
         "quantizer.codebook_size=64", "data.max_batch_duration=20", "data.num_workers=0",
         "data.valid_max_batches=2", "train.device=cpu", "train.progress=false", "train.tensorboard=false",
         "train.valid_every=0", "optim.warmup_steps=2", "optim.lr=1e-3"]


def small(corpus: Path, out: Path, *extra: str):
    """The SMALL config of ``bestrq_tiny`` on ``corpus``, writing to ``out``, with ``extra`` overrides."""
    return load_config("bestrq_tiny", [*SMALL, f"data.corpus={corpus}", f"train.out_dir={out}", *extra])
