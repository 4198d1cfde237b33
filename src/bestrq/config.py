"""Structured, validated configuration: dataclasses, YAML files and ``--set a.b=value``.

Every key of a YAML preset maps to a field below, and every field says what it does.
Unknown keys are rejected with the valid ones listed; values are type-checked, and every number
is checked against its field's range (``setting(..., ge=1)``) before the checks that combine fields. Only the
builder functions read these objects: modules take explicit arguments.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .features import NORMALIZATIONS
from .files import is_number
from .masking import MODES, PRESETS
from .models.conformer import DYNAMIC_COMPILE_TORCH, POSITIONS
from .models.frontend import FRONTENDS
from .models.wav2vec2 import CONV_NORMS, FEATURE_ENCODERS
from .precision import PRECISIONS

OBJECTIVES = ("bestrq", "wav2vec2")
ENCODERS = ("conformer", "transformer")
CHUNK_PER = ("batch", "utterance")
SCHEDULES = ("noam", "cosine", "constant")  # learning-rate schedules, as train/optim.py's lr_at computes them


class ConfigError(ValueError):
    pass


def setting(default: Any, help: str, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, item: type | None = None, choices: tuple | None = None) -> Any:
    """A documented dataclass field, declared once: its help is the CLI's and the docs' text too (``cli.py``
    makes flags of some sections). ``ge``/``gt``/``le``/``lt`` bound a number (or every item of a list of
    ``item``), ``choices`` lists the values it may take; :func:`check_bounds` checks both."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "bounds": bounds, "item": item, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_f = setting  # the short name the declarations below use


_BOUND_TESTS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
                "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def bounds_text(bounds: dict) -> str:
    """``{"ge": 0, "lt": 1}`` -> ``">= 0 and < 1"``."""
    return " and ".join(f"{_BOUND_TESTS[k][1]} {v:g}" for k, v in bounds.items())


def check_range(key: str, value: Any, bounds: dict, item: type | None = None) -> None:
    """ConfigError naming ``key`` unless ``value`` (a number, or a list of ``item``) is finite and in ``bounds``."""
    if item is not None:
        if not all(is_number(v) and (item is float or isinstance(v, int)) for v in value):
            raise ConfigError(f"{key}: expected a list of {item.__name__}s, got {value!r}")
        values = list(value)
    elif is_number(value):
        values = [value]
    else:
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if not all(_BOUND_TESTS[kind][0](v, bound) for kind, bound in bounds.items()):
            raise ConfigError(f"{key}: {'every item ' if item else ''}must be {bounds_text(bounds)}, got {value!r}")


def check_bounds(section: Any, prefix: str = "") -> None:
    """check_range on every bounded or numeric field of ``section`` and its subsections, and every field with
    ``choices`` against them (see :func:`setting`)."""
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_bounds(value, f"{key}.")
        elif (choices := f.metadata.get("choices")) is not None:
            if value not in choices:
                said = ", ".join(repr(c) if c == "" else str(c) for c in choices)
                raise ConfigError(f"{key}: must be one of {said}, not {value!r}")
        elif value is None and f.default is None:  # an optional setting (int | None) left unset
            continue
        elif f.metadata.get("item") is not None or f.metadata.get("bounds") or is_number(value):
            check_range(key, value, f.metadata.get("bounds", {}), f.metadata.get("item"))


@dataclass
class DataConfig:
    corpus: str = _f("data/demo", "folder of bestrq manifests (cuts_<split>.jsonl.gz), e.g. from synth/prepare")
    train_split: str = _f("train", "split to pre-train on; a+b joins splits (train-clean-100+train-clean-360+...)")
    valid_split: str = _f("dev", "held-out split for validation metrics ('' for none)")
    max_batch_duration: float = _f(120.0, "seconds of audio per batch on each process", gt=0)
    max_duration: float = _f(20.0, "longer clips are randomly cropped to this many seconds", gt=0)
    min_duration: float = _f(0.5, "shorter clips are left out (and counted), as are clips too short for one frame "
                             "of the encoder", ge=0)
    num_buckets: int = _f(10, "duration buckets of the sampler", ge=1)
    num_workers: int = _f(2, "audio-loading worker processes per training process", ge=0)
    valid_max_batches: int = _f(50, "validation uses at most this many batches", ge=1)


@dataclass
class FeatureConfig:
    num_mel_bins: int = _f(80, "log-mel filterbank channels", ge=1)
    normalization: str = _f("utterance", "mean/variance normalisation: utterance, global or none",
                            choices=NORMALIZATIONS)
    stack: int = _f(4, "10 ms frames stacked into one target frame (4 = 40 ms)", ge=1)


@dataclass
class QuantizerConfig:
    codebook_size: int = _f(8192, "codes per codebook (V)", ge=1)
    codebook_dim: int = _f(16, "dimension of the projected space (d)", ge=1)
    num_codebooks: int = _f(1, "independent codebooks, one softmax head each (K)", ge=1)
    seed: int = _f(0, "seed of the frozen projection and codebooks (the same on every process)")
    input_layer_norm: bool = _f(False, "LayerNorm the stacked features before projecting")


@dataclass
class MaskingConfig:
    preset: str = _f("speechbrain", "speechbrain (prob 0.15, 4-frame aligned spans, ~60%) or original "
                     "(prob 0.01 per 10 ms, 400 ms spans, ~33%)", choices=PRESETS)
    mode: str = _f("", "override the preset: aligned or independent ('' keeps the preset's)", choices=("", *MODES))
    prob: float = _f(0.0, "override the preset's start probability per target frame (0 keeps it)", ge=0, le=1)
    span: int = _f(0, "override the preset's span in target frames (0 keeps it)", ge=0)
    noise_std: float = _f(0.1, "masked input frames are replaced by N(0, noise_std^2) noise", ge=0)


@dataclass
class EncoderConfig:
    kind: str = _f("conformer", "conformer or transformer (wav2vec 2.0's post-LN layers, conv positions)",
                   choices=ENCODERS)
    frontend: str = _f("stack", "BEST-RQ's 4x front-end: stack (stacked frames + linear) or conv2d (two "
                       "strided convs); wav2vec 2.0 uses its waveform encoder instead", choices=FRONTENDS)
    d_model: int = _f(576, "model width (D)", ge=1)
    num_layers: int = _f(12, "Conformer layers", ge=1)
    num_heads: int = _f(8, "attention heads", ge=1)
    ffn_dim: int = _f(2048, "feed-forward width", ge=1)
    conv_kernel: int = _f(31, "depthwise convolution kernel (odd)", ge=1)
    position: str = _f("relative_key", "relative_key (exports to transformers) or rotary", choices=POSITIONS)
    left_context: int = _f(64, "relative_key: distances clipped to -left_context", ge=0)
    right_context: int = _f(8, "relative_key: distances clipped to +right_context", ge=0)
    dropout: float = _f(0.1, "dropout in every layer", ge=0, lt=1)
    pos_conv_kernel: int = _f(128, "transformer: width of the convolutional position embedding", ge=1)
    pos_conv_groups: int = _f(16, "transformer: groups of the convolutional position embedding", ge=1)
    streaming: bool = _f(False, "train for chunk-by-chunk inference (bestrq.load(...).streamer): dynamic chunk "
                         "attention, below; needs features.normalization global (or none) and the stack front-end")
    chunk_prob: float = _f(0.6, "streaming: share of batches trained with chunked attention (others: full context)",
                           ge=0, le=1)
    chunk_frames: list = _f([8, 32], "streaming: chunk sizes, drawn uniformly from this range of encoder frames "  # noqa: RUF009
                            "(40 ms each: 320 ms to 1.28 s)", ge=1, item=int)
    left_chunks_prob: float = _f(0.75, "streaming: share of chunked batches whose left context is limited (others: "
                                 "all the past)", ge=0, le=1)
    left_chunks: list = _f([2, 32], "streaming: limited left context, drawn uniformly from this range of chunks",  # noqa: RUF009
                           ge=1, item=int)
    chunk_per: str = _f("batch", "streaming: draw the chunking once per batch, or per utterance", choices=CHUNK_PER)


@dataclass
class Wav2Vec2Config:
    feature_encoder: str = _f("conv", "conv (BASE's learned waveform encoder, below) or fbank (the fixed log-mel "
                              "frames of features.*, stacked by fbank_stack: targets predictable from the start)",
                              choices=FEATURE_ENCODERS)
    fbank_stack: int = _f(2, "fbank feature encoder: 10 ms frames per frame (2: 20 ms, the conv encoder's rate)",
                          ge=1)
    conv_channels: list = _f([512] * 7, "waveform encoder: channels per conv layer", ge=1, item=int)  # noqa: RUF009
    conv_kernels: list = _f([10, 3, 3, 3, 3, 2, 2], "waveform encoder: kernel per layer",  # noqa: RUF009
                            ge=1, item=int)
    conv_strides: list = _f([5, 2, 2, 2, 2, 2, 2], "waveform encoder: stride per layer (product 320 = "  # noqa: RUF009
                            "20 ms)", ge=1, item=int)
    conv_norm: str = _f("group", "group (first layer only, per channel over time: BASE) or layer (every layer)",
                        choices=CONV_NORMS)
    conv_bias: bool = _f(False, "bias in the conv layers")
    feature_grad_mult: float = _f(0.1, "scale of the gradient that reaches the waveform encoder", ge=0)
    num_groups: int = _f(2, "Gumbel quantizer: codebooks (G)", ge=1)
    num_entries: int = _f(320, "Gumbel quantizer: entries per codebook (V)", ge=1)
    codevector_dim: int = _f(256, "quantized vector size (G slices of codevector_dim / G)", ge=1)
    final_dim: int = _f(256, "context and quantized vectors are projected to this size and compared", ge=1)
    temperature: list = _f([2.0, 0.5, 0.999995], "Gumbel temperature: start, end, decay per step",  # noqa: RUF009
                           gt=0, item=float)
    num_negatives: int = _f(100, "distractors per masked frame, drawn from the same utterance's masked frames", ge=1)
    logit_temperature: float = _f(0.1, "cosine similarities are divided by this (kappa)", gt=0)
    diversity_weight: float = _f(0.1, "weight of the codebook diversity loss (alpha)", ge=0)
    feature_penalty: float = _f(10.0, "weight of the L2 penalty on the waveform encoder's features (conv only: "
                                "fbank features are fixed)", ge=0)
    mask_prob: float = _f(0.65, "span starts per frame x mask_span (fairseq's mask_prob: ~49% masked)", gt=0)
    mask_span: int = _f(10, "masked span in 20 ms frames", ge=1)
    dropout_input: float = _f(0.1, "dropout on the projected features before masking", ge=0, lt=1)
    dropout_features: float = _f(0.1, "dropout on the features before quantization", ge=0, lt=1)


@dataclass
class OptimConfig:
    lr: float = _f(8e-4, "peak learning rate (AdamW)", gt=0)
    betas: list = _f([0.9, 0.98], "AdamW betas", ge=0, lt=1, item=float)  # noqa: RUF009 - _f gives a default_factory
    eps: float = _f(1e-8, "AdamW epsilon", ge=0)
    weight_decay: float = _f(0.01, "AdamW weight decay (not on biases, norms or embeddings)", ge=0)
    schedule: str = _f("noam", "noam (warm-up then inverse square root), cosine or constant", choices=SCHEDULES)
    warmup_steps: int = _f(25000, "linear warm-up steps", ge=0)
    min_lr_ratio: float = _f(0.0, "cosine: final learning rate as a fraction of the peak", ge=0, le=1)
    grad_clip: float = _f(5.0, "clip the global gradient norm to this (0: no clipping)", ge=0)
    grad_accum: int = _f(1, "micro-batches per optimizer step", ge=1)


@dataclass
class TrainConfig:
    out_dir: str = _f("runs/bestrq", "run folder: checkpoints, metrics.jsonl, TensorBoard events")
    steps: int = _f(100000, "optimizer steps to train for", ge=1)
    max_minutes: float = _f(0.0, "stop (with a checkpoint) after this many minutes of training, a resumed "
                                  "run's time before included (0: no limit)", ge=0)
    seed: int = _f(0, "seed of initialisation, data order, masks and dropout")
    init_from: str = _f("", "start from this run, checkpoint or exported folder's weights, quantizer and heads "
                            "(fresh optimizer and schedule); its model settings must match. A run that "
                            "already has a checkpoint resumes from it instead")
    device: str = _f("auto", "auto (cuda if available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    precision: str = _f("fp32", "fp32 or bf16 (autocast; for GPUs: this CPU has no fast bf16)", choices=PRECISIONS)
    tf32: bool = _f(True, "CUDA: fp32 matmuls in TF32 (the quantizer's code search and a few statistics "
                          "stay exact fp32); no effect on a CPU")
    compile: bool = _f(False, f"torch.compile the encoder, one graph for every batch length (torch >= {DYNAMIC_COMPILE_TORCH})")
    threads: int = _f(0, "CPU threads per process (0: PyTorch's default)", ge=0)
    log_every: int = _f(10, "steps between logged training metrics", ge=1)
    valid_every: int = _f(500, "steps between validations (0: only at the end)", ge=0)
    checkpoint_every: int = _f(500, "steps between checkpoints", ge=1)
    keep_checkpoints: int = _f(3, "most recent checkpoints kept", ge=1)
    tensorboard: bool = _f(True, "write TensorBoard scalars to out_dir/tensorboard")
    progress: bool = _f(True, "show a progress bar")
    max_bad_steps: int = _f(20, "consecutive steps with a non-finite loss or gradient (each skipped) before "
                               "the run stops", ge=1)
    dist_timeout_minutes: float = _f(10.0, "how long a collective waits for a silent rank before the job fails", gt=0)


@dataclass
class PretrainConfig:
    objective: str = _f("bestrq", "bestrq or wav2vec2", choices=OBJECTIVES)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wav2vec2: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)

    def validate(self) -> PretrainConfig:
        def check(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{key}: {msg}")

        check_bounds(self)  # every number in its range and every choice declared first: the checks below combine
        w = self.wav2vec2
        n = len(w.conv_channels)
        check(n >= 1 and len(w.conv_kernels) == n and len(w.conv_strides) == n, "wav2vec2.conv_channels",
              "conv_channels, conv_kernels and conv_strides must be lists of the same length")
        check(len(w.temperature) == 3 and w.temperature[0] >= w.temperature[1] > 0 and 0 < w.temperature[2] <= 1,
              "wav2vec2.temperature", "must be [start, end, decay] with start >= end > 0 and 0 < decay <= 1")
        check(w.codevector_dim % w.num_groups == 0, "wav2vec2.codevector_dim",
              f"{w.codevector_dim} is not divisible by num_groups {w.num_groups}")
        check(w.mask_prob <= w.mask_span, "wav2vec2.mask_prob", "must be in (0, mask_span]")
        check(self.data.min_duration <= self.data.max_duration, "data.min_duration",
              f"{self.data.min_duration:g} s is above data.max_duration ({self.data.max_duration:g} s): every clip, "
              "cropped to max_duration, would be too short")
        check(self.encoder.d_model % self.encoder.num_heads == 0, "encoder.d_model",
              f"{self.encoder.d_model} is not divisible by num_heads {self.encoder.num_heads}")
        check(self.encoder.conv_kernel % 2 == 1, "encoder.conv_kernel", "must be odd")
        e = self.encoder
        for key in ("chunk_frames", "left_chunks"):
            pair = getattr(e, key)
            check(len(pair) == 2 and pair[0] <= pair[1], f"encoder.{key}", f"must be [smallest, largest], got {pair}")
        if e.streaming:  # nothing that makes an output depend on the future beyond its chunk
            check(e.kind == "conformer", "encoder.streaming",
                  "needs encoder.kind conformer (the transformer's position convolution looks ahead)")
            check(self.objective != "bestrq" or e.frontend == "stack", "encoder.streaming",
                  "needs encoder.frontend stack (conv2d's 3x3 convolutions look 3 frames ahead)")
            fbank = self.objective == "bestrq" or w.feature_encoder == "fbank"
            check(not fbank or self.features.normalization in ("global", "none"), "encoder.streaming",
                  f"needs features.normalization global or none: {self.features.normalization!r} statistics "
                  "need the whole clip")
            check(fbank or w.conv_norm == "layer", "encoder.streaming",
                  "needs wav2vec2.conv_norm layer (group normalises each channel over the whole clip)")
        check(len(self.optim.betas) == 2, "optim.betas", "must be two numbers")
        check(self.encoder.kind != "transformer" or self.encoder.d_model % self.encoder.pos_conv_groups == 0,
              "encoder.pos_conv_groups",
              f"d_model {self.encoder.d_model} is not divisible by {self.encoder.pos_conv_groups}")
        return self


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _type_ok(value: Any, tp: Any) -> Any:
    """``value`` converted to the field's type, or ConfigError."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is list and isinstance(value, (list, tuple)):
        return list(value)
    if tp in (int, float, str, bool, list) and type(value) is tp:
        return value
    raise TypeError(f"expected {tp.__name__}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix[:-1] or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in fields), key=str)  # YAML keys may be numbers
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s}; valid keys{' of ' + prefix[:-1] if prefix else ''}"
                          f": {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = from_dict(tp, value, f"{prefix}{name}.")
            continue
        optional = isinstance(tp, types.UnionType) and type(None) in tp.__args__  # int | None: unset is None
        if optional:
            if value is None:
                values[name] = None
                continue
            tp = next(t for t in tp.__args__ if t is not type(None))
        try:
            values[name] = _type_ok(value, tp if not isinstance(tp, types.GenericAlias) else list)
            item = fields[name].metadata.get("item")
            if item is not None:
                values[name] = [_type_ok(v, item) for v in values[name]]
        except TypeError as e:
            raise ConfigError(f"{prefix}{name}: {e}") from None
    return cls(**values)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["optim.lr=1e-3", "train.steps=10"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: {key!r} is not a dotted key such as optim.lr")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            problem = str(e).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} was set to a value, not a section")
        node[parts[-1]] = value
    return out


CONFIG_DIRS = (Path("configs"), Path(__file__).resolve().parents[2] / "configs")


def find_config(name: str) -> Path:
    """A YAML path, or a preset name looked up in ./configs and the source tree's configs/."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        return path
    for folder in CONFIG_DIRS:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    presets = sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})
    raise FileNotFoundError(f"no config {name!r}: give a YAML path or one of {', '.join(presets) or '(none)'}")


def _blame(cls: type, name: str | None, data: dict, overrides: list[str]) -> None:
    """Raise the error of ``from_dict``, naming the file or the ``--set`` item that causes it."""
    try:
        from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{name or 'config'}: {e}") from None
    for item in overrides:
        data = _merge(data, parse_overrides([item]))
        try:
            from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None


def load_config(name: str | None, overrides: list[str] = (), cls: type = PretrainConfig) -> Any:
    data: dict = {}
    if name:
        path = find_config(name)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): save it "
                              "as UTF-8") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
        if str(data.get("format", "")).startswith("bestrq-checkpoint/") and isinstance(data.get("config"), dict):
            data = data["config"]  # a checkpoint's config.json: the settings it was trained with
    overrides = list(overrides)
    try:
        cfg = from_dict(cls, _merge(data, parse_overrides(overrides)))
    except ConfigError:
        _blame(cls, name, data, overrides)  # the file, or the first --set value that breaks it
        raise
    return cfg.validate() if hasattr(cfg, "validate") else cfg
