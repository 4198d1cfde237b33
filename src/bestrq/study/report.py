"""The study's results: ``results.json``, ``report.md`` and plots, with a 95% interval on every figure.

``results.json`` (fractions throughout)::

    {"commit", "commits", "machine", "command", "seconds", "sessions", "stages": {STAGE: seconds},
     "corpora": {"pretrain", "probe"},
     "leakage": {"probe_test_texts_in_probe_train", "probe_test_texts_in_pretraining", ... : 0, "sv_voices", ...},
     "pretraining": {MODEL: {"config", "role", "parameters", "peak_lr",
                             "sweep": {"steps", "tried": [{"lr", "dev_accuracy", "dev_reference"}], "chosen"},
                             "runs": [{"name", "seed", "steps", "seconds", "update_seconds", "update_windows",
                                       "audio_hours", "dev_accuracy", "dev_reference", "reference", "peak_lr",
                                       "curve"}],
                             "time_per_update": {"value", "ci", "windows", "units", "unit": "run"},
                             "dev_ratio": {"mean", "sd", "ci"}, "flattening", the fewest "steps" of its runs,
                             and the means over runs of "seconds", "audio_hours", "dev_accuracy",
                             "dev_reference"; "seconds_per_update"}},
     "timing": {"machine", "rounds", "steps", "models": {MODEL: {"value", "ci", "windows", "units", "unit": "round"}},
                "vs_bestrq": {MODEL: {"value", "ci", "units"}}},
     "time_per_update_vs_bestrq": the timing stage's vs_bestrq,
     "tasks": {TASK: {"metric", "higher_is_better", "n_test", "unit", "units", "margin",
                      "models": {MODEL: {"value", "ci", "runs", "run_sd", "probes", "epochs", "best_epochs",
                                         "stopped", "layer_weights"}},
                      "comparisons": {"A-B": {"diff", "ci90", "ci95", "verdict"}}}},
     "differences": {TASK: {"A-B": {"value", "ci", "ci90", "margin", "verdict"}}}}

MODEL is bestrq, wav2vec2 (each ``pretrain.runs`` runs), random (the initial weights of each BEST-RQ
run), fbank, or the ablation's name; the timing stage times bestrq, wav2vec2 and
``pretrain.timing_name``. A model's ``runs`` under ``tasks`` are each
run's value (the mean of its probe seeds); ``probes`` each probe's. A verdict (``probes.stats.verdict``)
is better, worse, equivalent (within the margin of ``probe.margins``, fixed before the run) or
inconclusive, said of A against B; ``differences`` holds the same comparisons as ``comparisons``.

TASK is asr (CER), speaker_id (accuracy), speaker_eer (EER), emotion (accuracy) or intent
(accuracy); intervals are those of :mod:`bestrq.probes.stats`. ``unit`` is what their bootstrap
resamples: ``speaker`` where the probes named each item's speaker (every task of a corpus with
speakers), else ``utterance`` (``trial`` for the EER); ``units`` how many there are.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..probes.stats import LOWER_IS_BETTER, VERDICTS, difference, estimate, verdict

log = logging.getLogger(__name__)

# study task -> (probe task, metric)
TASKS = {"asr": ("asr", "cer"), "speaker_id": ("speaker", "accuracy"), "speaker_eer": ("speaker", "eer"),
         "emotion": ("emotion", "accuracy"), "intent": ("intent", "accuracy"), "language": ("language", "accuracy")}
# (A, B, whether their runs pair up: BEST-RQ's run R and the random init it started from)
PAIRS = (("bestrq", "wav2vec2", False), ("bestrq", "random", True), ("bestrq", "fbank", False),
         ("wav2vec2", "fbank", False))
LABELS = {"bestrq": "BEST-RQ", "wav2vec2": "wav2vec 2.0", "random": "random init", "fbank": "fbank"}
NAMES = {"asr": "speech recognition", "speaker_id": "speaker identification", "speaker_eer": "speaker verification",
         "emotion": "emotion recognition", "intent": "intent classification", "language": "language identification"}
FILES = ("results.json", "report.md", "pretraining.png", "tasks.png", "layer_weights.png")


def pretraining(cfg, out: Path, planned: list) -> dict:
    """Per model: its runs' summaries, its encoder's parameters, its sweep, its time per update over the
    windows of all its runs, and the means over runs of the per-run figures. ``planned``: the compared
    runs and the ablation (``study.pretraining.Run``)."""
    from .pretraining import encoder_parameters, run_summary, sweep_result, t_interval, time_per_update

    models: dict[str, dict] = {}
    for run in planned:
        entry = models.setdefault(run.model, {"config": run.config, "role": run.role, "runs": []})
        entry["runs"].append(run_summary(out / "pretrain" / run.name, run))
    for model, entry in models.items():
        runs = entry["runs"]
        entry["parameters"] = encoder_parameters(out / "pretrain" / runs[0]["name"])
        entry["sweep"] = sweep_result(cfg, out, model) if model in ("bestrq", "wav2vec2") else None
        entry["time_per_update"] = time_per_update([r["update_windows"] for r in runs], unit="run")
        for key in ("steps", "seconds", "audio_hours", "dev_accuracy", "dev_reference"):
            values = [r[key] for r in runs if r[key] is not None]
            entry[key] = float(np.mean(values)) if values else None
        entry["steps"] = min(r["steps"] for r in runs)
        entry["seconds_per_update"] = entry["time_per_update"]["value"]
        entry["reference"], entry["peak_lr"] = runs[0]["reference"], runs[0]["peak_lr"]
        ratios = [r["dev_accuracy"] / r["dev_reference"] for r in runs if r["dev_accuracy"] and r["dev_reference"]]
        entry["dev_ratio"] = {"mean": float(np.mean(ratios)) if ratios else None,
                              "sd": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else None,
                              "ci": t_interval(ratios)}
        entry["flattening"] = _flattening(runs)
    return models


def _flattening(runs: list[dict]) -> float | None:
    """How much the dev accuracy over its reference still rose over the last quarter of the updates, as a
    fraction of its value there (mean over runs): near 0 once the curve has flattened."""
    rises = []
    for r in runs:
        valid = [c for c in r["curve"] if c["split"] == "valid" and c.get("baseline_accuracy")]
        if len(valid) < 2:
            continue
        last = valid[-1]
        before = min(valid, key=lambda c: abs(c["step"] - 0.75 * last["step"]))
        ratio = [c["accuracy"] / c["baseline_accuracy"] for c in (before, last)]
        if before is not last and ratio[0] > 0:
            rises.append(ratio[1] / ratio[0] - 1)
    return float(np.mean(rises)) if rises else None


def gather(cfg, out: Path) -> tuple[dict, dict]:
    """Per study task: each model's estimate over its runs; and the comparisons of the pairs probed."""
    from ..probes.results import read_result, result_path
    from .probing import probe_folder, replicates

    tasks, differences, sheets_of, test_ids = {}, {}, {}, {}
    for task, (probe_task, metric) in TASKS.items():
        if probe_task not in cfg.probe.tasks:
            continue
        entry = {"metric": metric, "higher_is_better": metric not in LOWER_IS_BETTER, "n_test": 0, "models": {}}
        margin = getattr(cfg.probe.margins, metric)
        for name in cfg.probe.models:
            probes = [(run, read_result(result_path(probe_folder(out, name, run, s), probe_task), probe_task))
                      for run in range(replicates(cfg, name)) for s in range(cfg.probe.seeds)]
            lacking = [run for run, r in probes if metric not in r.get("sheets", {})]
            probes = [(run, r) for run, r in probes if metric in r.get("sheets", {})]
            if lacking and probes:
                log.warning("%s: %d probe result(s) of %s have no %s scores (runs %s): left out",
                            task, len(lacking), name, metric, sorted(set(lacking)))
            if not probes:  # e.g. no verification trials in this corpus
                continue
            sheets, runs = [r["sheets"][metric] for _, r in probes], [run for run, _ in probes]
            ids = {json.dumps(r.get("test_ids")) for _, r in probes} | set(test_ids.get(task, ()))
            if len(ids) > 1:
                raise ValueError(f"{task}: the probes of {name} (or of another model) were tested on other "
                                 "utterances: probe them again on the same corpus")
            test_ids[task] = ids
            e = estimate(metric, sheets, cfg.probe.replicates, runs=runs)
            sheets_of[task, name] = sheets, runs
            entry["n_test"] = e.n
            entry["unit"] = ("speaker" if "unit" in sheets[0] else "trial" if metric == "eer" else "utterance")
            entry["units"] = len(set(sheets[0]["unit"])) if "unit" in sheets[0] else e.n
            results = [r for _, r in probes]
            entry["models"][name] = {"value": e.value, "ci": list(e.ci), "runs": e.runs,
                                     "run_sd": float(np.std(e.runs, ddof=1)) if len(e.runs) > 1 else None,
                                     "probes": [r["test"][metric] for r in results],
                                     "epochs": [r["epochs"] for r in results],
                                     "best_epochs": [r["best_epoch"] for r in results],
                                     "stopped": [r.get("stopped", "?") for r in results],
                                     "layer_weights": np.mean([r["layer_weights"] for r in results], axis=0).tolist()}
        if entry["models"]:
            entry["margin"] = margin
            tasks[task] = entry
        for a, b, paired in PAIRS:
            if (task, a) in sheets_of and (task, b) in sheets_of:
                (sa, ra), (sb, rb) = sheets_of[task, a], sheets_of[task, b]
                paired = paired and sorted(set(ra)) == sorted(set(rb))
                d = difference(metric, sa, sb, cfg.probe.replicates, runs_a=ra, runs_b=rb, paired_runs=paired)
                differences.setdefault(task, {})[f"{a}-{b}"] = {
                    "value": d.value, "ci": list(d.ci), "ci90": list(d.ci90), "margin": margin,
                    "verdict": verdict(d, metric, margin), "runs": d.runs, "paired_runs": paired}
    for task, pairs in differences.items():  # the layout: each task's comparisons beside its models
        tasks[task]["comparisons"] = {pair: {"diff": d["value"], "ci90": d["ci90"], "ci95": d["ci"],
                                             "verdict": d["verdict"]} for pair, d in pairs.items()}
    return tasks, differences


def write_results(cfg, out: Path, pre_data: Path, probe_data: Path, session, compared: list, timing_runs: list
                  ) -> dict:
    """Write results.json, report.md and the plots (and publish them) from the study folder; ``compared``
    and ``timing_runs``: the runs the study planned (``study.pretraining.Run``)."""
    from ..synth.leakage import overlaps
    from .pretraining import timing
    from .sessions import machine

    tasks, differences = gather(cfg, out)
    commits = list(dict.fromkeys(s["commit"] for s in session.sessions))
    pre = pretraining(cfg, out, compared)
    timed = timing(cfg, out, timing_runs)
    if pre.get("bestrq", {}).get("parameters") and pre.get("wav2vec2", {}).get("parameters"):
        pre["wav2vec2"]["parameters_vs_bestrq"] = pre["wav2vec2"]["parameters"] / pre["bestrq"]["parameters"]
    same = Path(probe_data).resolve() == Path(pre_data).resolve()  # one corpus: pre-training reads some splits
    leakage = overlaps(probe_data, pre_data, cfg.pretrain.train_split.split("+") if same else None)
    leaked = {k: v for k, v in leakage.items() if k.startswith("probe_") and isinstance(v, int) and v}
    if leaked:
        log.warning("the probe corpus shares transcripts with what the models learnt from: %s", leaked)
    results = {
        "commit": commits[-1], "commits": commits, "machine": machine(),
        "command": session.sessions[0]["command"], "seconds": session.seconds,
        "sessions": [{k: s[k] for k in ("started", "seconds", "commit")} for s in session.sessions],
        "stages": _stage_seconds(session.sessions),
        "corpora": {"pretrain": _summary(pre_data), "probe": _summary(probe_data)},
        "leakage": leakage,
        "pretraining": pre, "timing": timed, "time_per_update_vs_bestrq": timed["vs_bestrq"],
        "tasks": tasks, "differences": differences,
    }
    with open(out / "results.json", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
    plots(results, out)
    (out / "report.md").write_text(markdown(results), encoding="utf-8")
    if cfg.publish:
        dest = Path(cfg.publish)
        dest.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (out / name).is_file():
                shutil.copyfile(out / name, dest / name)
    return results


def _stage_seconds(sessions: list[dict]) -> dict[str, float]:
    """Seconds of each finished stage, summed over sessions: from the stage before it to it."""
    seconds: dict[str, float] = {}
    for s in sessions:
        at = 0.0
        for st in s.get("stages", []):
            seconds[st["stage"]] = seconds.get(st["stage"], 0.0) + st["at"] - at
            at = st["at"]
    return {k: round(v, 1) for k, v in seconds.items()}


def _summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.is_file():
        return {"folder": str(folder)}
    s = json.loads(path.read_text())
    return {"folder": str(folder), "hours": s.get("hours"), "utterances": s.get("utterances"),
            "speakers": s.get("speakers"), "sv_trials": s.get("sv_trials"),
            "splits": {k: {"utterances": v["utterances"], "hours": v["hours"], "speakers": v["speakers"]}
                       for k, v in s.get("splits", {}).items()}}


def sentence(r: dict, pair: str) -> str | None:
    """"A against B: better on ...; worse on ...; equivalent on ...; inconclusive on ...", from ``differences``."""
    said = {task: pairs[pair]["verdict"] for task, pairs in r["differences"].items() if pair in pairs}
    if not said:
        return None
    a, b = pair.split("-")
    parts = []
    for word in VERDICTS:
        tasks = [NAMES.get(t, t) for t, v in said.items() if v == word]
        if tasks:
            parts.append(f"*{word}{' within the margin' if word == 'equivalent' else ''}* on {', '.join(tasks)}")
    return f"{LABELS[a]} against {LABELS[b]}: " + "; ".join(parts) + "."


def pct(v: float | None) -> str:
    """A fraction in percent, one decimal; "–" for none."""
    return "–" if v is None else f"{100 * v:.1f}"


def _ratio(p: dict) -> str:
    acc, ref = p["dev_accuracy"], p["dev_reference"]
    return f"{acc / ref:.2f}" if acc is not None and ref else "–"


def _seconds(t: dict) -> str:
    return "–" if t["value"] is None else f"{t['value']:.3f} [{t['ci'][0]:.3f}, {t['ci'][1]:.3f}]"


def markdown(r: dict) -> str:
    from .pretraining import time_per_update

    pre = r["pretraining"]
    lines = ["# BEST-RQ against wav2vec 2.0: the study", "",
             f"- command: `{r['command']}`", f"- commit: {', '.join(r['commits'])}", f"- machine: {r['machine']}",
             f"- total time: {r['seconds'] / 3600:.2f} h over {len(r['sessions'])} session(s)", "",
             "## Pre-training at equal updates", "",
             ("Time per update leaves validation and checkpoints out. A run's interval is a bootstrap over its 10 "
              "windows; a model's is Student t over its runs' means (a study resumed across sessions may run them "
              "on machines of different speed: the timing stage below compares speed on one). x reference: the last dev masked accuracy over its "
              "reference (the most frequent code for BEST-RQ, chance for wav2vec 2.0)."), "",
             ("| run | seed | peak lr | updates | time (min) | s / update [95%] | audio seen (h) | dev accuracy | "
              "reference | x reference |"), "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for m in pre.values():
        for run in m["runs"]:
            lr = "–" if run["peak_lr"] is None else f"{run['peak_lr']:g}"
            lines.append(f"| {run['name']} | {run['seed']} | {lr} | {run['steps']} | {run['seconds'] / 60:.1f} | "
                         f"{_seconds(time_per_update([run['update_windows']]))} | {run['audio_hours']:.2f} | "
                         f"{pct(run['dev_accuracy'])}% | {run['reference']} {pct(run['dev_reference'])}% | "
                         f"{_ratio(run)} |")
    lines += ["", ("| model | role | encoder parameters | runs | peak lr (sweep: dev accuracy) | s / update [95%] | "
                   "x reference (mean ± sd over runs) | rise over the last quarter |"), "|---|---|---:|---:|---|---:|---:|---:|"]
    for name, m in pre.items():
        sweep = m.get("sweep")
        lr = "–" if m["peak_lr"] is None else f"{m['peak_lr']:g}"
        if sweep:
            lr += " (" + ", ".join(f"{t['lr']:g}: {pct(t['dev_accuracy'])}%" for t in sweep["tried"]) + \
                  f"; {sweep['steps']} updates)"
        ratio = m["dev_ratio"]
        said = "–" if ratio["mean"] is None else f"{ratio['mean']:.2f}" + (
            f" ± {ratio['sd']:.2f}" if ratio["sd"] is not None else "")
        rise = "–" if m["flattening"] is None else f"{100 * m['flattening']:+.1f}%"
        params = "–" if m["parameters"] is None else f"{m['parameters']:,}"
        if m.get("parameters_vs_bestrq"):
            params += f" ({m['parameters_vs_bestrq']:.2f}x BEST-RQ's)"
        lines.append(f"| {name} (`{m['config']}`) | {m['role']} | {params} | {len(m['runs'])} | {lr} | "
                     f"{_seconds(m['time_per_update'])} | {said} | {rise} |")
    timed = r.get("timing") or {}
    if timed.get("models"):
        lines += ["", "### Time per update, in the timing stage", "",
                  (f"{timed['rounds']} rounds on one machine ({timed['machine']}), each training every model for "
                   f"{timed['steps']} updates in turn on the same batches; each run's first window (warm-up) left out. "
                   "Seconds per update with 95% Student t intervals over the rounds' means; each ratio to BEST-RQ's "
                   "is taken round by round (a drift of the machine between rounds cancels), its interval Student "
                   "t over the rounds on the log scale:"), "",
                  "| model | s / update [95%] | windows | x BEST-RQ's [95%] |", "|---|---:|---:|---:|"]
        for name, t in timed["models"].items():
            ratio = timed["vs_bestrq"].get(name)
            said = "1" if name == "bestrq" else "–" if not ratio or ratio["value"] is None else \
                f"**{ratio['value']:.2f}** [{ratio['ci'][0]:.2f}, {ratio['ci'][1]:.2f}]"
            lines.append(f"| {name} | {_seconds(t)} | {t['windows']} | {said} |")
        lines += ["", "The paper: wav2vec 2.0 BASE took 2.4x BEST-RQ's time, on GPUs, with its conv waveform encoder."]
    leak = r.get("leakage") or {}
    lines += ["", "![pre-training curves](pretraining.png)", "", "## Leakage", "",
              ("Probe test and dev utterances whose exact transcript occurs in the probe's train split or in the "
               "pre-training corpus (each must be 0):"), ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in leak.items()
              if k.startswith("probe_") and not isinstance(v, list)]
    if leak.get("sv_voices") is not None and leak.get("sv_voices_in_pretraining") is not None:
        lines.append(f"- the verification speakers use {leak['sv_voices']} eSpeak voices (accent and variant); "
                     f"{leak['sv_voices_in_pretraining']} of them also speak in the pre-training corpus (with "
                     "other speakers' pitch, rate and vocal-tract warp)")
    lines += ["", "## Downstream tasks (frozen encoders)", "",
              ("Each value is the mean over the pre-training runs (each the mean of its probe seeds), with the "
               "95% interval of that mean: a bootstrap over the task's unit (speakers, with all their utterances "
               "or trials) combined with the runs' spread (see `src/bestrq/probes/stats.py`). Percent."), ""]
    models = list(dict.fromkeys(m for t in r["tasks"].values() for m in t["models"]))
    lines += ["| task (metric, test items) | " + " | ".join(LABELS.get(m, m) for m in models) + " |",
              "|---|" + "---:|" * len(models)]
    for task, t in r["tasks"].items():
        cells = []
        for m in models:
            e = t["models"].get(m)
            cells.append("–" if e is None else f"{pct(e['value'])} [{pct(e['ci'][0])}, {pct(e['ci'][1])}]")
        arrow = "higher" if t["higher_is_better"] else "lower"
        lines.append(f"| {task} ({t['metric']}, {arrow} is better, n={t['n_test']}, {t.get('units', '?')} "
                     f"{t['unit']}s) | " + " | ".join(cells) + " |")
    lines += ["", "![tasks with intervals](tasks.png)", "", "## Comparisons (A minus B, percentage points)", "",
              ("Each ends in a verdict on A: *equivalent* when the 90% interval of the difference lies inside "
               "the margin fixed before the run (two one-sided tests), else *better* or *worse* when the 95% "
               "interval leaves 0 on that side, else *inconclusive*."), "",
              "| task | A - B | difference [95%] | 90% interval | margin | verdict on A |", "|---|---|---:|---:|---:|---|"]
    for task, pairs in r["differences"].items():
        for pair, d in pairs.items():
            lines.append(f"| {task} | {pair} | {100 * d['value']:+.1f} [{100 * d['ci'][0]:+.1f}, "
                         f"{100 * d['ci'][1]:+.1f}] | [{100 * d['ci90'][0]:+.1f}, {100 * d['ci90'][1]:+.1f}] | "
                         f"±{100 * d['margin']:.1f} | {d['verdict']} |")
    for pair in ("bestrq-wav2vec2", "bestrq-random"):
        if said := sentence(r, pair):
            lines += ["", said]
    cut = [(task, m) for task, t in r["tasks"].items() for m, e in t["models"].items() if "epochs" in e["stopped"]]
    lines += ["", "## Probe convergence", "",
              "Every probe trains until its dev score has not improved for the patience; "
              + (f"these reached the epoch limit instead: {', '.join(f'{t}/{m}' for t, m in cut)}." if cut
                 else "none reached the epoch limit."),
              "", "| task | model | epochs (per probe) | best epoch |", "|---|---|---|---|"]
    for task, t in r["tasks"].items():
        for m, e in t["models"].items():
            lines.append(f"| {task} | {m} | {', '.join(map(str, e['epochs']))} | "
                         f"{', '.join(map(str, e['best_epochs']))} |")
    lines += ["", "![learned layer weights](layer_weights.png)", ""]
    return "\n".join(lines)


def plots(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, m) in enumerate(r["pretraining"].items()):
        for j, run in enumerate(m["runs"]):
            valid = [c for c in run["curve"] if c["split"] == "valid" and c.get("baseline_accuracy")]
            train = [c for c in run["curve"] if c["split"] == "train" and "elapsed" in c]
            if not valid or not train:
                continue
            ratio = [c["accuracy"] / c["baseline_accuracy"] for c in valid]
            minutes = np.interp([c["step"] for c in valid], [c["step"] for c in train],
                                [c["elapsed"] for c in train]) / 60
            style = {"color": colours[i % len(colours)], "label": name if j == 0 else None, "alpha": 0.8}
            axes[0].plot([c["step"] for c in valid], ratio, marker=".", **style)
            axes[1].plot(minutes, ratio, marker=".", **style)
            axes[2].plot([c["step"] for c in train], [c["loss"] for c in train], **style)
    axes[0].set(title="dev masked accuracy / its reference", xlabel="updates", ylabel="x reference")
    axes[1].set(title="the same against training time", xlabel="minutes", ylabel="x reference")
    axes[2].set(title="training loss (each objective its own)", xlabel="updates", ylabel="loss")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pretraining.png", dpi=110)
    plt.close(fig)

    tasks = r["tasks"]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(3.2 * max(len(tasks), 1), 3.4), squeeze=False)
    for ax, (task, t) in zip(axes[0], tasks.items()):
        names = list(t["models"])
        values = [100 * t["models"][m]["value"] for m in names]
        err = [[max(100 * (t["models"][m]["value"] - t["models"][m]["ci"][0]), 0) for m in names],
               [max(100 * (t["models"][m]["ci"][1] - t["models"][m]["value"]), 0) for m in names]]
        ax.errorbar(range(len(names)), values, yerr=err, fmt="o", capsize=4)
        ax.set_xticks(range(len(names)), [LABELS.get(m, m) for m in names], rotation=30, fontsize=7)
        ax.set(title=f"{task}: {t['metric']} % ({'higher' if t['higher_is_better'] else 'lower'} better)")
    fig.tight_layout()
    fig.savefig(out / "tasks.png", dpi=110)
    plt.close(fig)

    probe_tasks = {task: t for task, t in tasks.items() if task != "speaker_eer"}
    fig, axes = plt.subplots(1, max(len(probe_tasks), 1), figsize=(3.4 * max(len(probe_tasks), 1), 3.2),
                             squeeze=False)
    for ax, (task, t) in zip(axes[0], probe_tasks.items()):
        for m, e in t["models"].items():
            if len(e["layer_weights"]) > 1:
                ax.plot(e["layer_weights"], marker="o", label=LABELS.get(m, m))
        ax.set(title=f"{task}: layer weights", xlabel="layer (0 = front-end)", ylabel="weight (mean of seeds)")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "layer_weights.png", dpi=110)
    plt.close(fig)
