"""The study's probes: every encoder of every pre-training run, on every task, with its own seeds.

    OUT/probes/MODEL/run-R/cache/                  an encoder's hidden states, shared by its probe seeds
                                                   (fbank: OUT/probes/fbank/cache, one for all)
    OUT/probes/MODEL/run-R/seed-S/probe_TASK.json  one probe, trained until its dev score stops improving

MODEL is bestrq or wav2vec2 (run R's weights), random (the weights BEST-RQ's run R started from),
fbank (no weights: a replicate of its probes per run), or the ablation's name (run 0 only).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..runtime.runs import RUN_CONFIG

MODELS = ("bestrq", "wav2vec2", "random", "fbank")


def replicates(cfg, name: str) -> int:
    """Pre-training runs of a probed model: the compared objectives' and the random inits' (one per BEST-RQ
    run), and fbank's replicates of its probes; one for the ablation."""
    return cfg.pretrain.runs if name in MODELS else 1


def run_folder(out: Path, name: str, run: int = 0) -> Path:
    """The pre-training run an encoder is read from (``random``: BEST-RQ's, whose config builds it)."""
    if name == "random":
        name = "bestrq"
    return out / "pretrain" / name / f"run-{run}" if name in MODELS else out / "pretrain" / name


def encoder_spec(name: str, out: Path, run: int = 0) -> str:
    if name == "fbank":
        return "fbank"
    if name == "random":  # exactly the network BEST-RQ's run started from (loaded with seed ``run``)
        return f"random:{run_folder(out, name, run) / RUN_CONFIG}"
    return str(run_folder(out, name, run))


def probe_folder(out: Path, name: str, run: int, seed: int) -> Path:
    return out / "probes" / name / f"run-{run}" / f"seed-{seed}"


def probe_seed(run: int, seed: int) -> int:
    """The probe's own seed: another for every run, so that runs differ in their probes as well; the same
    whatever ``probe.seeds`` (more seeds add probes, and keep those made)."""
    return run * 1000 + seed


def init_seed(name: str, out: Path, run: int) -> int:
    """The seed ``random:`` builds BEST-RQ's run ``run`` with: its ``train.seed``, as its run folder says."""
    from ..runtime.runs import run_config

    if name != "random":
        return 0
    return int(run_config(run_folder(out, name, run))["train"]["seed"])


def probe_config(cfg, seed: int):
    """The probe's settings: the study's ``probe`` section's (``ProbeSettings``), and its own seed."""
    from dataclasses import fields

    from ..probes.tasks import ProbeConfig, ProbeSettings

    return ProbeConfig(**{f.name: getattr(cfg.probe, f.name) for f in fields(ProbeSettings)}, seed=seed)


def names_speakers(data: Path) -> bool:
    """Whether the probe corpus's test utterances name their speakers (then every score sheet names them)."""
    from ..data.manifest import open_split

    cut = next(iter(open_split(data, "test")), None)
    return cut is not None and bool(cut.supervisions) and bool(cut.supervisions[0].speaker)


def _done(path: Path, cfg, record: dict, units: bool = True) -> bool:
    """Whether a probe result exists for this encoder and these settings (a resumed study skips it); with
    ``units``, whether its score sheets name each item's speaker too."""
    from ..probes.encoders import same_encoder
    from ..probes.results import read_result

    try:
        result = read_result(path, path.stem.removeprefix("probe_"))
    except ValueError:  # none yet, or unreadable: probed again
        return False
    made = result.get("config")
    # a setting added since the result was written counts as its default: the result is not redone for it
    made = {**asdict(type(cfg)()), **made} if isinstance(made, dict) else None
    sheets = result.get("sheets")
    # a result from before its sheets named each item's speaker cannot be resampled by speaker
    named = isinstance(sheets, dict) and all(isinstance(s, dict) and "unit" in s for s in sheets.values())
    return (made == asdict(cfg) and isinstance(sheets, dict) and (named or not units)
            and isinstance(result.get("encoder"), dict) and same_encoder(result["encoder"], record))


def todo(cfg, out: Path, name: str, run: int, record: dict, units: bool) -> dict[int, list[str]]:
    """The tasks still to probe for each probe seed of one encoder, given its record (for a trained run,
    ``{"weights_id": ...}`` is enough: its weights need not be at hand to know its probes are made)."""
    from ..probes.results import result_path

    left = {}
    for seed in range(cfg.probe.seeds):
        pcfg = probe_config(cfg, probe_seed(run, seed))
        tasks = [t for t in cfg.probe.tasks
                 if not _done(result_path(probe_folder(out, name, run, seed), t), pcfg, record, units)]
        if tasks:
            left[seed] = tasks
    return left


def trained_record(out: Path, name: str, run: int) -> dict | None:
    """The identity of a trained run's weights, as its probe results record it; None for fbank and random."""
    from .pretraining import weights_id

    if name in ("fbank", "random"):
        return None
    return {"weights_id": weights_id(run_folder(out, name, run))}


def probe_model(cfg, out: Path, data: Path, name: str, run: int, saved, progress: bool, units: bool) -> None:
    """Make the probes of one encoder that are missing, calling ``saved(stage)`` after each probe seed."""
    from ..probes import run_probes
    from ..probes.encoders import load_encoder

    p = cfg.probe
    known = trained_record(out, name, run)
    if known is not None and not todo(cfg, out, name, run, known, units):
        return  # made, of these weights: no need to load them (they may be on another machine)
    encoder = load_encoder(encoder_spec(name, out, run), p.device, seed=init_seed(name, out, run))
    record = {"name": encoder.name, "spec": encoder.spec, **encoder.info}
    cache = out / "probes" / name / ("cache" if name == "fbank" else f"run-{run}/cache")
    for seed, tasks in todo(cfg, out, name, run, record, units).items():
        print(f"  {name} run {run}, seed {seed}: {', '.join(tasks)}", flush=True)
        run_probes(encoder, tasks, data, probe_folder(out, name, run, seed), probe_config(cfg, probe_seed(run, seed)),
                   device=p.device, progress=progress, cache_dir=cache)
        saved(f"probes {name} run {run} seed {seed}")
