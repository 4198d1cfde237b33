"""The Conformer encoder (Gulati et al., 2020): lengths in, lengths out, every layer's output.

The layer layout is Wav2Vec2BertModel's in Hugging Face transformers, parameter names
included, so a trained encoder exports there without retraining:

    x = x + 0.5 * FFN1(LN(x))                      macaron feed-forward, SiLU
    x = x + MHSA(LN(x))                            relative-key position bias (default) or rotary
    x = x + Conv(x)                                LN, pointwise -> GLU, depthwise (kernel 31,
                                                   padded on the left), LN, SiLU, pointwise
    x = LN(x + 0.5 * FFN2(LN(x)))

Attention runs through ``scaled_dot_product_attention``. ``relative_key`` adds a learned
bias per query and clipped distance (-64..+8 frames by default, as transformers' default
for this model), computed as q . E[distance] with one small matmul and a gather. Long clips
(in eager mode; ``relative_attention.applies``) take the query-block path of
models/relative_attention.py instead, which never holds the (B, H, T, T) bias.
``rotary`` rotates queries and keys (RoFormer); it does not export to transformers, whose
rotary variant rotates the layer input instead.

Padding never reaches a valid frame: keys at padding are masked, the convolution's input
is zeroed at padding and the depthwise kernel only looks left, so an utterance gets the
same output alone or padded in a batch.

Padded frames are not computed either. In eager mode, a batch with padding runs its
frame-wise parts (feed-forwards, layer norms, attention projections, pointwise
convolutions: almost all of the FLOPs) on the valid frames only, packed as rows of an
(N, D) matrix; only attention and the depthwise convolution see the padded (B, T, .)
layout, with zeros at padding. A batch of clips of mixed lengths is often half padding,
and a peer computing it all pays for it. The output is the padded layout's, up to float
rounding, with zeros at padding. Under ``torch.compile``, export and tracing (which want
static shapes) and for batches without padding the layout stays padded throughout.

Shapes: B batch, T frames, N valid frames, D model width, H heads; lengths (B,) int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

from ..features import padding_mask
from . import relative_attention
from .chunking import Chunking, attention_mask
from .dropout import Dropout, attention


def exporting() -> bool:
    """Whether torch.export (or ONNX export through it) is tracing this call. torch < 2.6 has no
    ``torch.compiler.is_exporting``; there export counts as compiling only."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return is_exporting is not None and is_exporting()


def compiling() -> bool:
    """Whether torch.compile (not export) is tracing this call."""
    return torch.compiler.is_compiling() and not exporting()


def _static() -> bool:
    """Whether compile, export or tracing is at work: their graphs want static shapes and no
    Python loop over the data's length."""
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()


# the first torch release seen to train every encoder here compiled once for all batch lengths
DYNAMIC_COMPILE_TORCH = "2.12"


def dynamic_compile_works() -> bool:
    """Whether this torch trains the encoders under ``torch.compile(dynamic=True)`` with one graph.

    Seen on the CPU, forward and backward over batches of changing length: torch 2.12, 2.13 and 2.14
    kept one graph for the Conformer (both positions) and the Transformer. The compiled backward of
    torch 2.8, 2.10 and 2.11 fixed saved activations' strides to the first batch's length, so the
    Transformer and the rotary Conformer failed at the next length ("expected size 2==2, stride
    287==464") and the relative-key Conformer compiled again for every length; torch 2.4 compiled
    again for every length too, and failed to trace the rotary tables (docs/implementation.md).
    """
    return TorchVersion(torch.__version__) >= DYNAMIC_COMPILE_TORCH


POSITIONS = ("relative_key", "rotary")


class Packing:
    """The valid frames of a (B, T) batch as the rows of an (N, C) matrix, and back."""

    def __init__(self, pad: torch.Tensor) -> None:  # (B, T) True on padding
        self.batch, self.frames = pad.shape
        self.index = (~pad).flatten().nonzero().squeeze(1)  # (N,) rows of the flattened batch

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, C), C the product of the trailing sizes."""
        return x.reshape(self.batch * self.frames, -1).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (B, T, C), zeros at padding."""
        out = x.new_zeros(self.batch * self.frames, x.shape[-1]).index_copy(0, self.index, x)
        return out.view(self.batch, self.frames, x.shape[-1])

    @classmethod
    def of(cls, pad: torch.Tensor, enabled: bool) -> Packing | None:
        """A packing of this batch's valid frames, or None to keep the padded layout: when disabled,
        when there is no padding, or when compiling, exporting or tracing (their graphs want static
        shapes, and the packed N depends on the data)."""
        return cls(pad) if enabled and not _static() and bool(pad.any()) else None


@dataclass(frozen=True)
class EncoderOutput:
    hidden_states: tuple[torch.Tensor, ...]  # num_layers + 1 tensors (B, T, D): input, then each layer
    lengths: torch.Tensor  # (B,) valid frames per utterance
    padding_mask: torch.Tensor  # (B, T) True on padding

    @property
    def last(self) -> torch.Tensor:
        return self.hidden_states[-1]


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation=F.silu) -> None:
        super().__init__()
        self.activation = activation
        self.intermediate_dense = nn.Linear(d_model, ffn_dim)
        self.intermediate_dropout = Dropout(dropout)
        self.output_dense = nn.Linear(ffn_dim, d_model)
        self.output_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dropout(self.activation(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float, position: str,
                 left_context: int, right_context: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by {num_heads} heads")
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.position, self.dropout = position, dropout
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        if position == "relative_key":
            self.left_context, self.right_context = left_context, right_context
            self.distance_embedding = nn.Embedding(left_context + right_context + 1, self.head_dim)

    def distance_bias(self, q: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """Queries q (..., Tq, hd) and each (query, key) pair's distance, key minus query (Tq, Tk) ->
        the relative-key bias (..., Tq, Tk)."""
        per_distance = q @ self.distance_embedding.weight.to(q.dtype).T  # (..., Tq, P)
        index = distance.clamp(-self.left_context, self.right_context) + self.left_context
        return per_distance.gather(-1, index.expand(*per_distance.shape[:-1], -1)) / math.sqrt(self.head_dim)

    def _relative_key_bias(self, q: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(q.shape[2], device=q.device)
        return self.distance_bias(q, pos[None, :] - pos[:, None])  # (B, H, T, T)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None, packing: Packing | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), or (N, D) with ``packing``: the output has x's layout. ``allowed``: (1 or B, 1, T, T)
        bool, the (query, key) pairs that may attend (chunked attention; None: all)."""
        b, t = key_padding.shape
        d = x.shape[-1]
        unpack = packing.unpack if packing is not None else (lambda y: y)
        q, k, v = (unpack(lin(x)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for lin in (self.linear_q, self.linear_k, self.linear_v))  # (B, H, T, hd)
        p = self.dropout if self.training else 0.0
        if self.position == "rotary":
            q, k = rotate(q, *rotary), rotate(k, *rotary)
            keep = ~key_padding[:, None, None, :]  # (B, 1, 1, T) True = attend
            out = attention(q, k, v, keep if allowed is None else keep & allowed, p)
        elif allowed is None and relative_attention.applies(t, q.device) and not _static():
            # long clips: no (B, H, T, T) bias
            out = relative_attention.relative_key_attention(q, k, v, self.distance_embedding.weight, key_padding,
                                                            self.left_context, self.right_context, p)
        else:
            mask = self._relative_key_bias(q).masked_fill(key_padding[:, None, None, :], float("-inf"))
            if allowed is not None:
                mask = mask.masked_fill(~allowed, float("-inf"))
            out = attention(q, k, v, mask, p)
        out = out.transpose(1, 2)  # (B, T, H, hd)
        out = packing.pack(out) if packing is not None else out.reshape(b, t, d)
        return self.linear_out(out)

    def step(self, x: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor, distance: torch.Tensor,
             rotary: tuple[torch.Tensor, torch.Tensor] | None = None, valid: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same attention for one chunk of frames x (n, D) of one stream, in eval, given its left
        context: the earlier frames' keys and values (H, m, hd) (m may be 0); ``distance`` (n, m + n), key
        minus query position, for the relative-key bias; ``rotary`` the chunk's cos and sin (n, hd);
        ``valid`` (m + n,) the keys that may be attended (None: all). -> (the output (n, D), the keys and
        values with the chunk's (H, m + n, hd)): chunk-by-chunk inference keeps them as the next context."""
        n, h, hd = x.shape[0], self.num_heads, self.head_dim
        q, k, v = (lin(x).view(n, h, hd).transpose(0, 1) for lin in (self.linear_q, self.linear_k, self.linear_v))
        if self.position == "rotary":
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        keys, values = torch.cat([past_keys, k], dim=1), torch.cat([past_values, v], dim=1)  # (H, m + n, hd)
        bias = self.distance_bias(q, distance) if self.position == "relative_key" else None  # (H, n, m + n)
        if valid is not None:
            bias = (bias if bias is not None else q.new_zeros(h, n, keys.shape[1])).masked_fill(~valid, float("-inf"))
        out = F.scaled_dot_product_attention(q[None], keys[None], values[None],
                                             attn_mask=None if bias is None else bias[None])[0]  # (H, n, hd)
        return self.linear_out(out.transpose(0, 1).reshape(n, h * hd)), keys, values


def rotary_tables(t: int, head_dim: int, device: torch.device, base: float = 10000.0, start: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hd) of positions start .. start + t - 1."""
    return rotary_at(torch.arange(start, start + t, device=device, dtype=torch.float32), head_dim, base)


def rotary_at(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hd) of the (T,) float32 ``positions`` (a tensor: in an exported step function they
    depend on its inputs)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions[:, None] * inv_freq  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, hd) rotated by the angles whose cos and sin (T, hd) are given (RoFormer)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv kernel size must be odd, got {kernel_size}")
        self.layer_norm = nn.LayerNorm(d_model)
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, bias=False)
        self.depthwise_layer_norm = nn.LayerNorm(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1, bias=False)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        """x (B, T, D), or (N, D) with ``packing``: the output has x's layout."""
        # the pointwise convolutions run as matmuls on (B, T, D) or (N, D): on the CPU ~30% faster
        # than a kernel-1 convolution on (B, D, T), with no transposes around them
        x = self.layer_norm(x)
        if packing is None:
            x = x.masked_fill(pad[..., None], 0.0)
        x = F.glu(F.linear(x, self.pointwise_conv1.weight[..., 0]), dim=-1)  # padding: GLU(0) = 0
        if packing is not None:
            x = packing.unpack(x)  # (B, T, D), zeros at padding
        x = self._depthwise(x)  # (B, T, D)
        if packing is not None:
            x = packing.pack(x)
        x = F.silu(self.depthwise_layer_norm(x))
        return self.dropout(F.linear(x, self.pointwise_conv2.weight[..., 0]))

    def _depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). Left padding only (transformers' layout): frame t sees
        t - k + 1 .. t, never padding."""
        weight = self.depthwise_conv.weight  # (D, 1, k)
        k = weight.shape[-1]
        if compiling():
            # Compiled: a sum of k shifted products, which inductor fuses into one kernel. Its
            # lowering of a convolution's backward fixes the batch's length (it guards the input
            # gradient's strides), so with a convolution every new length compiled again.
            t = x.shape[1]
            x = F.pad(x, (0, 0, k - 1, 0))
            out = x[:, :t] * weight[:, 0, 0]
            for j in range(1, k):
                out = out + x[:, j : j + t] * weight[:, 0, j]
            return out
        return self.depthwise_conv(F.pad(x.transpose(1, 2), (k - 1, 0))).transpose(1, 2)

    def step(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same module for one chunk of frames x (n, D) of one stream, in eval, given the depthwise
        convolution's last k - 1 inputs before it (``past``, (k - 1, D); zeros at the start) -> (the
        output (n, D), the depthwise inputs (k - 1 + n, D), whose last k - 1 are the next chunk's past)."""
        x = self.layer_norm(x)
        x = F.glu(F.linear(x, self.pointwise_conv1.weight[..., 0]), dim=-1)  # (n, D)
        inputs = torch.cat([past, x])
        x = F.conv1d(inputs.T[None], self.depthwise_conv.weight, groups=inputs.shape[1])[0].T  # (n, D)
        x = F.silu(self.depthwise_layer_norm(x))
        return F.linear(x, self.pointwise_conv2.weight[..., 0]), inputs


class ConformerLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, conv_kernel: int, dropout: float,
                 position: str, left_context: int, right_context: int) -> None:
        super().__init__()
        self.ffn1_layer_norm = nn.LayerNorm(d_model)
        self.ffn1 = FeedForward(d_model, ffn_dim, dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.self_attn = SelfAttention(d_model, num_heads, dropout, position, left_context, right_context)
        self.self_attn_dropout = Dropout(dropout)
        self.conv_module = ConvModule(d_model, conv_kernel, dropout)
        self.ffn2_layer_norm = nn.LayerNorm(d_model)
        self.ffn2 = FeedForward(d_model, ffn_dim, dropout)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pad: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                packing: Packing | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), or (N, D) with ``packing``: the output has x's layout."""
        return self.around(x, lambda y: self.self_attn(y, pad, rotary, packing, allowed),
                           lambda y: self.conv_module(y, pad, packing))

    def around(self, x: torch.Tensor, attend, convolve) -> torch.Tensor:
        """The layer around its attention and convolution: ``attend`` of the normalised frames,
        ``convolve`` of the frames. ``forward`` gives the whole sequence's; chunk-by-chunk inference
        gives a chunk's (``SelfAttention.step``, ``ConvModule.step``) with the state it carries."""
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn_dropout(attend(self.self_attn_layer_norm(x)))
        x = x + convolve(x)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class ConformerEncoder(nn.Module):
    """(B, T, F) features + (B,) lengths -> EncoderOutput at the front-end's frame rate."""

    def __init__(self, frontend: nn.Module, d_model: int, num_layers: int, num_heads: int, ffn_dim: int,
                 conv_kernel: int = 31, dropout: float = 0.1, position: str = "relative_key",
                 left_context: int = 64, right_context: int = 8) -> None:
        super().__init__()
        self.frontend = frontend
        self.d_model, self.num_heads = d_model, num_heads
        self.dropout = Dropout(dropout)
        self.position = position
        self.skip_padding = True  # False: compute padded frames too (the reference layout, for tests)
        self.layers = nn.ModuleList(
            ConformerLayer(d_model, num_heads, ffn_dim, conv_kernel, dropout, position, left_context,
                           right_context) for _ in range(num_layers))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor,
                chunking: Chunking | list[Chunking | None] | None = None) -> EncoderOutput:
        """``chunking``: chunked attention for the batch, or one per utterance (models/chunking.py); None:
        full context."""
        x, out_lengths = self.frontend(feats, lengths)  # (B, T', D)
        pad = padding_mask(out_lengths, x.shape[1])  # (B, T')
        # a row with no valid frame would attend to nothing (NaN); let it see its padding instead
        key_pad = pad & (out_lengths > 0)[:, None]
        x = self.dropout(x.masked_fill(pad[..., None], 0.0))
        rotary = (rotary_tables(x.shape[1], self.d_model // self.num_heads, x.device)
                  if self.position == "rotary" else None)
        hidden = [x]
        allowed = attention_mask(chunking, pad)
        packing = Packing.of(pad, self.skip_padding)
        if packing is not None:
            x = packing.pack(x)
        for layer in self.layers:
            x = layer(x, key_pad, rotary, packing, allowed)
            hidden.append(packing.unpack(x) if packing is not None else x)
        return EncoderOutput(tuple(hidden), out_lengths, pad)
