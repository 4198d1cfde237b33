"""AdamW and the learning-rate schedules, as pure functions of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    noam: linear warm-up to ``lr`` over ``warmup_steps``, then ``lr * sqrt(warmup / step)``
    (the Noam schedule of the paper's code, normalised so that its peak is ``lr``).
    cosine: linear warm-up, then a half cosine down to ``min_lr_ratio * lr`` at ``total_steps``.
    """
    s = step + 1
    warmup = max(1, cfg.warmup_steps)
    if cfg.schedule == "constant":
        return cfg.lr * min(1.0, s / warmup)
    if s <= warmup:
        return cfg.lr * s / warmup
    if cfg.schedule == "noam":
        return cfg.lr * math.sqrt(warmup / s)
    progress = min(1.0, (s - warmup) / max(1, total_steps - warmup))
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms and embeddings (1-D weights and ``distance_embedding``) get no decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "embedding" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
