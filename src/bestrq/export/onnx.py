"""ONNX export: audio in, every layer's hidden states out, for runtimes without PyTorch.

The graph holds the whole encoding path of ``Model.extract_features`` (log-mel fbank,
normalisation, front-end, encoder), with dynamic batch and sample axes::

    inputs   waveforms      (B, S) float32, 16 kHz audio in [-1, 1], zero-padded
             lengths        (B,)   int64, valid samples per row
    outputs  hidden_states  (L + 1, B, T, D) float32: the front-end output, then each layer
             frame_lengths  (B,)   int64, valid frames per row (T = frames of the longest row)

Either objective exports. Run it with onnxruntime (``tests/test_export_formats.py`` checks
that it agrees with PyTorch to 1e-4). Export uses ``torch.onnx.export(dynamo=True)``, which
needs torch >= 2.6 and the ``onnx`` and ``onnxscript`` packages (``pip install 'bestrq[export]'``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.torch_version import TorchVersion

from .api import Loaded
from .hf import whole_frames

OPSET = 18


class _Encode(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module.encode(waveforms, lengths)
        return torch.stack(out.hidden_states), out.lengths


def torch_exports_onnx() -> bool:
    """Whether this torch has the exporter used here: ``torch.onnx.export(dynamo=True, dynamic_shapes=...)``, 2.6 on."""
    return TorchVersion(torch.__version__) >= (2, 6)


def export_onnx(loaded: Loaded, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``loaded``'s encoder as an ONNX file (and a ``.json`` beside it describing it); returns the file."""
    if not torch_exports_onnx():
        raise ImportError(f"exporting to ONNX needs torch >= 2.6 (its torch.export-based exporter with "
                          f"dynamic shapes); this is torch {torch.__version__}")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("exporting to ONNX needs the onnx and onnxscript packages: "
                           "pip install 'bestrq[export]'") from None
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: name the ONNX file *.onnx")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
    module = loaded.module.cpu().eval()
    rate = module.sample_rate
    # an example of a few seconds, two rows of different lengths, so no size is specialised
    example = torch.randn(2, 3 * rate, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([3 * rate, whole_frames(2 * rate)])
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=rate // 10, max=rate * 3600)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and naming chatter
        program = torch.onnx.export(
            _Encode(module), (example, lengths), dynamo=True, opset_version=OPSET, verbose=False,
            input_names=["waveforms", "lengths"], output_names=["hidden_states", "frame_lengths"],
            dynamic_shapes={"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}})
    program.save(str(tmp))
    tmp.replace(out)
    cfg = loaded.config
    out.with_suffix(".json").write_text(json.dumps({
        "inputs": {"waveforms": "(B, S) float32", "lengths": "(B,) int64"},
        "outputs": {"hidden_states": "(L + 1, B, T, D) float32", "frame_lengths": "(B,) int64"},
        "sample_rate": rate, "num_hidden_states": cfg.encoder.num_layers + 1, "hidden_size": cfg.encoder.d_model,
        "objective": cfg.objective, "step": loaded.step, "source": str(loaded.folder)}, indent=2))
    return out
