"""The study's pre-training runs: the learning-rate sweep, the replicated runs, and what each one measured.

    OUT/pretrain/sweep/MODEL-lrLR/   a short run per peak learning rate tried (seed 0)
    OUT/pretrain/MODEL/run-R/        the compared runs: ``pretrain.runs`` per objective, seed R
    OUT/pretrain/NAME/               the ablation, once
    OUT/pretrain/timing/round-K/M/   the timing stage: every model in turn, ``timing_rounds`` times

Each run folder gets a ``finished.json`` when its run reaches its updates: its step and the id of its
final weights, so that a study whose record (``study/record.py``) moved to another machine knows the
run finished, and which weights its probes were made of, without its checkpoints.

Each objective's peak learning rate is the one of its sweep whose last dev masked accuracy is the
highest (each objective on its own dev metric: the share of masked frames whose target it
predicts); without a sweep it is the config's own. Time per update is read from logging windows,
whose ``update_seconds`` leave validation and checkpoints out. The compared runs' own windows are
reported run by run, but a study resumed across sessions may run them on machines of different
speed; the comparison of speed comes from the timing stage, whose short runs of every model take
turns on one machine (``machine.txt``; a session on another redoes the stage), in rounds, so that a
drift of the machine reaches every model alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.metrics import METRICS, read_metrics
from ..runtime.runs import RUN_CONFIG, run_config

COMPARED = ("bestrq", "wav2vec2")
TIMING_WINDOWS = 10  # per run: enough for an interval of the time per update, and to see a drift


@dataclass(frozen=True)
class Run:
    name: str  # its folder under OUT/pretrain
    model: str  # bestrq, wav2vec2, the ablation's or the timing run's name
    config: str  # a preset or YAML file
    sets: tuple[str, ...]  # --set items, its folder included
    steps: int
    role: str  # sweep, compared, ablation or timing
    seed: int  # train.seed
    lr: float | None = None  # the peak learning rate it was given (None: the config's)


FINISHED = "finished.json"


def _checkpoint_step(run: Path) -> tuple[Path | None, int]:
    from ..runtime.checkpoint import latest

    last = latest(run)
    return last, int(last.name.split("-")[1]) if last else 0


def finished_step(run: Path) -> int:
    """The step a run folder reached: its newest complete checkpoint's, or what its ``finished.json`` says
    (a run finished on another machine, its checkpoints left there); 0 for none."""
    return max(_checkpoint_step(run)[1], int(_finished(run).get("step", 0)))


def _finished(run: Path) -> dict:
    try:
        marker = json.loads((run / FINISHED).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) and isinstance(marker.get("step"), int) else {}


def has_weights(run: Path) -> bool:
    """Whether the run's weights at the step it reached are here (not only its ``finished.json``)."""
    last, step = _checkpoint_step(run)
    return last is not None and step >= finished_step(run)


def weights_id(run: Path) -> str | None:
    """The id of the weights of the step a run reached, as ``bestrq.load`` gives it (``info["weights_id"]``)
    and probe results record it: from that checkpoint, else from ``finished.json``; None if neither."""
    from ..inference.loading import weights_id as file_id

    if has_weights(run):
        return file_id(_checkpoint_step(run)[0])
    return _finished(run).get("weights_id")


def mark_finished(run: Path) -> None:
    """Write a finished run's ``finished.json`` (its step and weights' id), once its checkpoint has it."""
    from ..files import atomic_path

    if not has_weights(run):
        return
    marker = {"step": finished_step(run), "weights_id": weights_id(run)}
    if _finished(run) != marker:
        with atomic_path(run / FINISHED) as tmp:
            tmp.write_text(json.dumps(marker) + "\n")


def check_planned(run: Run, folder: Path) -> None:
    """A run folder made by an earlier session has the seed and peak learning rate planned now; else (the
    preset or its sweep changed since) the study stops, rather than mix runs of two plans."""
    from ..config import ConfigError

    made = run_config(folder)
    if not made:
        return
    have = {"train.seed": made.get("train", {}).get("seed"), "optim.lr": made.get("optim", {}).get("lr")}
    want = {"train.seed": run.seed, **({"optim.lr": run.lr} if run.lr is not None else {})}
    bad = [k for k, v in want.items() if have[k] != v]
    if bad:
        raise ConfigError(f"{folder}: made with {', '.join(f'{k}={have[k]}' for k in bad)}, but the study now plans "
                          f"{', '.join(f'{k}={want[k]}' for k in bad)}: its preset or sweep changed since; restore "
                          "them, or remove the folder to train that run again")


def _base(cfg, data: Path) -> list[str]:
    p = cfg.pretrain
    return [f"data.corpus={data}", f"data.train_split={p.train_split}", "train.max_minutes=0", *p.common_set]


def _own_sets(cfg, model: str) -> list[str]:
    p = cfg.pretrain
    return list(p.bestrq_set if model == "bestrq" else p.wav2vec2_set)


def _config(cfg, model: str) -> str:
    return cfg.pretrain.bestrq if model == "bestrq" else cfg.pretrain.wav2vec2


def _lr_name(lr: float) -> str:
    return f"{lr:g}"


def sweep_runs(cfg, data: Path, out: Path) -> list[Run]:
    """The short runs of the learning-rate sweep: every peak learning rate of each objective, seed 0."""
    p, runs = cfg.pretrain, []
    for model in COMPARED:
        for lr in (p.bestrq_lrs if model == "bestrq" else p.wav2vec2_lrs):
            name = f"sweep/{model}-lr{_lr_name(lr)}"
            sets = [*_base(cfg, data), *_own_sets(cfg, model), f"train.steps={p.sweep_steps}", f"optim.lr={lr}",
                    "train.seed=0", f"train.out_dir={out / 'pretrain' / name}"]
            runs.append(Run(name, model, _config(cfg, model), tuple(sets), p.sweep_steps, "sweep", 0, float(lr)))
    return runs


def last_dev(run: Path) -> dict:
    """The last validation record of a run folder (empty if none)."""
    valid = [r for r in read_metrics(run / METRICS) if r["split"] == "valid" and "accuracy" in r]
    return valid[-1] if valid else {}


def sweep_result(cfg, out: Path, model: str) -> dict | None:
    """The sweep of one objective: each learning rate's dev accuracy and the chosen one; None without a sweep.
    The chosen rate is the one with the highest last dev accuracy; before every run of the sweep has
    finished there is none (``chosen`` None)."""
    lrs = cfg.pretrain.bestrq_lrs if model == "bestrq" else cfg.pretrain.wav2vec2_lrs
    if not lrs:
        return None
    tried = []
    for lr in lrs:
        folder = out / "pretrain" / "sweep" / f"{model}-lr{_lr_name(lr)}"
        dev = last_dev(folder) if finished_step(folder) >= cfg.pretrain.sweep_steps else {}
        tried.append({"lr": float(lr), "dev_accuracy": dev.get("accuracy"),
                      "dev_reference": dev.get("baseline_accuracy")})
    done = all(t["dev_accuracy"] is not None for t in tried)
    chosen = max(tried, key=lambda t: t["dev_accuracy"])["lr"] if done else None
    return {"steps": cfg.pretrain.sweep_steps, "tried": tried, "chosen": chosen}


def chosen_rates(cfg, out: Path) -> dict[str, float | None]:
    """Each compared objective's peak learning rate from its finished sweep (None: the config's own), said."""
    lrs = {}
    for model in COMPARED:
        found = sweep_result(cfg, out, model)
        lrs[model] = found["chosen"] if found else None
        if found:
            print(f"  {model}: peak learning rate {found['chosen']:g} (dev accuracy "
                  + ", ".join(f"{t['lr']:g}: {t['dev_accuracy']:.4f}" for t in found["tried"]) + ")")
    return lrs


def _run(cfg, data: Path, out: Path, name: str, model: str, config: str, sets: list[str], steps: int, role: str,
         seed: int, lr: float | None) -> Run:
    sets = [*_base(cfg, data), *sets, f"train.steps={steps}", f"train.seed={seed}",
            *([f"optim.lr={lr}"] if lr is not None else []), f"train.out_dir={out / 'pretrain' / name}"]
    return Run(name, model, config, tuple(sets), steps, role, seed, lr)


def compared_runs(cfg, data: Path, out: Path, lrs: dict[str, float | None]) -> list[Run]:
    """The replicated runs, run R of every objective in turn (so that a drift of the machine over the
    hours hits both alike), then the ablation (BEST-RQ's settings and peak learning rate, seed 0)."""
    p, runs = cfg.pretrain, []

    def run(*args) -> Run:
        return _run(cfg, data, out, *args)

    for seed in range(p.runs):
        for model in COMPARED:
            runs.append(run(f"{model}/run-{seed}", model, _config(cfg, model), _own_sets(cfg, model), p.steps,
                            "compared", seed, lrs.get(model)))
    if p.ablation_name:
        runs.append(run(p.ablation_name, p.ablation_name, p.bestrq, [*p.bestrq_set, *p.ablation_set], p.steps,
                        "ablation", 0, lrs.get("bestrq")))
    return runs


def timing_models(cfg) -> list[tuple[str, str, list[str], str]]:
    """(name, config, its --set items, whose learning rate) of each model the timing stage times."""
    p = cfg.pretrain
    models = [("bestrq", p.bestrq, list(p.bestrq_set), "bestrq"), ("wav2vec2", p.wav2vec2, list(p.wav2vec2_set),
                                                                    "wav2vec2")]
    if p.timing_name:  # wav2vec 2.0's settings with another config: its conv waveform encoder
        models.append((p.timing_name, p.timing_config, list(p.wav2vec2_set), "wav2vec2"))
    return models


def timing_runs(cfg, data: Path, out: Path, lrs: dict[str, float | None]) -> list[Run]:
    """The timing stage: in each round, every model for ``timing_steps`` updates on the same batches (seed of
    the round), without validation, one checkpoint at the end, logged in windows of a sixth of the run."""
    p, runs = cfg.pretrain, []
    quiet = ["train.valid_every=0", f"train.checkpoint_every={p.timing_steps}",
             f"train.log_every={p.timing_steps // 6}"]
    for k in range(p.timing_rounds):
        for name, config, sets, lr_of in timing_models(cfg):
            runs.append(_run(cfg, data, out, f"timing/round-{k}/{name}", name, config, [*sets, *quiet], p.timing_steps,
                             "timing", k, lrs.get(lr_of)))
    return runs


def timing(cfg, out: Path, runs: list[Run]) -> dict:
    """The timing stage's result: each model's seconds per update over its rounds (each the mean of its
    windows, the first window of each run, its warm-up, left out), and each one's ratio to BEST-RQ's, round
    by round, with 95% intervals."""
    folder = out / "pretrain" / "timing"
    rounds: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        records = read_metrics(out / "pretrain" / run.name / METRICS)
        rounds.setdefault(run.model, {})[run.seed] = update_windows(records, windows=10**6)[1:]
    from .sessions import MACHINE

    machine = (folder / MACHINE).read_text().strip() if (folder / MACHINE).is_file() else None
    models = {m: time_per_update(list(r.values()), unit="round") for m, r in rounds.items()}
    base = rounds.get("bestrq", {})
    ratios = {m: time_ratio([r[k] for k in sorted(r) if k in base], [base[k] for k in sorted(r) if k in base])
              for m, r in rounds.items() if m != "bestrq"}
    return {"machine": machine, "rounds": cfg.pretrain.timing_rounds, "steps": cfg.pretrain.timing_steps,
            "models": models, "vs_bestrq": ratios}


def update_windows(records: list[dict], windows: int = TIMING_WINDOWS) -> list[float]:
    """Seconds per update in ``windows`` consecutive stretches of a run's logged training windows, each
    the sum of its windows' update time over their updates; validation and checkpoints are not in them.
    A window counts the updates its process made (``updates``: after a resume, fewer than its steps).
    Records from before ``update_seconds`` was logged fall back on ``elapsed``, which holds them."""
    train = [r for r in records if r["split"] == "train"]
    spans, last, previous = [], 0, 0.0
    for r in train:
        n = int(r.get("updates", r["step"] - last))
        if r["step"] <= last or n <= 0:
            continue
        seconds = r["update_seconds"] * n if "update_seconds" in r else r.get("elapsed", 0.0) - previous
        spans.append((n, seconds))
        last, previous = r["step"], r.get("elapsed", previous)
    if not spans:
        return []
    groups = np.array_split(np.arange(len(spans)), min(windows, len(spans)))
    return [sum(spans[i][1] for i in g) / sum(spans[i][0] for i in g) for g in groups]


def run_summary(folder: Path, run: Run) -> dict:
    """What one run measured: updates, time, audio, last dev accuracy and its reference, time per update."""
    records = read_metrics(folder / METRICS)
    train = [r for r in records if r["split"] == "train"]
    dev = last_dev(folder)
    cfg = run_config(folder)
    windows = update_windows(records)
    return {"name": run.name, "seed": run.seed, "steps": finished_step(folder),
            "seconds": max((r.get("elapsed", 0.0) for r in train), default=0.0),
            "update_seconds": float(np.mean(windows)) if windows else None, "update_windows": windows,
            "audio_hours": sum(r.get("audio_seconds", 0.0) for r in train) / 3600,
            "dev_accuracy": dev.get("accuracy"), "dev_reference": dev.get("baseline_accuracy"),
            "reference": "chance" if cfg.get("objective") == "wav2vec2" else "most frequent code",
            "peak_lr": cfg.get("optim", {}).get("lr"),
            "curve": [{k: r[k] for k in ("step", "split", "accuracy", "baseline_accuracy", "loss", "elapsed",
                                         "update_seconds") if k in r} for r in records]}


def _percentiles(draws: np.ndarray) -> list[float]:
    return [float(x) for x in np.percentile(draws, [2.5, 97.5])]


def t_interval(values, seed: int = 0, replicates: int = 20000) -> list[float] | None:
    """The 95% Student t interval of the mean of ``values`` (one per run or round, len - 1 degrees of
    freedom), from draws as the probes' intervals are made; None for fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return None
    t = np.random.default_rng(seed).standard_t(v.size - 1, size=replicates)
    return _percentiles(v.mean() + v.std(ddof=1) / np.sqrt(v.size) * t)


def time_per_update(units: list[list[float]], unit: str = "run", seed: int = 0, replicates: int = 20000) -> dict:
    """Mean seconds per update over ``units`` (a model's runs, or the timing stage's rounds), each the mean of
    its windows, with a 95% interval: Student t over the units (units - 1 degrees of freedom) where there
    are two or more, so that the variation between runs or rounds is in it; a bootstrap over the windows of
    a single unit otherwise."""
    units = [np.asarray(u, dtype=float) for u in units if len(u)]
    windows = int(sum(u.size for u in units))
    if not units:
        return {"value": None, "ci": None, "windows": 0, "units": 0, "unit": unit}
    if len(units) == 1:
        w = units[0]
        value = w.mean()
        ci = _percentiles(np.random.default_rng(seed).choice(w, size=(2000, w.size)).mean(axis=1))
    else:
        means = [u.mean() for u in units]
        value, ci = np.mean(means), t_interval(means, seed, replicates)
    return {"value": float(value), "ci": ci, "windows": windows, "units": len(units), "unit": unit}


def time_ratio(a: list[list[float]], b: list[list[float]], seed: int = 0, replicates: int = 20000) -> dict:
    """a's seconds per update over b's, unit by unit: ``a[i]`` and ``b[i]`` are the windows of one timing
    round, in which both models ran on one machine one after the other, so that a drift of the machine
    between rounds cancels. The geometric mean of the rounds' ratios with a 95% Student t interval over them
    on the log scale (rounds - 1 degrees of freedom); one round: a bootstrap over each one's windows."""
    pairs = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for x, y in zip(a, b, strict=True)
             if len(x) and len(y)]
    if not pairs:
        return {"value": None, "ci": None, "units": 0}
    if len(pairs) == 1:
        (wa, wb), = pairs
        rng = np.random.default_rng(seed)
        draws = rng.choice(wa, size=(2000, wa.size)).mean(axis=1) / rng.choice(wb, size=(2000, wb.size)).mean(axis=1)
        return {"value": float(wa.mean() / wb.mean()), "ci": _percentiles(draws), "units": 1}
    logs = np.log([x.mean() / y.mean() for x, y in pairs])
    return {"value": float(np.exp(logs.mean())), "ci": [float(np.exp(x)) for x in t_interval(logs, seed, replicates)],
            "units": int(logs.size)}


def encoder_parameters(folder: Path) -> int | None:
    """Parameters of the network a probe reads (front-end and encoder: what ``encode`` runs), counted as
    those that get a gradient from its hidden states; None if the run folder has no config."""
    import torch

    from ..config import load_config
    from ..objectives import build_model

    path = folder / RUN_CONFIG
    if not path.is_file():
        return None
    model = build_model(load_config(str(path)))
    waveform = torch.randn(1, model.sample_rate)
    out = model.encode(waveform, torch.tensor([model.sample_rate]))
    sum(h.sum() for h in out.hidden_states).backward()
    return sum(p.numel() for p in model.parameters() if p.grad is not None)
