"""The Python API: ``bestrq.load(path)`` -> a frozen :class:`Model` that turns audio into every layer's hidden states.

    model = bestrq.load("runs/tiny")                      # a run folder (its newest checkpoint)
    feats = model.extract_features(wave, sample_rate=8000)  # 1-D audio at any rate
    feats.hidden_states[-1]                               # (B, T, D), 25 frames per second for BEST-RQ
    model.upstream()(list_of_wavs)["hidden_states"]       # the s3prl upstream contract

Any bestrq folder loads through :func:`bestrq.inference.loading.load_checkpoint`, which training's
``--init-from`` uses too.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.audio import resample
from ..data.loader import collate
from ..models.conformer import EncoderOutput
from ..objectives import min_samples
from .loading import Loaded, load_checkpoint
from .streaming import Streamer, chunk_frames, chunking_of

Audio = torch.Tensor | np.ndarray


class Model(nn.Module):
    """A pre-trained encoder, frozen, from audio to hidden states (front-end output, then every layer)."""

    def __init__(self, loaded: Loaded) -> None:
        super().__init__()
        self.module = loaded.module
        self.config = loaded.config
        self.step = loaded.step
        self.source = loaded.folder

    @property
    def sample_rate(self) -> int:
        return self.module.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def downsample_rate(self) -> int:
        """Input samples per output frame: 640 for BEST-RQ (40 ms), 320 for wav2vec 2.0 (20 ms)."""
        if self.config.objective == "wav2vec2":
            return self.module.feature_extractor.hop
        return self.module.features.frame_shift * self.config.features.stack

    @property
    def num_layers(self) -> int:
        """Hidden states per call: the front-end output and every encoder layer."""
        return self.config.encoder.num_layers + 1

    @torch.no_grad()
    def extract_features(self, waveforms: Audio | Sequence[Audio], lengths: torch.Tensor | Sequence[int] | None = None,
                         sample_rate: int | None = None, chunk_ms: float | None = None,
                         left_chunks: int | None = None) -> EncoderOutput:
        """Every layer's hidden states for one clip or a batch.

        ``waveforms``: a 1-D clip, a list of 1-D clips of any lengths, or a (B, S) batch
        with ``lengths`` (valid samples per row; all of S without). ``sample_rate``: the
        audio's rate if it is not the model's (it is resampled). Returns an EncoderOutput:
        ``hidden_states`` ((B, T, D) each), ``lengths`` (B,) and ``padding_mask``. ``chunk_ms`` (and
        ``left_chunks``): with chunked attention, the states :meth:`streamer` gives chunk by chunk.
        """
        if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral)
                                        or sample_rate <= 0):
            raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
        clips = [c.numpy() for c in _clips(waveforms, lengths)]
        for i, c in enumerate(clips):
            if not np.isfinite(c).all():
                raise ValueError(f"clip {i} holds NaN or infinite samples")
        if sample_rate is not None and sample_rate != self.sample_rate:
            clips = [resample(c, int(sample_rate), self.sample_rate) for c in clips]
        batch, batch_lengths = collate(clips)
        frames = self.output_lengths(batch_lengths)
        if (frames < 1).any():
            i = int((frames < 1).nonzero()[0])
            shape = np.shape(waveforms) if isinstance(waveforms, (torch.Tensor, np.ndarray)) else None
            hint = f" (a 2-D input is a batch (B, S); this one is {tuple(shape)})" if shape and len(shape) == 2 else ""
            raise ValueError(
                f"clip {i} has {int(batch_lengths[i])} samples at {self.sample_rate} Hz, too short for one frame: "
                f"the encoder needs at least {self.min_samples} ({1000 * self.min_samples / self.sample_rate:g} ms)"
                f"{hint}")
        chunking = chunking_of(self.module, chunk_ms, left_chunks)
        return self.module.encode(batch.to(self.device), batch_lengths.to(self.device), chunking)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames for clips of ``lengths`` samples at the model's rate."""
        return self.module.output_lengths(lengths)

    @property
    def min_samples(self) -> int:
        """The shortest clip, in samples at the model's rate, that gives one output frame."""
        return min_samples(self.module)

    def forward(self, waveforms, lengths=None, sample_rate=None) -> EncoderOutput:
        return self.extract_features(waveforms, lengths, sample_rate)

    def streamer(self, chunk_ms: float = 320, left_chunks: int | None = None) -> Streamer:
        """Chunk-by-chunk inference (inference/streaming.py): ``push(piece)`` and ``flush()`` give every layer's
        states (num_layers + 1, T_new, D) of the frames completed since the last call, as
        ``extract_features(..., chunk_ms=chunk_ms, left_chunks=left_chunks)`` gives them for the whole clip.
        ``chunk_ms``: a multiple of the 40 ms frame; ``left_chunks``: chunks of left context (None: all)."""
        streamer = Streamer(self.module, chunk_frames(self.module, chunk_ms), left_chunks)
        if not self.config.encoder.streaming:
            warnings.warn(f"{self.source}: trained with full context only (encoder.streaming false): chunked, its "
                          "states differ from what it learned; train a streaming preset for streaming use",
                          stacklevel=2)
        return streamer

    def upstream(self) -> S3prlUpstream:
        return S3prlUpstream(self)


def _clips(waveforms: Audio | Sequence[Audio], lengths) -> list[torch.Tensor]:
    def as_tensor(x: Audio) -> torch.Tensor:
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise TypeError(f"expected audio as a tensor or numpy array, got {type(x).__name__} "
                            "(read a file first, e.g. with soundfile.read)")
        t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.float()
        if t.dim() != 1:
            raise ValueError(f"expected 1-D audio, got shape {tuple(t.shape)} (down-mix multi-channel audio first)")
        return t.cpu()

    if isinstance(waveforms, (torch.Tensor, np.ndarray)) and np.ndim(waveforms) == 2:
        rows = torch.as_tensor(np.asarray(waveforms, dtype=np.float32)) if isinstance(waveforms, np.ndarray) \
            else waveforms.float().cpu()
        n = [rows.shape[1]] * rows.shape[0] if lengths is None else [int(v) for v in lengths]
        if len(n) != rows.shape[0] or any(not 0 < v <= rows.shape[1] for v in n):
            raise ValueError(f"lengths {n} do not fit a batch of shape {tuple(rows.shape)}")
        return [rows[i, :v] for i, v in enumerate(n)]
    if isinstance(waveforms, (torch.Tensor, np.ndarray)):
        return [as_tensor(waveforms)]
    clips = [as_tensor(w) for w in waveforms]
    if not clips:
        raise ValueError("no audio given")
    return clips


class S3prlUpstream(nn.Module):
    """s3prl's upstream contract: ``forward(wavs)`` with a list of 1-D 16 kHz tensors ->
    ``{"hidden_states": [(B, T, D), ...], "last_hidden_state": (B, T, D)}``, and
    ``get_downsample_rates(key)`` -> input samples per output frame."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return self.model.downsample_rate

    def forward(self, wavs: list[torch.Tensor]) -> dict[str, Any]:
        out = self.model.extract_features(list(wavs))
        hidden = list(out.hidden_states)
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Model:
    """A run folder, a checkpoint folder or an exported folder of ours -> a frozen :class:`Model` on ``device``."""
    return Model(load_checkpoint(path, device))
