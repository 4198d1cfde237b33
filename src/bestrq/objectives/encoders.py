"""The encoder a config describes, for either objective (builders are the only config readers)."""

from __future__ import annotations

from torch import nn

from ..config import PretrainConfig
from ..features import FeatureNormalizer, LogMelFbank
from ..models.conformer import ConformerEncoder
from ..models.frontend import FRONTENDS, PassThrough
from ..models.wav2vec2 import TransformerEncoder


def fbank_features(cfg: PretrainConfig) -> tuple[LogMelFbank, FeatureNormalizer]:
    """The log-mel features and their normalisation ``features.*`` describes (either objective)."""
    f = cfg.features
    return LogMelFbank(num_mel_bins=f.num_mel_bins), FeatureNormalizer(f.num_mel_bins, f.normalization)


def fbank_frontend(cfg: PretrainConfig) -> nn.Module:
    """BEST-RQ's front-end: 10 ms fbank frames -> one vector per 40 ms target frame."""
    e, f = cfg.encoder, cfg.features
    if e.frontend == "stack":
        return FRONTENDS["stack"](f.num_mel_bins, e.d_model, f.stack, e.dropout)
    if f.stack != 4:
        raise ValueError("the conv2d front-end subsamples by 4: set features.stack=4")
    return FRONTENDS["conv2d"](f.num_mel_bins, e.d_model, dropout=e.dropout)


def build_encoder(cfg: PretrainConfig, frontend: nn.Module | None = None) -> nn.Module:
    """A Conformer or Transformer encoder behind ``frontend`` (default: no front-end)."""
    e = cfg.encoder
    frontend = frontend if frontend is not None else PassThrough()
    if e.kind == "transformer":
        return TransformerEncoder(frontend, e.d_model, e.num_layers, e.num_heads, e.ffn_dim, e.dropout,
                                  e.pos_conv_kernel, e.pos_conv_groups)
    return ConformerEncoder(frontend, e.d_model, e.num_layers, e.num_heads, e.ffn_dim, e.conv_kernel,
                            e.dropout, e.position, e.left_context, e.right_context)
