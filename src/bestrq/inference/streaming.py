"""Chunk-by-chunk inference: audio in pieces of any size, every layer's hidden states out as
each chunk completes, equal to a whole-utterance forward with the same chunked attention
(:class:`~bestrq.models.chunking.Chunking`).

What it keeps between calls, and never recomputes:

- the samples not yet a whole 25 ms fbank frame (up to 399), and the fbank frames not yet a
  whole group of 4 (one 40 ms encoder frame);
- the encoder frames not yet a whole chunk;
- per layer, the attention keys and values of the left context (``left_chunks`` chunks, or
  all the past) and the last ``conv_kernel - 1`` inputs of the depthwise convolution.

Each fbank frame depends only on its own samples, the stack front-end and global feature
normalisation only on their frame (as does each frame of wav2vec 2.0's waveform encoder
with per-frame layer norms), and the depthwise convolution only looks left, so a chunk's
outputs depend on nothing after it. Models whose outputs do (per-utterance normalisation,
the conv2d front-end, the Transformer encoder, a group-normed waveform encoder) are refused
with the reason.

    streamer = bestrq.load("runs/tiny_streaming").streamer(chunk_ms=320, left_chunks=4)
    for piece in microphone:              # 1-D float arrays at the model's rate
        states = streamer.push(piece)     # (num_layers + 1, T_new, D); T_new may be 0
    states = streamer.flush()             # the last, partial chunk; the streamer is then reset
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.chunking import Chunking
from ..models.conformer import ConformerEncoder, ConformerLayer, rotary_tables
from ..models.frontend import StackedFrames
from ..models.wav2vec2 import ConvFeatureEncoder


def streaming_problem(module) -> str | None:
    """Why ``module`` cannot run chunk by chunk, or None."""
    encoder = getattr(module, "encoder", None)
    if not isinstance(encoder, ConformerEncoder):
        return "only Conformer encoders stream (the transformer's position convolution looks ahead)"
    extractor = getattr(module, "feature_extractor", None)  # wav2vec 2.0's
    if isinstance(extractor, ConvFeatureEncoder):
        if any(isinstance(m, torch.nn.GroupNorm) for m in extractor.modules()):
            return "its waveform encoder's group norm normalises each channel over the whole clip " \
                   "(train with wav2vec2.conv_norm=layer)"
        return None
    if extractor is None and not isinstance(encoder.frontend, StackedFrames):
        return "its conv2d front-end looks 3 frames ahead; streaming needs the stack front-end"
    normalizer = extractor.normalizer if extractor is not None else module.normalizer
    mode = normalizer.mode
    if mode == "utterance":
        return "it normalises features by each utterance's statistics, which need the whole clip " \
               "(train with features.normalization=global)"
    if mode == "global" and float(normalizer.count) == 0:
        return "its global feature statistics are empty"
    return None


def frame_geometry(module) -> tuple[int, int]:
    """(hop, window) in samples: encoder frame t is computed from samples hop * t .. hop * t + window - 1."""
    extractor = getattr(module, "feature_extractor", None)
    if isinstance(extractor, ConvFeatureEncoder):  # the receptive field of the strided convolutions
        hop, window = 1, 1
        for conv in (m for m in extractor.modules() if isinstance(m, torch.nn.Conv1d)):
            window += (conv.kernel_size[0] - 1) * hop
            hop *= conv.stride[0]
        return hop, window
    fbank, stack = (extractor.fbank, extractor.stack) if extractor is not None else (module.features, module.stack)
    return fbank.frame_shift * stack, fbank.frame_length + fbank.frame_shift * (stack - 1)


def chunk_frames(module, chunk_ms: float, what: str = "chunk_ms") -> int:
    """Encoder frames in a chunk of ``chunk_ms``; ValueError naming ``what`` unless a positive whole number."""
    frame_ms = 1000 * frame_geometry(module)[0] / module.sample_rate
    frames = chunk_ms / frame_ms
    if isinstance(chunk_ms, bool) or not frames >= 1 or abs(frames - round(frames)) > 1e-9:
        raise ValueError(f"{what} must be a positive multiple of the {frame_ms:g} ms frame, got {chunk_ms!r}")
    return round(frames)


def chunking_of(module, chunk_ms: float | None, left_chunks: int | None, names: tuple[str, str] = (
        "chunk_ms", "left_chunks"), model: str = "this model") -> Chunking | None:
    """The chunked attention under which a whole-clip forward gives the states a :class:`Streamer` with
    ``chunk_ms`` and ``left_chunks`` gives; None (full context) without ``chunk_ms``. A ValueError names
    the argument (``names``: how the caller spells them) and says why ``model`` cannot stream."""
    what, left_what = names
    if chunk_ms is None:
        if left_chunks is not None:  # not full context, silently
            raise ValueError(f"{left_what} limits the left context of chunks: give {what} too")
        return None
    if (why := streaming_problem(module)) is not None:
        raise ValueError(f"{what}: {model} cannot stream: {why}")
    return Chunking(chunk_frames(module, chunk_ms, what), left_chunks)


class Streamer:
    """One stream's state; see the module's docstring. Not thread-safe: one streamer per stream."""

    def __init__(self, module, chunk_frames: int, left_chunks: int | None = None) -> None:
        if (why := streaming_problem(module)) is not None:
            raise ValueError(f"this model cannot stream: {why}")
        if chunk_frames < 1 or (left_chunks is not None and left_chunks < 0):
            raise ValueError(f"chunk_frames must be >= 1 and left_chunks >= 0 (or None), got {chunk_frames}, "
                             f"{left_chunks}")
        self.module, self.encoder = module, module.encoder
        self.chunk_frames, self.left_chunks = chunk_frames, left_chunks
        self.context = None if left_chunks is None else left_chunks * chunk_frames  # cached frames per layer
        self.hop, self.window = frame_geometry(module)  # an encoder frame: samples hop * t .. hop * t + window
        self.device = next(module.parameters()).device
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new utterance."""
        d = self.encoder.d_model
        self._samples = np.zeros(0, dtype=np.float32)  # from the next encoder frame's first sample on
        self._inputs = torch.zeros(0, d, device=self.device)  # front-end outputs not yet a whole chunk
        self._position = 0  # encoder frames done
        attn = self.encoder.layers[0].self_attn
        self._keys = [torch.zeros(attn.num_heads, 0, attn.head_dim, device=self.device) for _ in self.encoder.layers]
        self._values = [torch.zeros(attn.num_heads, 0, attn.head_dim, device=self.device) for _ in self.encoder.layers]
        k = self.encoder.layers[0].conv_module.depthwise_conv.weight.shape[-1]
        self._conv = [torch.zeros(k - 1, d, device=self.device) for _ in self.encoder.layers]

    @torch.no_grad()
    def push(self, piece) -> torch.Tensor:
        """Add samples (1-D, at the model's rate, any number, down to one); the hidden states of the frames
        completed since the last call: (num_layers + 1, T_new, D)."""
        piece = np.asarray(piece.detach().cpu() if isinstance(piece, torch.Tensor) else piece, dtype=np.float32)
        if piece.ndim != 1:
            raise ValueError(f"expected 1-D audio, got shape {piece.shape}")
        if not np.isfinite(piece).all():
            raise ValueError("the piece holds NaN or infinite samples")
        self._samples = np.concatenate([self._samples, piece]) if self._samples.size else piece.copy()
        self._add_frames()
        return self._run(final=False)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """The end of the utterance: the states of the last, partial chunk (samples short of a whole
        40 ms frame are dropped, as a whole-utterance forward drops them); then the streamer is reset."""
        out = self._run(final=True)
        self.reset()
        return out

    def _add_frames(self) -> None:
        """The encoder inputs of every frame whose window of samples is complete, by the model's own
        feature path on just those samples (each frame depends on its window alone)."""
        n = len(self._samples)
        if n < self.window:
            return
        frames = 1 + (n - self.window) // self.hop
        wave = torch.from_numpy(self._samples[: (frames - 1) * self.hop + self.window])[None].to(self.device)
        length = torch.tensor([wave.shape[1]], device=self.device)
        if hasattr(self.module, "feature_extractor"):  # wav2vec 2.0: waveform encoder or fbank, then projection
            feats, _ = self.module.feature_extractor(wave, length)
            x = self.module.feature_projection(feats)[0]
        else:  # BEST-RQ: fbank, normalisation, stacked frames
            feats, frame_lengths = self.module.features(wave, length)
            feats = self.module.normalizer(feats, frame_lengths)
            x, _ = self.encoder.frontend(feats, frame_lengths)
        if x.shape[1] != frames:
            raise RuntimeError(f"expected {frames} frames from {wave.shape[1]} samples, got {x.shape[1]}")
        self._inputs = torch.cat([self._inputs, x[0]])
        self._samples = self._samples[frames * self.hop:]

    def _run(self, final: bool) -> torch.Tensor:
        outs = []
        while len(self._inputs) >= self.chunk_frames or (final and len(self._inputs)):
            n = min(self.chunk_frames, len(self._inputs))
            outs.append(self._chunk(self._inputs[:n]))
            self._inputs = self._inputs[n:]
        if not outs:
            return torch.zeros(len(self.encoder.layers) + 1, 0, self.encoder.d_model, device=self.device)
        return torch.cat(outs, dim=1)

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) front-end outputs of one chunk -> (num_layers + 1, n, D)."""
        hidden = [x]
        for i, layer in enumerate(self.encoder.layers):
            x = self._layer(i, layer, x)
            hidden.append(x)
        self._position += x.shape[0]
        return torch.stack(hidden)

    def _layer(self, i: int, layer: ConformerLayer, x: torch.Tensor) -> torch.Tensor:
        """One layer on one chunk's frames x (n, D), carrying its attention's keys and values and its
        convolution's last inputs to the next chunk."""
        attn, n = layer.self_attn, x.shape[0]

        def attend(y: torch.Tensor) -> torch.Tensor:
            m = self._keys[i].shape[1]
            distance = torch.arange(m + n, device=y.device)[None, :] - m - torch.arange(n, device=y.device)[:, None]
            rotary = (rotary_tables(n, attn.head_dim, y.device, start=self._position)
                      if attn.position == "rotary" else None)
            out, keys, values = attn.step(y, self._keys[i], self._values[i], distance, rotary)
            first = 0 if self.context is None else max(0, keys.shape[1] - self.context)
            self._keys[i], self._values[i] = keys[:, first:], values[:, first:]
            return out

        def convolve(y: torch.Tensor) -> torch.Tensor:
            out, inputs = layer.conv_module.step(y, self._conv[i])
            self._conv[i] = inputs[inputs.shape[0] - self._conv[i].shape[0]:]  # the last k - 1
            return out

        return layer.around(x, attend, convolve)
