"""``bestrq probe``: extract each split's hidden states once, train every task's head, write results.

    OUT/cache/<split>/          hidden states (see cache.py), shared by the tasks
    OUT/probe_<task>.json       metrics, best epoch, layer weights, curves, the encoder's record
    OUT/encoder.json            which encoder, and its pre-training time and audio
                                (both defined in results.py)
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.audio import BadAudio, load_mono
from ..data.manifest import list_splits, load_split
from ..runtime.distributed import require_device
from .cache import encode_cuts, extract, output_frames
from .encoders import Encoder, load_encoder, same_encoder
from .results import RESULTS, encoder_of, write_encoder, write_result
from .tasks import TASKS, ProbeConfig, read_trials, task_data, train_probe

log = logging.getLogger(__name__)


def _long_enough(encoder: Encoder, cuts: list, split: str) -> list:
    """The cuts that give the encoder at least one frame; the others are left out, with a warning."""
    frames = output_frames(encoder, cuts).tolist()
    short = [c for c, n in zip(cuts, frames) if n < 1]
    if short:
        log.warning("%s: %d cuts too short for one frame of the encoder are left out, e.g. %s (%.0f ms)",
                    split, len(short), short[0].id, 1000 * short[0].duration)
    return [c for c, n in zip(cuts, frames) if n >= 1]


def run_probes(checkpoint: str | Encoder, tasks: list[str], data_dir: str | os.PathLike, out_dir: str | os.PathLike,
               cfg: ProbeConfig | None = None, device: str = "cpu", progress: bool = True,
               cache_dtype: str = "float16", skip_unlabelled: bool = False,
               cache_dir: str | os.PathLike | None = None, precision: str = "run", chunk_ms: float | None = None,
               left_chunks: int | None = None) -> dict[str, dict]:
    """Probe one encoder (what ``--checkpoint`` names, or a loaded one) on ``tasks``; returns and writes the results.

    The hidden states are cached in ``cache_dir`` (default ``out_dir/cache``): probes of one
    encoder with several seeds can share one cache. ``precision``: the encoder's (``run``: the
    precision it was trained in), ``fp32`` or ``bf16``. ``chunk_ms`` and ``left_chunks``: the states of
    chunk-by-chunk inference (a streaming model; see :func:`~bestrq.probes.encoders.load_encoder`).

    Every task's labels are checked before any work: a task the corpus cannot probe is an error,
    or, with ``skip_unlabelled`` (``--task all``), left out with a warning.
    """
    cfg = cfg or ProbeConfig()
    dev = require_device(device, "device")
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)} or all")
    if cfg.unfreeze and tasks != ["asr"]:
        raise ValueError("--unfreeze fine-tunes the encoder for ASR only: use it with --task asr")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    available = list_splits(data_dir)
    missing = [s for s in ("train", "dev", "test") if s not in available]
    if missing:
        raise FileNotFoundError(f"{data_dir}: no {', '.join(missing)} split (found: {', '.join(available) or 'none'})")
    raw = {s: list(load_split(data_dir, s)) for s in ("train", "dev", "test")}
    for task in list(tasks):
        try:
            task_data(task, raw)
        except ValueError as e:
            if not skip_unlabelled:
                raise ValueError(f"{data_dir}: {e}") from None
            log.warning("%s: %s: the task is skipped", data_dir, e)
            tasks = [t for t in tasks if t != task]
    if not tasks:
        raise ValueError(f"{data_dir}: no task has the labels it needs in train, dev and test")
    trials_path = data_dir / "sv_trials.txt"
    sv = list(load_split(data_dir, "sv")) if "speaker" in tasks and "sv" in available else []
    trials = read_trials(trials_path) if sv and trials_path.is_file() else []
    if "speaker" in tasks and not trials:
        why = ("no sv split" if "sv" not in available else "the sv split is empty" if not sv
               else "no sv_trials.txt" if not trials_path.is_file() else "sv_trials.txt holds no trials")
        log.warning("%s: %s: speaker verification (EER) is skipped", data_dir, why)
    if trials and len({t for t, _, _ in trials}) < 2:
        kind = "target (1)" if trials[0][0] else "non-target (0)"
        raise ValueError(f"{trials_path}: all {len(trials)} trials are {kind}: the EER needs both kinds")
    lost = {i for _, a, b in trials for i in (a, b)} - {c.id for c in sv}
    if lost:  # checked before any work
        raise ValueError(f"{trials_path}: {len(lost)} trial utterances are not in the sv split, e.g. {min(lost)}")

    encoder = (checkpoint if isinstance(checkpoint, Encoder)
               else load_encoder(checkpoint, dev, seed=cfg.seed, precision=precision, chunk_ms=chunk_ms,
                                 left_chunks=left_chunks))
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": encoder.name, "spec": encoder.spec, **encoder.info}
    for path in sorted(out_dir.glob(RESULTS)):  # results this run does not replace: of this encoder?
        other = encoder_of(path)
        if path.stem.removeprefix("probe_") not in tasks and other is not None and not same_encoder(other, record):
            log.warning("%s is of another encoder (%s), not %s: the report flags it; give --out another folder "
                        "to keep each encoder's results apart", path, other.get("name"), encoder.name)
    write_encoder(out_dir, record)

    splits = {s: _long_enough(encoder, cuts, s) for s, cuts in raw.items()}
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"

    states, get_sv, durations, speakers = {}, None, {}, {}
    if not cfg.unfreeze:  # every split once, whole: all tasks read the same cache
        states = {name: extract(encoder, cuts, cache_dir / name, device=dev, dtype=cache_dtype,
                                progress=progress) for name, cuts in splits.items()}
        if trials:
            sv_states = extract(encoder, _long_enough(encoder, sv, "sv"), cache_dir / "sv", device=dev,
                                dtype=cache_dtype, progress=progress)
            kept = [t for t in trials if t[1] in sv_states and t[2] in sv_states]
            if len(kept) < len(trials):
                log.warning("%d trials dropped: their audio was unusable", len(trials) - len(kept))
            if len({t for t, _, _ in kept}) < 2:
                log.warning("%s: the usable trials are not of both kinds (target and non-target): "
                            "speaker verification (EER) is skipped", trials_path)
                kept = []
            trials, get_sv, durations = kept, sv_states.batch, {c.id: c.duration for c in sv}
            speakers = {c.id: c.supervisions[0].speaker for c in sv}

    def get(ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for s in states.values():
            if ids[0] in s:
                return s.batch(ids)
        raise KeyError(ids[0])

    results = {}
    for task in tasks:
        data = task_data(task, splits, trials)
        if cfg.unfreeze:
            result = _finetune(encoder, data, cfg, dev, progress, splits)
        else:
            # items whose audio was unusable are not in the cache: drop them, counted
            for name in ("train", "dev", "test"):
                kept = [it for it in getattr(data, name) if it.cut_id in states[name]]
                if len(kept) < len(getattr(data, name)):
                    log.warning("%s/%s: %d items skipped (bad audio)", task, name, len(getattr(data, name)) - len(kept))
                setattr(data, name, kept)
            first = states["train"]
            rate = first.frame_rate({it.cut_id: it.duration for it in data.train})
            result, _ = train_probe(task, data, get, first.num_layers, first.dim, cfg, device=dev,
                                    get_sv=get_sv if task == "speaker" else None, sv_durations=durations,
                                    sv_speakers=speakers,
                                    progress=progress, frame_rate=rate)
            result["frame_rate"] = rate
        result["encoder"] = dict(record)
        # which test set: the report compares only models tested on the same one
        test_ids = "\n".join(sorted(it.cut_id for it in data.test)).encode()
        result["data"] = {"folder": str(data_dir.resolve()), "test_items": len(data.test),
                          "test_ids": hashlib.sha1(test_ids).hexdigest()[:16]}
        write_result(out_dir, task, result)
        results[task] = result
    return results


def _finetune(encoder: Encoder, data, cfg: ProbeConfig, device: torch.device, progress: bool,
              splits: dict[str, list]) -> dict:
    """ASR with the encoder trained too: hidden states computed in every step, with gradient."""
    module = encoder.module
    module.requires_grad_(True)
    by_id = {c.id: c for cuts in splits.values() for c in cuts}
    for name in ("train", "dev", "test"):  # no cache to leave bad audio out: read it all once, first
        items, kept = getattr(data, name), []
        for it in tqdm(items, desc=f"check audio {name}", unit="clip", disable=not progress):
            try:
                load_mono(by_id[it.cut_id], module.sample_rate)
                kept.append(it)
            except BadAudio as e:
                log.warning("skipping %s (cut %s): %s", e.path, it.cut_id, e.reason)
        if len(kept) < len(items):
            log.warning("asr/%s: %d items skipped (bad audio)", name, len(items) - len(kept))
        if not kept:
            raise ValueError(f"asr: no usable audio in the {name} split")
        setattr(data, name, kept)

    def get(ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(module.training):
            return encode_cuts(module, [by_id[i] for i in ids], device)

    first = data.train[0]
    with torch.no_grad():
        probe_input, lengths = encode_cuts(module, [by_id[first.cut_id]], device)
    rate = float(lengths[0]) / first.duration
    result, _ = train_probe("asr", data, get, probe_input.shape[0], probe_input.shape[-1], cfg, device=device,
                            encoder=module, progress=progress, frame_rate=rate)
    result["unfreeze"] = True
    return result
