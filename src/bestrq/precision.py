"""Numeric precision in one place: the run's autocast, TF32, and what stays exact fp32 whatever they are.

    autocast(device, precision)  train.precision -> the autocast that training, validation and
                                 hidden-state extraction all run under (bf16 or off)
    use_tf32(device)             fp32 matmuls on CUDA in TF32 (train.tf32): Ampere and later run them
                                 several times faster
    exact_fp32(device_type)      autocast off and full-precision fp32 matmuls, for the few statistics
                                 that low precision breaks: the quantizer's nearest-code search,
                                 wav2vec 2.0's conv channel norms, its first conv layer's product
                                 and contrastive cosines
    autocast_dtype(device_type, dtype)
                                 what such an exact result is handed on in: autocast's dtype, or dtype

torch's fp32 matmul precision is global; ``exact_fp32`` sets it to ``highest`` and puts it back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast of a run's ``train.precision``: training, validation and hidden-state
    extraction all use it, so a bf16 model is validated and probed on the numbers it trains on."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def use_tf32(device: torch.device, enabled: bool = True) -> None:
    """fp32 matmuls in TF32 on CUDA (10-bit mantissa, fp32 range); nothing on a CPU, where torch's
    lower matmul precisions may compute fp32 products in bf16 instead."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def autocast_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype that a product of ``dtype`` tensors computed exactly hands on: what autocast would give,
    its low precision where it is on for ``device_type`` (it leaves float64 alone), else ``dtype``. Read
    it before entering ``exact_fp32``, which turns autocast off."""
    if dtype == torch.float64 or not torch.is_autocast_enabled(device_type):
        return dtype
    return torch.get_autocast_dtype(device_type)


@contextlib.contextmanager
def exact_fp32(device_type: str) -> Iterator[None]:
    """Autocast off and fp32 matmuls at full precision inside; both as they were after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(before)
