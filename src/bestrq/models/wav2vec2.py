"""wav2vec 2.0's networks: the convolutional waveform encoder and the Transformer context network.

    waveforms (B, S) -> 7 strided convolutions (512 channels, 400-sample window, 320-sample
    hop = 20 ms at 16 kHz) -> (B, T, C) features -> LayerNorm + Linear -> (B, T, D)
    -> convolutional relative position embedding -> LayerNorm -> post-LN Transformer layers

``FbankFeatureEncoder`` can stand in for the conv encoder: BEST-RQ's fixed log-mel frames,
stacked to 20 ms (``wav2vec2.feature_encoder=fbank``).

Parameter names follow Hugging Face transformers' ``Wav2Vec2Model`` (``conv_layers.0.conv``,
``pos_conv_embed.conv``, ``layers.0.attention.q_proj``, ...), so weights map one to one and
the parity test compares the two networks on the same weights.

One deliberate difference: the first convolution's GroupNorm (the BASE model's ``group``
norm) normalises each channel over the *valid* frames of each utterance. A plain GroupNorm
also counts the padding, so a clip's features change with the batch it is padded into
(which is why transformers does not pass an attention mask to that model). Here an
utterance gets the same output alone or padded in a batch, for both norms.

Shapes: B batch, S samples, T frames, C conv channels, D model width; lengths (B,) int64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..features import FeatureNormalizer, LogMelFbank, normalised_fbank, padding_mask, stack_frames
from ..precision import autocast_dtype, exact_fp32
from .conformer import EncoderOutput, FeedForward, Packing, compiling
from .dropout import Dropout, attention

CONV_NORMS = ("group", "layer")
FEATURE_ENCODERS = ("conv", "fbank")
# the BASE/LARGE waveform encoder: (channels, kernel, stride) per layer, 20 ms frames at 16 kHz
BASE_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


def _conv_length(lengths: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Frames a convolution without padding keeps: windows of valid samples only."""
    return (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)


def conv_output_lengths(lengths: torch.Tensor, layers: tuple[tuple[int, int, int], ...]) -> torch.Tensor:
    """Frames each utterance keeps after every convolution."""
    for _, kernel, stride in layers:
        lengths = _conv_length(lengths, kernel, stride)
    return lengths


class _GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def grad_multiply(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; gradients scaled by ``scale`` (wav2vec 2.0 uses 0.1 for the conv encoder)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _GradMultiply.apply(x, scale)


class ConvLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, norm: str | None, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        # He init (as fairseq and transformers): with PyTorch's default, each unnormalised layer shrinks
        # the signal ~5x, the features reach the LayerNorm at ~1e-4 and every target looks the same
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm = norm
        if norm == "group":  # one group per channel: each channel normalised over time
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":  # each frame normalised over channels
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T_in) -> (B, C_out, T); ``lengths`` are the output's valid frames."""
        if self.norm == "group" and self.conv.in_channels == 1:
            return F.gelu(self._waveform_group_norm(x[:, 0], lengths))
        x = self.conv(x)  # (B, C, T)
        if self.norm == "group":
            x = _masked_channel_norm(x, lengths, self.layer_norm)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)

    def _waveform_group_norm(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """conv -> per-channel norm over valid frames, as one GEMM on the waveform's frames.

        With window vectors f_t (B, T, k), the conv gives w_c . f_t + b_c, so channel c's
        mean over valid frames is w_c . mu + b_c and its variance w_c^T Sigma w_c, with mu
        and Sigma (k x k) the frames' mean and covariance. Normalising is then a per-utterance
        scaling of the weights: no pass over the (B, C, T) output but the product itself,
        which at 3200 frames per second is the largest tensor of the model.

        The forward's statistics and product are exact fp32 whatever the autocast (or TF32), and
        the result is handed on in the autocast precision (their backward runs on the saved fp32
        tensors, in TF32 where ``train.tf32`` allows it on CUDA). For the high-pass filters a waveform
        encoder learns, w^T Sigma w is a small difference of large terms, which bf16 turns into
        channels scaled several times off, or NaN; and the product itself subtracts neighbouring
        samples, so frames rounded to bf16 (8-bit mantissa) before it leave mostly rounding noise
        in a channel whose output is small against its input: a 4th-order difference on smooth
        noise came out 1.24x its fp32 scale on one CPU, several times its own norm off on another
        signal (tests/test_wav2vec2.py). At 10 taps per output the fp32 product is cheap
        (docs/implementation.md gives its cost).
        """
        c, _, k = self.conv.weight.shape
        frames = wave.unfold(1, k, self.conv.stride[0])  # (B, T, k), a view
        exact = torch.promote_types(frames.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
        handed_on = autocast_dtype(wave.device.type, frames.dtype)  # read before exact_fp32 turns autocast off
        with exact_fp32(wave.device.type):
            f32 = frames.to(exact)
            valid = (~padding_mask(lengths, f32.shape[1])).to(exact)[..., None]  # (B, T, 1)
            count = valid.sum(1).clamp(min=1)  # (B, 1)
            mu = (f32 * valid).sum(1) / count  # (B, k)
            centered = (f32 - mu[:, None]) * valid
            sigma = centered.transpose(1, 2) @ centered / count[..., None]  # (B, k, k)
            w = self.conv.weight.view(c, k).to(exact)
            var = ((w @ sigma) * w).sum(-1).clamp(min=0)  # (B, C): w_c^T Sigma_b w_c
            scale = torch.rsqrt(var + self.layer_norm.eps) * self.layer_norm.weight.to(exact)  # (B, C)
            shift = self.layer_norm.bias.to(exact) - (mu @ w.T) * scale  # (B, C); a conv bias cancels out
            out = _frames_product(w * scale[..., None], shift, f32)  # (B, C, T)
        return out.to(handed_on)


def _frames_product(weight: torch.Tensor, shift: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """weight (B, C, k) . frames (B, T, k) + shift (B, C) -> (B, C, T): one utterance's conv as a GEMM."""
    return torch.baddbmm(shift[..., None], weight, frames.transpose(1, 2))


def _masked_channel_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one channel per group, statistics over each utterance's valid frames only.

    fp32 whatever the autocast, as autocast runs GroupNorm itself: in bf16, E[x^2] - E[x]^2
    loses the variance of any channel whose mean is large against its spread.
    """
    t = x.shape[-1]
    if bool((lengths >= t).all()):  # nothing padded: the fused kernel gives the same result
        return norm(x)
    dtype, exact = x.dtype, torch.promote_types(x.dtype, torch.float32)
    with exact_fp32(x.device.type):
        x = x.to(exact)
        valid = (~padding_mask(lengths, t)).to(exact)[:, :, None]  # (B, T, 1)
        count = valid.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        mean = (x @ valid) / count  # (B, C, 1)
        var = ((x - mean).square() @ valid) / count  # centred first: no cancellation
        scale = torch.rsqrt(var + norm.eps) * norm.weight.to(exact)[:, None]
        return torch.addcmul(norm.bias.to(exact)[:, None] - mean * scale, x, scale).to(dtype)


class ConvFeatureEncoder(nn.Module):
    """(B, S) waveforms + (B,) lengths -> (B, T, C) features + (B,) frame lengths."""

    def __init__(self, layers: tuple[tuple[int, int, int], ...] = BASE_CONV_LAYERS, norm: str = "group",
                 bias: bool = False, grad_scale: float = 1.0) -> None:
        super().__init__()
        if norm not in CONV_NORMS:
            raise ValueError(f"conv norm must be one of {', '.join(CONV_NORMS)}, got {norm!r}")
        self.layers_spec = tuple(tuple(layer) for layer in layers)
        self.grad_scale = grad_scale
        dims = [1] + [c for c, _, _ in self.layers_spec]
        # `group`: only the first layer is normalised (the BASE model); `layer`: every layer (LARGE)
        self.conv_layers = nn.ModuleList(
            ConvLayer(dims[i], c, k, s, norm if (norm == "layer" or i == 0) else None, bias)
            for i, (c, k, s) in enumerate(self.layers_spec))
        self.output_dim = dims[-1]
        self.hop = math.prod(s for _, _, s in self.layers_spec)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(lengths, self.layers_spec)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # zero past each clip's end so that padding never leaks into a valid frame's window
        x = waveforms.masked_fill(padding_mask(lengths, waveforms.shape[1]), 0.0)[:, None, :]  # (B, 1, S)
        frame_lengths = lengths
        for layer, (_, kernel, stride) in zip(self.conv_layers, self.layers_spec):
            frame_lengths = _conv_length(frame_lengths, kernel, stride)
            x = layer(x, frame_lengths)
        x = grad_multiply(x, self.grad_scale).transpose(1, 2)  # (B, T, C)
        return x, frame_lengths


class FbankFeatureEncoder(nn.Module):
    """(B, S) waveforms + (B,) lengths -> (B, T, stack F) log-mel frames + (B,) frame lengths.

    The same fixed, normalised log-mel features BEST-RQ reads, ``stack`` 10 ms frames to a
    frame (2: 20 ms, the conv encoder's rate). Nothing here is learned, so the quantizer's
    targets are a function of the spectrum from the first step, as BEST-RQ's are; the conv
    encoder's start as hashes of the waveform (docs/pretraining.md). Features stay fp32
    under autocast; an utterance gets the same frames alone or padded in a batch.
    """

    def __init__(self, fbank: LogMelFbank, normalizer: FeatureNormalizer, stack: int = 2) -> None:
        super().__init__()
        if stack < 1:
            raise ValueError(f"fbank stack must be >= 1, got {stack}")
        self.fbank, self.normalizer, self.stack = fbank, normalizer, stack
        self.output_dim = fbank.num_mel_bins * stack
        self.hop = fbank.frame_shift * stack

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(self.fbank.output_lengths(lengths), self.stack, rounding_mode="floor")

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stack_frames(*normalised_fbank(self.fbank, self.normalizer, waveforms, lengths), self.stack)


class FeatureProjection(nn.Module):
    """LayerNorm then Linear to the model width; returns (projected, normalised) features."""

    def __init__(self, in_dim: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim)
        self.projection = nn.Linear(in_dim, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.layer_norm(x)
        return self.dropout(self.projection(normed)), normed


class PositionalConvEmbedding(nn.Module):
    """A wide grouped convolution over time (weight-normalised), GELU: wav2vec 2.0's relative positions."""

    def __init__(self, d_model: int, kernel: int = 128, groups: int = 16) -> None:
        super().__init__()
        if d_model % groups:
            raise ValueError(f"d_model {d_model} is not divisible by pos_conv_groups {groups}")
        conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=2 * math.sqrt(1 / (kernel * d_model)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0  # an even kernel with padding k/2 gives one frame extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if compiling():
            return F.gelu(self._windows_times_weight(x))
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)

    def _windows_times_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution as a product of each frame's window with the weight (compiled only).

        Inductor's lowering of a convolution's backward fixes the batch's length (it guards the
        input gradient's strides), so with ``torch.compile(dynamic=True)`` every new length
        compiled again. The windows are a view; the product is one einsum over all groups.
        """
        weight, bias = self.conv.weight, self.conv.bias  # (D, D / G, k), (D,)
        d, dg, k = weight.shape
        t, pad = x.shape[1], self.conv.padding[0]
        windows = F.pad(x, (0, 0, pad, pad)).unfold(1, k, 1)[:, :t]  # (B, T, D, k): frame t sees t - pad ..
        y = torch.einsum("btgik,goik->btgo", windows.unflatten(2, (d // dg, dg)), weight.view(d // dg, dg, dg, k))
        return y.flatten(2) + bias


class Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim, self.dropout = num_heads, d_model // num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        """x (B, T, D), or (N, D) with ``packing``: the output has x's layout."""
        b, t = key_padding.shape
        unpack = packing.unpack if packing is not None else (lambda y: y)
        q, k, v = (unpack(lin(x)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for lin in (self.q_proj, self.k_proj, self.v_proj))
        out = attention(q, k, v, ~key_padding[:, None, None, :], self.dropout if self.training else 0.0)
        out = out.transpose(1, 2)  # (B, T, H, hd)
        return self.out_proj(packing.pack(out) if packing is not None else out.reshape(b, t, x.shape[-1]))


class TransformerLayer(nn.Module):
    """Post-LN layer of the BASE model: LN(x + MHSA(x)), then LN(x + FFN(x))."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = Attention(d_model, num_heads, dropout)
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)
        self.feed_forward = FeedForward(d_model, ffn_dim, dropout, activation=F.gelu)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        """x (B, T, D), or (N, D) with ``packing``: the output has x's layout."""
        x = self.layer_norm(x + self.dropout(self.attention(x, key_padding, packing)))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    """Front-end output (B, T, D) + lengths -> EncoderOutput: wav2vec 2.0's context network.

    Takes a ``frontend`` like ``ConformerEncoder`` does, so either encoder serves either
    objective (wav2vec 2.0 passes its projected conv features through ``PassThrough``).
    As the Conformer, it runs the frame-wise parts of its layers on valid frames only (see
    ``models/conformer.py``); ``skip_padding = False`` computes the padding too.
    """

    def __init__(self, frontend: nn.Module, d_model: int, num_layers: int, num_heads: int, ffn_dim: int,
                 dropout: float = 0.1, pos_conv_kernel: int = 128, pos_conv_groups: int = 16) -> None:
        super().__init__()
        self.frontend = frontend
        self.d_model, self.num_heads = d_model, num_heads
        self.pos_conv_embed = PositionalConvEmbedding(d_model, pos_conv_kernel, pos_conv_groups)
        self.layer_norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.layers = nn.ModuleList(TransformerLayer(d_model, num_heads, ffn_dim, dropout)
                                    for _ in range(num_layers))
        self.skip_padding = True
        for module in self.layers.modules():  # BERT's init, as fairseq's and transformers' wav2vec 2.0
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, chunking=None) -> EncoderOutput:
        """``chunking``: the Conformer's argument; here only None (full context) is possible."""
        if chunking is not None:
            raise ValueError("the Transformer encoder has no chunked attention (its position convolution sees "
                             "the whole clip); chunked attention needs encoder.kind conformer")
        x, out_lengths = self.frontend(feats, lengths)
        pad = padding_mask(out_lengths, x.shape[1])
        key_pad = pad & (out_lengths > 0)[:, None]  # an empty row attends to its padding, not to nothing
        x = x.masked_fill(pad[..., None], 0.0)  # the position conv sees zeros past the end, as alone
        x = self.dropout(self.layer_norm(x + self.pos_conv_embed(x)))
        hidden = [x]
        packing = Packing.of(pad, self.skip_padding)
        if packing is not None:
            x = packing.pack(x)
        for layer in self.layers:
            x = layer(x, key_pad, packing)
            hidden.append(packing.unpack(x) if packing is not None else x)
        return EncoderOutput(tuple(hidden), out_lengths, pad)
