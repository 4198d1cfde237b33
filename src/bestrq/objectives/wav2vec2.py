"""The wav2vec 2.0 objective (Baevski et al., 2020): contrast masked context vectors with quantized targets.

    waveforms -> conv encoder (B, T, C), 20 ms frames -> LayerNorm -> Linear (B, T, D)
                 (or, with ``feature_encoder: fbank``, fixed log-mel frames stacked to 20 ms)
    mask (B, T): spans of 10 frames, ~49% of frames; masked frames replaced by a learned vector
    -> encoder (Transformer or Conformer) -> project_hid -> context c (N, final_dim) at the N masked frames
    targets: the clean normalised conv features of the same frames -> Gumbel product quantizer
             (G codebooks x V entries, straight-through hard choice) -> project_q -> q (N, final_dim)
    loss = CE over [q_t, 100 distractors] of cos(c_t, .) / kappa            (contrastive)
         + alpha * (G V - perplexity) / (G V)                              (diversity)
         + beta * mean(features^2)                                         (feature penalty, conv only)

Distractors for a masked frame are the quantized vectors of other masked frames of the same
utterance, drawn uniformly with replacement: never the frame itself, never padding, never
another utterance. A distractor whose codes equal the positive's is ignored (-inf logit),
as in fairseq and transformers. The diversity loss uses the soft code distribution
(softmax of the quantizer's logits, averaged over the masked frames); ``code_perplexity``
reports the hard one. All three losses are means over masked frames.

Shapes: B batch, S samples, T frames, C conv channels, D width, N masked frames, G groups, V entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PretrainConfig
from ..features import padding_mask
from ..masking import MaskSpec, span_mask
from ..models.chunking import Chunking, ChunkSpec
from ..models.conformer import EncoderOutput
from ..models.dropout import Dropout
from ..models.wav2vec2 import ConvFeatureEncoder, FbankFeatureEncoder, FeatureProjection
from ..precision import exact_fp32
from .encoders import build_encoder, fbank_features


@dataclass(frozen=True)
class Output:
    """One forward pass. ``loss`` has a graph; everything else is a detached scalar."""

    loss: torch.Tensor
    accuracy: torch.Tensor  # the positive scores highest among [positive, distractors]
    masked_frames: torch.Tensor  # int64
    frames: torch.Tensor  # valid frames (int64)
    contrastive_loss: torch.Tensor
    diversity_loss: torch.Tensor
    feature_penalty: torch.Tensor
    prob_perplexity: torch.Tensor  # of the soft code distribution, summed over groups (max G V)
    code_perplexity: torch.Tensor  # of the hard codes, summed over groups
    temperature: torch.Tensor  # Gumbel temperature of this step
    chance_accuracy: torch.Tensor  # a random pick's accuracy among the distractors kept (see contrastive_loss)

    def scalars(self) -> dict[str, torch.Tensor]:
        """Per-batch metrics, averaged over batches by the training loop."""
        return {name: getattr(self, name) for name in (
            "contrastive_loss", "diversity_loss", "feature_penalty", "prob_perplexity", "code_perplexity",
            "temperature", "chance_accuracy")}


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """(N, G, V) code distributions -> sum over groups of exp(entropy of the mean distribution)."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    marginal = probs.float().mean(dim=0)  # (G, V)
    return torch.exp(-torch.xlogy(marginal, marginal).sum(dim=-1)).sum()


def diversity_loss(prob_perplexity: torch.Tensor, num_groups: int, num_entries: int) -> torch.Tensor:
    """(G V - perplexity) / (G V): 0 when every entry of every codebook is used equally."""
    total = num_groups * num_entries
    return (total - prob_perplexity) / total


@dataclass(frozen=True)
class Quantized:
    vectors: torch.Tensor  # (N, codevector_dim), straight-through in training
    codes: torch.Tensor  # (N, G) int64: the chosen entries
    prob_perplexity: torch.Tensor  # differentiable
    code_perplexity: torch.Tensor  # detached


class GumbelQuantizer(nn.Module):
    """Product quantizer with a Gumbel-softmax choice per group (transformers' parameter names).

    Training: hard one-hot of softmax((logits + Gumbel noise) / temperature), with the soft
    probabilities' gradient (straight-through). Evaluation: the argmax, no noise.
    """

    def __init__(self, input_dim: int, num_groups: int = 2, num_entries: int = 320,
                 codevector_dim: int = 256) -> None:
        super().__init__()
        if codevector_dim % num_groups:
            raise ValueError(f"codevector_dim {codevector_dim} is not divisible by {num_groups} groups")
        self.num_groups, self.num_entries = num_groups, num_entries
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_entries, codevector_dim // num_groups))
        self.weight_proj = nn.Linear(input_dim, num_groups * num_entries)
        nn.init.uniform_(self.codevectors)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, G, V) float32."""
        return self.weight_proj(x).float().view(x.shape[0], self.num_groups, self.num_entries)

    def forward(self, x: torch.Tensor, temperature: float = 2.0,
                generator: torch.Generator | None = None) -> Quantized:
        logits = self.logits(x)  # (N, G, V)
        soft_dist = logits.softmax(dim=-1)
        hard_dist = F.one_hot(logits.argmax(dim=-1), self.num_entries).float()
        if self.training:
            gumbel = -torch.empty_like(logits).exponential_(generator=generator).log()
            soft = ((logits + gumbel) / temperature).softmax(dim=-1)
            codes = soft.argmax(dim=-1)
            choice = F.one_hot(codes, self.num_entries).to(soft.dtype) - soft.detach() + soft
        else:
            codes, choice = logits.argmax(dim=-1), hard_dist
        table = self.codevectors.view(self.num_groups, self.num_entries, -1)  # (G, V, d/G)
        vectors = torch.einsum("ngv,gvd->ngd", choice.to(table.dtype), table).flatten(1)  # (N, G d/G)
        return Quantized(vectors, codes, perplexity(soft_dist), perplexity(hard_dist).detach())


def sample_negatives(mask: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None,
                     rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distractor positions for every masked frame, from its own utterance's other masked frames.

    mask (B, T) bool -> (utt (N,), pos (N,), neg (N, num_negatives)), in the row-major order
    of ``x[mask]``: utterance of each masked frame, its rank among that utterance's masked
    frames, and the ranks of its distractors. ``neg == pos`` only where the utterance has a
    single masked frame (no distractor exists); the loss ignores those.
    """
    counts = mask.sum(dim=1)  # (B,)
    if rows is None:  # the masked frames' rows of the flattened (B, T) mask, if not given
        rows = mask.flatten().nonzero().squeeze(1)
    utt = torch.div(rows, mask.shape[1], rounding_mode="floor")  # (N,)
    pos = (mask.long().cumsum(dim=1) - 1).flatten().index_select(0, rows)  # (N,)
    others = (counts[utt] - 1).clamp(min=0)  # choices that are not the frame itself
    u = torch.rand(utt.shape[0], num_negatives, generator=generator, device=mask.device)
    neg = (u * others[:, None]).floor().long()  # uniform on 0 .. others-1
    neg = neg + (neg >= pos[:, None]).long() * (others[:, None] > 0).long()  # skip the frame itself
    return utt, pos, neg


def contrastive_logits(context: torch.Tensor, quantized: torch.Tensor, utt: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cosine similarities (N, 1 + n): the positive first, then the distractors.

    Per utterance, every masked context vector is compared with every masked target at once,
    (B, M, M) with M the most masked frames of an utterance, and the n distractors are
    gathered from that: no (N, n, final_dim) copy of the targets.

    Exact fp32 whatever the autocast (or TF32), as fairseq computes them: a bf16 product errs by up to ~0.01
    in a cosine, 0.1 in a logit at kappa 0.1.
    """
    exact = torch.promote_types(context.dtype, torch.float32)
    with exact_fp32(context.device.type):
        c = F.normalize(context.to(exact), dim=-1, eps=1e-8)
        q = F.normalize(quantized.to(exact), dim=-1, eps=1e-8)
        m = int(pos.max().item()) + 1 if pos.numel() else 0
        padded_c = c.new_zeros(batch_size, m, c.shape[1]).index_put((utt, pos), c)
        padded_q = q.new_zeros(batch_size, m, q.shape[1]).index_put((utt, pos), q)
        similarity = padded_c @ padded_q.transpose(1, 2)  # (B, M, M)
        positive = (c * q).sum(dim=-1, keepdim=True)
        negative = similarity[utt[:, None], pos[:, None], neg]  # (N, n)
        return torch.cat([positive, negative], dim=1)


def contrastive_loss(context: torch.Tensor, targets: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor,
                     num_negatives: int, kappa: float, generator: torch.Generator | None = None,
                     rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of picking each masked frame's target among its distractors, accuracy and chance.

    context, targets (N, final) and codes (N, G) of the N masked frames, in ``x[mask]`` order.
    A distractor with the positive's codes is indistinguishable from it and is ignored; so is
    every distractor of an utterance's only masked frame (its loss is 0). ``chance`` is the
    accuracy of scores that know nothing of the targets, 1 / (1 + distinct distractors kept),
    averaged over frames: 1/101 only when every frame has 100 distinct ones. Distractors are
    drawn with replacement from the utterance's other masked frames, so a short clip has few
    distinct ones (a 2 s clip masks about 50 frames) and its chance is far higher. ``rows``:
    ``mask.flatten().nonzero()``, if the caller has it.
    """
    if context.shape[0] == 0:  # nothing masked: a zero loss that still touches the graph
        zero = context.sum() * 0.0
        return zero, zero.detach(), zero.detach()
    utt, pos, neg = sample_negatives(mask, num_negatives, generator, rows)
    logits = contrastive_logits(context, targets, utt, pos, neg, mask.shape[0]).float() / kappa
    counts = mask.sum(dim=1)
    drawn = (counts.cumsum(dim=0) - counts)[utt][:, None] + neg  # each distractor's row in x[mask]
    same = (codes[drawn] == codes[:, None, :]).all(dim=-1) | (neg == pos[:, None])
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)
    loss = F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))
    # distractors are drawn with replacement: a repeated one scores as its first draw does
    kept = neg.masked_fill(same, -1).sort(dim=1).values
    distinct = (kept[:, :1] >= 0).sum(dim=1) + ((kept[:, 1:] != kept[:, :-1]) & (kept[:, 1:] >= 0)).sum(dim=1)
    chance = (1.0 / (1 + distinct.float())).mean()
    return loss, (logits.argmax(dim=-1) == 0).float().mean().detach(), chance


class Wav2Vec2(nn.Module):
    """Waveform encoder, masking, context encoder, Gumbel quantizer and projections in one module."""

    def __init__(self, feature_extractor: ConvFeatureEncoder | FbankFeatureEncoder, encoder: nn.Module,
                 quantizer: GumbelQuantizer, mask: MaskSpec, *, final_dim: int = 256, num_negatives: int = 100, logit_temperature: float = 0.1,
                 diversity_weight: float = 0.1, feature_penalty: float = 10.0,
                 temperature: tuple[float, float, float] = (2.0, 0.5, 0.999995), dropout_input: float = 0.1,
                 dropout_features: float = 0.1, sample_rate: int = 16000, chunks: ChunkSpec | None = None) -> None:
        super().__init__()
        d = encoder.d_model
        self.feature_extractor = feature_extractor
        self.feature_projection = FeatureProjection(feature_extractor.output_dim, d, dropout_input)
        self.masked_spec_embed = nn.Parameter(torch.empty(d).uniform_())
        self.encoder = encoder
        self.quantizer = quantizer
        self.dropout_features = Dropout(dropout_features)
        self.project_hid = nn.Linear(d, final_dim)
        self.project_q = nn.Linear(quantizer.codevectors.shape[-1] * quantizer.num_groups, final_dim)
        self.mask_spec, self.num_negatives = mask, num_negatives
        self.logit_temperature, self.diversity_weight = logit_temperature, diversity_weight
        self.feature_penalty_weight = feature_penalty
        self.temperature_schedule = tuple(temperature)
        self.sample_rate = sample_rate
        self.learned_features = any(True for _ in feature_extractor.parameters())
        self.chunks = chunks  # streaming: the chunked attention training draws (None: full context)

    baseline_name = "chance"

    def baseline_counts(self, out: Output | None, device: torch.device) -> torch.Tensor:
        """(chance x masked frames, masked frames) of a validation batch (zeros for ``None``), summable."""
        if out is None:
            return torch.zeros(2, dtype=torch.float64, device=device)
        m = out.masked_frames.double()
        return torch.stack([out.chance_accuracy.double() * m, m])

    @staticmethod
    def baseline_accuracy(counts: torch.Tensor) -> float:
        """A random pick among each masked frame's positive and the distractors it keeps,
        weighted by masked frames as the accuracy is: 1 / (1 + num_negatives) on long clips."""
        return (counts[0] / counts[1].clamp(min=1)).item()

    def temperature(self, step: int | None) -> float:
        start, end, decay = self.temperature_schedule
        return max(start * decay ** (step or 0), end)

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor, chunking: Chunking | None = None) -> EncoderOutput:
        """Unmasked encoding: hidden states of every layer (for probes and export); ``chunking``: with
        chunked attention (a streaming encoder)."""
        feats, frame_lengths = self.feature_extractor(waveforms, lengths)
        return self.encoder(self.feature_projection(feats)[0], frame_lengths, chunking=chunking)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for clips of ``lengths`` samples."""
        return self.feature_extractor.output_lengths(lengths)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None,
                step: int | None = None) -> Output:
        feats, frame_lengths = self.feature_extractor(waveforms, lengths)  # (B, T, C)
        t = feats.shape[1]
        valid = (~padding_mask(frame_lengths, t)).float()
        if self.learned_features:  # the mean over valid frames; 0 if there is none (no host sync)
            penalty = (feats.float().square().mean(dim=-1) * valid).sum() / valid.sum().clamp(min=1)
        else:  # fixed (fbank) features that a penalty cannot move
            penalty = feats.sum() * 0.0
        x, normed = self.feature_projection(feats)  # (B, T, D), (B, T, C)

        mask = span_mask(frame_lengths, t, self.mask_spec, generator)  # (B, T)
        x = torch.where(mask[..., None], self.masked_spec_embed.to(x.dtype), x)
        streaming = self.chunks is not None and self.training
        chunking = self.chunks.draw_for_step(generator, x.shape[0]) if streaming else None
        hidden = self.encoder(x, frame_lengths, chunking=chunking).last  # (B, T, D)
        rows = mask.flatten().nonzero().squeeze(1)  # the masked frames, found once: (N,)
        context = self.project_hid(hidden.flatten(0, 1).index_select(0, rows))  # (N, final)

        temperature = self.temperature(step)
        quantized = self.quantizer(self.dropout_features(normed.flatten(0, 1).index_select(0, rows)), temperature,
                                   generator)
        targets = self.project_q(quantized.vectors.to(context.dtype))  # (N, final)

        contrastive, accuracy, chance = contrastive_loss(context, targets, quantized.codes, mask,
                                                         self.num_negatives, self.logit_temperature, generator,
                                                         rows=rows)
        diversity = diversity_loss(quantized.prob_perplexity, self.quantizer.num_groups, self.quantizer.num_entries)
        loss = contrastive + self.diversity_weight * diversity + self.feature_penalty_weight * penalty
        return Output(loss, accuracy, mask.sum(), frame_lengths.sum(), contrastive.detach(), diversity.detach(),
                      penalty.detach(), quantized.prob_perplexity.detach(), quantized.code_perplexity,
                      loss.new_full((), temperature), chance)  # a fill, not a copy from the host


def mask_spec(cfg: PretrainConfig) -> MaskSpec:
    """fairseq's (mask_prob, mask_span): mask_prob * T / span span starts, i.e. prob/span per frame."""
    w = cfg.wav2vec2
    return MaskSpec("independent", w.mask_prob / w.mask_span, w.mask_span)


def build_wav2vec2(cfg: PretrainConfig) -> Wav2Vec2:
    """The model a config describes. Parameters come from the global RNG."""
    w = cfg.wav2vec2
    if w.feature_encoder == "fbank":
        features = FbankFeatureEncoder(*fbank_features(cfg), w.fbank_stack)
    else:
        layers = tuple(zip(w.conv_channels, w.conv_kernels, w.conv_strides))
        features = ConvFeatureEncoder(layers, w.conv_norm, w.conv_bias, w.feature_grad_mult)
    return Wav2Vec2(
        features, build_encoder(cfg),
        GumbelQuantizer(features.output_dim, w.num_groups, w.num_entries, w.codevector_dim),
        mask_spec(cfg), final_dim=w.final_dim, num_negatives=w.num_negatives,
        logit_temperature=w.logit_temperature, diversity_weight=w.diversity_weight,
        feature_penalty=w.feature_penalty, temperature=tuple(w.temperature), dropout_input=w.dropout_input,
        dropout_features=w.dropout_features, chunks=ChunkSpec.of(cfg.encoder))
