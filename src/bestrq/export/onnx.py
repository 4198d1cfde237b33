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

from ..features import stack_frames
from ..inference.loading import Loaded
from ..inference.streaming import chunk_frames, frame_geometry, streaming_problem
from ..models.conformer import rotary_at
from ..models.wav2vec2 import FbankFeatureEncoder
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


def _onnx_file(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as the .onnx file to write, once this torch and the onnx packages can export and it may be written."""
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
    return out


def _save(program, out: Path) -> None:
    """The exported program to ``out``, replacing it only once whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    program.save(str(tmp))
    tmp.replace(out)


def export_onnx(loaded: Loaded, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``loaded``'s encoder as an ONNX file (and a ``.json`` beside it describing it); returns the file."""
    out = _onnx_file(out, overwrite)
    module = loaded.module.cpu().eval()
    rate = module.sample_rate
    # an example of a few seconds, two rows of different lengths, so no size is specialised
    example = torch.randn(2, 3 * rate, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([3 * rate, whole_frames(2 * rate)])
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=rate // 10, max=rate * 3600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and naming chatter
        program = torch.onnx.export(
            _Encode(module), (example, lengths), dynamo=True, opset_version=OPSET, verbose=False,
            input_names=["waveforms", "lengths"], output_names=["hidden_states", "frame_lengths"],
            dynamic_shapes={"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}})
    _save(program, out)
    cfg = loaded.config
    out.with_suffix(".json").write_text(json.dumps({
        "inputs": {"waveforms": "(B, S) float32", "lengths": "(B,) int64"},
        "outputs": {"hidden_states": "(L + 1, B, T, D) float32", "frame_lengths": "(B,) int64"},
        "sample_rate": rate, "num_hidden_states": cfg.encoder.num_layers + 1, "hidden_size": cfg.encoder.d_model,
        "objective": cfg.objective, "step": loaded.step, "source": str(loaded.folder)}, indent=2))
    return out


# --- streaming: one chunk per call, the state in and out ------------------------------------


class StreamStep(nn.Module):
    """One chunk of chunk-by-chunk inference (inference/streaming.py) with fixed shapes, for ONNX.

    C frames per chunk, a left context of ``left_chunks`` chunks (ctx = left_chunks * C frames),
    L layers, H heads, k the depthwise kernel; encoder frame t is computed from samples hop * t to
    hop * t + window - 1 (:func:`~bestrq.inference.streaming.frame_geometry`: for BEST-RQ hop 640 and window
    880, the last 25 ms fbank window of 4 stacked frames)::

        inputs   samples  (hop C + window - hop,) float32: the chunk's samples and the window - hop
                          after them (BEST-RQ: 640 C + 240), zero-padded past the end of the audio
                 frames   (1,) int64: the chunk's frames that are audio (C, fewer in the last chunk)
                 seen     (1,) int64: frames of the stream before this chunk
                 keys, values  (L, H, ctx, hd) float32: each layer's left context (zeros at the start)
                 conv     (L, k - 1, D) float32: each layer's last depthwise inputs (zeros at the start)
        outputs  hidden_states (L + 1, C, D), then keys, values, conv and seen + frames for the next call

    Only the first ``frames`` rows of ``hidden_states`` are states; the state after a partial chunk
    is not to be used. Consecutive chunks' samples overlap by window - hop (see :func:`stream_chunks`).
    BEST-RQ and wav2vec 2.0 models (on fbank frames or on their waveform encoder) alike.
    """

    def __init__(self, module: nn.Module, chunk_frames: int, left_chunks: int) -> None:
        super().__init__()
        self.module, self.encoder = module, module.encoder
        self.chunk, self.context = chunk_frames, left_chunks * chunk_frames
        self.hop, self.window = frame_geometry(module)
        self.samples = self.hop * chunk_frames + self.window - self.hop
        extractor = getattr(module, "feature_extractor", None)  # wav2vec 2.0's
        if extractor is None:  # BEST-RQ: fbank, normalisation, then the encoder's stack front-end
            self.fbank, norm, self.stack = module.features, module.normalizer, None
        elif isinstance(extractor, FbankFeatureEncoder):  # fbank, normalisation, stack, then the projection
            self.fbank, norm, self.stack = extractor.fbank, extractor.normalizer, extractor.stack
        else:  # its waveform encoder, then the projection
            self.fbank = norm = self.stack = None
        if norm is not None:
            mean = norm.sum / norm.count if norm.mode == "global" else torch.zeros_like(norm.sum)
            var = (norm.sum_sq / norm.count - mean.square()).clamp(min=0) if norm.mode == "global" else None
            # the frozen global statistics as constants: no data-dependent branch in the graph
            self.register_buffer("mean", mean.float(), persistent=False)
            self.register_buffer("scale", torch.rsqrt(var.float() + norm.eps) if var is not None
                                 else torch.ones_like(mean, dtype=torch.float32), persistent=False)

    def _inputs(self, samples: torch.Tensor) -> torch.Tensor:
        """The chunk's samples -> its C encoder inputs (C, D), by the model's own feature path."""
        wave, length = samples[None], torch.full((1,), samples.shape[0], dtype=torch.int64)
        if self.fbank is None:  # wav2vec 2.0's waveform encoder: each frame from its own window
            return self.module.feature_projection(self.module.feature_extractor(wave, length)[0])[0][0]
        feats, _ = self.fbank(wave, length)
        feats = (feats - self.mean) * self.scale
        frames = torch.full((1,), feats.shape[1], dtype=torch.int64)
        if self.stack is not None:  # wav2vec 2.0 on fbank frames
            return self.module.feature_projection(stack_frames(feats, frames, self.stack)[0])[0][0]
        return self.encoder.frontend(feats, frames)[0][0]

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        layers = self.encoder.layers
        attn = layers[0].self_attn
        k = layers[0].conv_module.depthwise_conv.weight.shape[-1]
        shape = (len(layers), attn.num_heads, self.context, attn.head_dim)
        return {"keys": shape, "values": shape, "conv": (len(layers), k - 1, self.encoder.d_model)}

    def forward(self, samples: torch.Tensor, frames: torch.Tensor, seen: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor, conv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = self.chunk
        x = self._inputs(samples)  # (C, D)
        index = torch.arange(c)
        # keys: the left context's slots (valid once seen), then this chunk's frames that are audio
        slot = torch.arange(self.context)
        valid = torch.cat([slot >= self.context - torch.clamp(seen, max=self.context), index < frames])
        distance = torch.arange(self.context + c)[None, :] - self.context - index[:, None]  # key - query
        attn = self.encoder.layers[0].self_attn
        # rotary: the tables of the chunk's absolute positions, the same for every layer
        rotary = rotary_at((seen + index).float(), attn.head_dim) if attn.position == "rotary" else None
        hidden, new_keys, new_values, new_conv = [x], [], [], []
        for i, layer in enumerate(self.encoder.layers):
            def attend(y, i=i, layer=layer):
                out, k_all, v_all = layer.self_attn.step(y, keys[i], values[i], distance, rotary, valid)
                new_keys.append(k_all[:, -self.context:])
                new_values.append(v_all[:, -self.context:])
                return out

            def convolve(y, i=i, layer=layer):
                out, inputs = layer.conv_module.step(y, conv[i])
                new_conv.append(inputs[inputs.shape[0] - conv.shape[1]:])  # the last k - 1 (none for k = 1)
                return out

            x = layer.around(x, attend, convolve)
            hidden.append(x)
        return (torch.stack(hidden), torch.stack(new_keys), torch.stack(new_values), torch.stack(new_conv),
                seen + frames)


def stream_chunks(wave, chunk_frames: int, hop: int = 640, window: int = 880):
    """(samples, frames) for each call of the step function on a whole clip: the chunk's samples and the
    ``window - hop`` after them, zero-padded past the end, and how many of the chunk's frames are audio.
    ``hop`` and ``window``: encoder frame t is computed from samples hop * t .. hop * t + window - 1 (the
    export's JSON gives them; the defaults are BEST-RQ's). The clip's frames are those of a whole-clip
    forward: those whose window is whole."""
    import numpy as np

    wave = np.asarray(wave, dtype=np.float32)
    total = 1 + (len(wave) - window) // hop if len(wave) >= window else 0
    size = hop * chunk_frames + window - hop
    for first in range(0, total, chunk_frames):
        piece = wave[first * hop : first * hop + size]
        yield np.pad(piece, (0, size - len(piece))), min(chunk_frames, total - first)


def export_onnx_stream(loaded: Loaded, out: str | os.PathLike, chunk_ms: float, left_chunks: int,
                       overwrite: bool = False) -> Path:
    """Write ``loaded``'s streaming encoder as an ONNX step function (:class:`StreamStep`) and a ``.json``
    describing its inputs, outputs and initial state; returns the file."""
    out = _onnx_file(out, overwrite)
    if (why := streaming_problem(loaded.module)) is not None:
        raise ValueError(f"{loaded.folder}: cannot stream: {why}")
    if left_chunks is None or left_chunks < 1:
        raise ValueError("the ONNX step export keeps a fixed left context: give left_chunks >= 1 (--left-chunks)")
    module = loaded.module.cpu().eval()
    chunk = chunk_frames(module, chunk_ms)
    step = StreamStep(module, chunk, left_chunks).eval()
    shapes = step.state_shapes()
    example = (0.1 * torch.randn(step.samples, generator=torch.Generator().manual_seed(0)),
               torch.tensor([chunk]), torch.tensor([0]), torch.zeros(shapes["keys"]), torch.zeros(shapes["values"]),
               torch.zeros(shapes["conv"]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            step, example, dynamo=True, opset_version=OPSET, verbose=False,
            input_names=["samples", "frames", "seen", "keys", "values", "conv"],
            output_names=["hidden_states", "next_keys", "next_values", "next_conv", "next_seen"])
    _save(program, out)
    cfg = loaded.config
    out.with_suffix(".json").write_text(json.dumps({
        "kind": "stream step", "chunk_ms": chunk_ms, "chunk_frames": chunk, "left_chunks": left_chunks,
        "samples_per_call": step.samples, "samples_advance": step.hop * chunk, "hop": step.hop,
        "window": step.window,
        "inputs": {"samples": f"({step.samples},) float32", "frames": "(1,) int64", "seen": "(1,) int64",
                   **{name: f"{shape} float32, zeros at the start" for name, shape in shapes.items()}},
        "outputs": {"hidden_states": f"({cfg.encoder.num_layers + 1}, {chunk}, {cfg.encoder.d_model}) float32",
                    "next_keys": "keys", "next_values": "values", "next_conv": "conv", "next_seen": "seen"},
        "state_shapes": {name: list(shape) for name, shape in shapes.items()},
        "sample_rate": module.sample_rate, "objective": cfg.objective, "step": loaded.step,
        "source": str(loaded.folder)}, indent=2))
    return out
