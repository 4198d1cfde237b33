"""Hugging Face transformers export: a BEST-RQ encoder as ``Wav2Vec2BertModel``, and back.

``export_hf(checkpoint, out)`` writes a folder that transformers loads as is::

    config.json                Wav2Vec2BertConfig (our encoder's sizes, relative_key positions)
    model.safetensors          the encoder's weights under transformers' names
    preprocessor_config.json   SeamlessM4TFeatureExtractor(stride = features.stack)
    README.md                  a model card: what it is, how to load it, the caveat below
    bestrq_config.json         our full config (a --config for runs that continue from it)
    bestrq.safetensors         what transformers has no place for: the frozen quantizer, the
                               prediction heads and the feature normaliser's statistics; its
                               metadata names the step and checkpoint it came from

The encoder layout is Wav2Vec2BertModel's already (models/conformer.py); only the front-end
(``frontend.`` -> ``feature_projection.``) and layer (``layers.`` -> ``encoder.layers.``)
prefixes change. The feature extractor computes the same normalised log-mel features as
ours (features.py) and stacks ``stride`` frames, so both sides see the same input.

Batches and clip ends: the extractor pads a clip to an even number of 10 ms frames and
counts a 40 ms frame as speech when its second 10 ms frame is. Ours keeps whole 40 ms
frames only (features.stack_frames). The two agree, batched or not, on clips of whole 40 ms
frames (``clip[:whole_frames(len(clip))]``); on other clips transformers may add one last,
partly padded 40 ms frame, which every other frame then attends to.

``bestrq.inference.loading.read_export(folder)`` reads such a folder back into our state-dict layout,
without transformers, so ``bestrq.load`` and ``--init-from`` take exports as well as checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import PretrainConfig, to_dict
from ..features import num_frames
from ..inference.loading import BESTRQ_CONFIG, EXTRAS, WEIGHTS, to_hf_names

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by every norm of the encoder


def whole_frames(num_samples: int, stack: int = 4, frame_length: int = 400, frame_shift: int = 160) -> int:
    """The longest prefix of a ``num_samples`` clip that makes a whole number of ``stack``-frame groups."""
    keep = int(num_frames(torch.tensor(num_samples), frame_length, frame_shift)) // stack * stack
    return frame_length + (keep - 1) * frame_shift if keep > 0 else num_samples


def export_blockers(cfg: PretrainConfig) -> list[str]:
    """The options that keep a model from being expressed as a Wav2Vec2BertModel (empty: exportable)."""
    e, f = cfg.encoder, cfg.features
    blockers = []
    if cfg.objective != "bestrq":
        blockers.append(f"objective={cfg.objective}: only BEST-RQ's Conformer-on-filterbank encoder maps onto "
                        "Wav2Vec2BertModel")
    if e.kind != "conformer":
        blockers.append(f"encoder.kind={e.kind}: Wav2Vec2BertModel is a Conformer (encoder.kind=conformer)")
    if e.frontend != "stack":
        blockers.append(f"encoder.frontend={e.frontend}: Wav2Vec2BertModel's feature projection is stacked "
                        "frames + LayerNorm + Linear (encoder.frontend=stack)")
    if e.position != "relative_key":
        blockers.append(f"encoder.position={e.position}: transformers' rotary variant rotates the layer input, "
                        "ours the queries and keys; only relative_key is the same in both")
    if e.streaming:
        blockers.append("encoder.streaming=true: Wav2Vec2BertModel has no chunked attention, so it would run this "
                        "streaming encoder with full context only; stream it with bestrq.load(...).streamer()")
    if f.normalization != "utterance":
        blockers.append(f"features.normalization={f.normalization}: SeamlessM4TFeatureExtractor always "
                        "normalises each utterance (features.normalization=utterance)")
    return blockers


def hf_config_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """Wav2Vec2BertConfig arguments for the encoder ``cfg`` describes."""
    e, f = cfg.encoder, cfg.features
    return {
        "hidden_size": e.d_model, "num_hidden_layers": e.num_layers, "num_attention_heads": e.num_heads,
        "intermediate_size": e.ffn_dim, "feature_projection_input_dim": f.num_mel_bins * f.stack,
        "hidden_act": "swish", "layer_norm_eps": LAYER_NORM_EPS, "conv_depthwise_kernel_size": e.conv_kernel,
        "position_embeddings_type": "relative_key", "left_max_position_embeddings": e.left_context,
        "right_max_position_embeddings": e.right_context, "add_adapter": False,
        "use_intermediate_ffn_before_adapter": False, "layerdrop": 0.0,
        "hidden_dropout": e.dropout, "activation_dropout": e.dropout, "attention_dropout": e.dropout,
        "feat_proj_dropout": e.dropout, "conformer_conv_dropout": e.dropout,
        "architectures": ["Wav2Vec2BertModel"]}


def export_hf(loaded, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``loaded`` (inference.loading.Loaded) as a transformers folder; returns it.

    The folder is written beside its destination and renamed into place, so an
    interrupted export leaves nothing half-written under ``out``.
    """
    try:
        import transformers
    except ImportError:
        raise ImportError("exporting to transformers needs the transformers package: "
                           "pip install 'bestrq[export]'") from None
    cfg = loaded.config
    blockers = export_blockers(cfg)
    if blockers:
        raise ValueError(f"{loaded.folder}: cannot be expressed as a Wav2Vec2BertModel: " + "; ".join(blockers))
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")

    module = loaded.module
    encoder_state = {k: v.detach().cpu().contiguous() for k, v in module.encoder.state_dict().items()}
    weights = to_hf_names(encoder_state)
    hf_config = transformers.Wav2Vec2BertConfig(**hf_config_kwargs(cfg))
    # the SpecAugment vector of fine-tuning, initialised as transformers does (uniform [0, 1))
    weights["masked_spec_embed"] = torch.rand(cfg.encoder.d_model, generator=torch.Generator().manual_seed(0))
    extras = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
              if not k.startswith("encoder.")}

    tmp = out.with_name(f".{out.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf_config.save_pretrained(tmp)
    transformers.SeamlessM4TFeatureExtractor(
        feature_size=cfg.features.num_mel_bins, num_mel_bins=cfg.features.num_mel_bins,
        sampling_rate=module.sample_rate, stride=cfg.features.stack).save_pretrained(tmp)
    save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
    save_file(extras, str(tmp / EXTRAS), metadata={"format": "pt", "step": str(loaded.step),
                                                    "source": str(loaded.folder.resolve())})
    (tmp / "README.md").write_text(_model_card(cfg, loaded))
    (tmp / BESTRQ_CONFIG).write_text(json.dumps(to_dict(cfg), indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _model_card(cfg: PretrainConfig, loaded) -> str:
    e = cfg.encoder
    return f"""---
library_name: transformers
tags: [audio, speech, self-supervised, best-rq, wav2vec2-bert]
---
# BEST-RQ encoder (bestrq)

A Conformer pre-trained with BEST-RQ by bestrq ({e.num_layers} layers, width {e.d_model}, {e.num_heads} heads,
step {loaded.step}), in transformers' `Wav2Vec2BertModel` layout. Input: 16 kHz audio; output: one
{e.d_model}-dim vector per {10 * cfg.features.stack} ms.

```python
from transformers import AutoFeatureExtractor, Wav2Vec2BertModel
extractor = AutoFeatureExtractor.from_pretrained(FOLDER)
model = Wav2Vec2BertModel.from_pretrained(FOLDER).eval()
inputs = extractor(clip, sampling_rate=16000, return_tensors="pt")
hidden = model(**inputs, output_hidden_states=True).hidden_states
```

`bestrq.load(FOLDER)` loads it too, with the quantizer and prediction heads (bestrq.safetensors)
that `bestrq pretrain --init-from FOLDER` continues pre-training from.

The extractor counts a last, partly padded {10 * cfg.features.stack} ms frame as speech; bestrq keeps whole
frames only. Outputs are the same for clips of whole frames:
`clip[:bestrq.export.whole_frames(len(clip))]`.
"""
