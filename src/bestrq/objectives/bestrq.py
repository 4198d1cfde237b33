"""The BEST-RQ objective: mask, encode, predict the quantizer's codes of masked frames.

    waveforms -> fbank (B, T, F), normalised -> mask (B, T/4) per utterance
    targets = quantizer(stack4(fbank)[mask]) (N, K): clean features, masked frames only
    masked 40 ms frames of the fbank replaced by N(0, 0.1)
    -> encoder (B, T/4, D) -> K linear heads -> cross-entropy on masked frames only

Targets always come from the clean features. The loss is the mean over masked frames and
codebooks; unmasked frames and padding carry none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PretrainConfig
from ..features import FeatureNormalizer, LogMelFbank, normalised_fbank, stack_frames, whole_groups
from ..masking import MaskSpec, preset, span_mask
from ..models.chunking import Chunking, ChunkSpec
from ..models.conformer import ConformerEncoder, EncoderOutput
from ..quantizer import RandomProjectionQuantizer
from .encoders import build_encoder, fbank_features, fbank_frontend


@dataclass(frozen=True)
class Output:
    """One forward pass. ``loss`` has a graph; the metrics are detached scalars."""

    loss: torch.Tensor
    accuracy: torch.Tensor  # top-1 on masked frames, averaged over codebooks
    masked_frames: torch.Tensor  # number of masked target frames (int64)
    frames: torch.Tensor  # number of valid target frames (int64)
    code_usage: torch.Tensor  # fraction of the V codes that occur among the masked targets
    target_entropy: torch.Tensor  # entropy (bits) of the masked targets' code histogram
    code_histogram: torch.Tensor  # (K, V) int64 counts of the masked targets

    def scalars(self) -> dict[str, torch.Tensor]:
        """Per-batch metrics, averaged over batches by the training loop."""
        return {"code_usage": self.code_usage, "target_entropy": self.target_entropy}


def masked_prediction_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and top-1 accuracy of the masked frames' predictions.

    logits (N, K, V) and targets (N, K) int64 for the N masked frames -> (loss, accuracy),
    both means over frames and codebooks.
    """
    if logits.shape[0] == 0:  # nothing masked: a zero loss that still touches the graph
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    accuracy = (logits.argmax(dim=-1) == targets).float().mean()
    return loss, accuracy.detach()


def code_statistics(targets: torch.Tensor, codebook_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) codes -> (fraction of codes used, entropy in bits, (K, V) counts), over codebooks."""
    k = targets.shape[1]
    offsets = torch.arange(k, device=targets.device) * codebook_size
    counts = torch.bincount((targets + offsets).flatten(), minlength=k * codebook_size).view(k, codebook_size)
    p = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    entropy = -(p * torch.log2(p.clamp(min=1e-12))).sum(dim=1)
    return (counts > 0).double().mean(), entropy.mean(), counts


class BestRQ(nn.Module):
    """Features, frozen quantizer, masking, encoder and prediction heads in one module."""

    def __init__(self, features: LogMelFbank, normalizer: FeatureNormalizer,
                 quantizer: RandomProjectionQuantizer, encoder: ConformerEncoder, mask: MaskSpec,
                 noise_std: float = 0.1, stack: int = 4, chunks: ChunkSpec | None = None) -> None:
        super().__init__()
        self.features, self.normalizer = features, normalizer
        self.quantizer, self.encoder = quantizer, encoder
        self.mask_spec, self.noise_std, self.stack = mask, noise_std, stack
        self.chunks = chunks  # streaming: the chunked attention training draws (None: full context)
        k, v = quantizer.num_codebooks, quantizer.codebook_size
        self.heads = nn.Linear(encoder.d_model, k * v)  # K heads of V classes, as one matmul

    baseline_name = "most frequent code"

    def baseline_counts(self, out: Output | None, device: torch.device) -> torch.Tensor:
        """(K, V) code counts of a validation batch's masked targets (zeros for ``None``), summable."""
        if out is None:
            return torch.zeros(self.quantizer.num_codebooks, self.quantizer.codebook_size, dtype=torch.float64,
                               device=device)
        return out.code_histogram.double()

    @staticmethod
    def baseline_accuracy(counts: torch.Tensor) -> float:
        """Always predicting the most frequent code of these very targets: an upper bound of that baseline."""
        return (counts.max(dim=1).values / counts.sum(dim=1).clamp(min=1)).mean().item()

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def input_features(self, waveforms: torch.Tensor, lengths: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        return normalised_fbank(self.features, self.normalizer, waveforms, lengths)

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor, chunking: Chunking | None = None) -> EncoderOutput:
        """Unmasked encoding: hidden states of every layer (for probes and export); ``chunking``: with
        chunked attention, as chunk-by-chunk inference computes it."""
        return self.encoder(*self.input_features(waveforms, lengths), chunking=chunking)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for clips of ``lengths`` samples: whole groups of ``stack`` fbank frames."""
        return torch.div(self.features.output_lengths(lengths), self.stack, rounding_mode="floor")

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor,
                generator: torch.Generator | None = None, step: int | None = None) -> Output:
        """``step`` is part of the objectives' common interface; BEST-RQ does not anneal anything."""
        feats, frame_lengths = self.input_features(waveforms, lengths)
        # the encoder drops a last partial group anyway; cut here, a compiled encoder keeps one graph
        feats = whole_groups(feats, self.stack)  # (B, T, F), T a multiple of stack
        stacked, target_lengths = stack_frames(feats, frame_lengths, self.stack)  # (B, T4, stack*F)
        mask = span_mask(target_lengths, stacked.shape[1], self.mask_spec, generator)  # (B, T4)
        # the masked frames' rows of the flattened batch: found once (the step's one host sync for
        # them), then gathered by index wherever they are read
        rows = mask.flatten().nonzero().squeeze(1)  # (N,)
        # targets from the clean features, for the masked frames only: nothing else reads them
        targets = self.quantizer(stacked.flatten(0, 1).index_select(0, rows))  # (N, K)
        # each masked 40 ms target frame masks its `stack` 10 ms input frames
        input_mask = mask.repeat_interleave(self.stack, dim=1)  # (B, T)
        noise = torch.randn(feats.shape, generator=generator, device=feats.device) * self.noise_std
        feats = torch.where(input_mask[..., None], noise, feats)

        streaming = self.chunks is not None and self.training
        chunking = self.chunks.draw_for_step(generator, feats.shape[0]) if streaming else None
        hidden = self.encoder(feats, frame_lengths, chunking=chunking).last  # (B, T4, D)
        # the heads see masked frames only: (N, K, V) logits instead of (B, T4, K, V)
        masked = hidden.flatten(0, 1).index_select(0, rows)  # (N, D)
        logits = self.heads(masked).unflatten(-1, (self.quantizer.num_codebooks, -1))
        loss, accuracy = masked_prediction_loss(logits, targets)
        usage, entropy, histogram = code_statistics(targets, self.quantizer.codebook_size)
        return Output(loss, accuracy, mask.sum(), target_lengths.sum(), usage, entropy, histogram)


def mask_spec(cfg: PretrainConfig) -> MaskSpec:
    base = preset(cfg.masking.preset, cfg.features.stack)
    return MaskSpec(cfg.masking.mode or base.mode, cfg.masking.prob or base.prob, cfg.masking.span or base.span)


def build_bestrq(cfg: PretrainConfig) -> BestRQ:
    """The model a config describes. Parameters come from the global RNG; buffers from seeds."""
    f, q = cfg.features, cfg.quantizer
    return BestRQ(
        *fbank_features(cfg),
        RandomProjectionQuantizer(f.num_mel_bins * f.stack, q.codebook_size, q.codebook_dim, q.num_codebooks,
                                  q.seed, q.input_layer_norm),
        build_encoder(cfg, fbank_frontend(cfg)), mask_spec(cfg), cfg.masking.noise_std, f.stack,
        ChunkSpec.of(cfg.encoder))
