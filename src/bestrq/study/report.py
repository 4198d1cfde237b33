"""The study's results: ``results.json``, ``report.md`` and plots, with a 95% interval on every figure.

``results.json`` (fractions throughout)::

    {"commit", "commits", "machine", "command", "seconds", "sessions",
     "pretraining": {NAME: {"steps", "seconds", "seconds_per_update", "audio_hours", "dev_accuracy",
                            "dev_reference", "reference", "curve": [...]}},
     "tasks": {TASK: {"metric", "higher_is_better", "n_test", "unit",
                      "models": {MODEL: {"value", "ci", "seeds", "epochs", "stopped"}}}},
     "differences": {TASK: {"A-B": {"value", "ci", "ci90", "margin", "verdict"}}}}

A verdict (``probes.stats.verdict``) is better, worse, equivalent (within the margin of
``probe.margins``, fixed before the run) or inconclusive, said of A against B.

TASK is asr (CER), speaker_id (accuracy), speaker_eer (EER), emotion (accuracy) or intent
(accuracy); intervals are those of :mod:`bestrq.probes.stats`. ``unit`` is what their bootstrap
resamples: ``speaker`` where the probes named each item's speaker (the speaker tasks), else
``utterance`` (``trial`` for the EER).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..probes.stats import LOWER_IS_BETTER, VERDICTS, difference, estimate, verdict
from ..train.run import METRICS, read_metrics

# study task -> (probe task, metric)
TASKS = {"asr": ("asr", "cer"), "speaker_id": ("speaker", "accuracy"), "speaker_eer": ("speaker", "eer"),
         "emotion": ("emotion", "accuracy"), "intent": ("intent", "accuracy")}
PAIRS = (("bestrq", "wav2vec2"), ("bestrq", "random"), ("bestrq", "fbank"), ("wav2vec2", "random"))
LABELS = {"bestrq": "BEST-RQ", "wav2vec2": "wav2vec 2.0", "random": "random init", "fbank": "fbank"}
FILES = ("results.json", "report.md", "pretraining.png", "tasks.png", "layer_weights.png")


def pretraining_summary(run: Path) -> dict:
    """Updates, training time, audio seen and the last dev accuracy against its reference, from metrics.jsonl."""
    from . import finished_step

    records = read_metrics(run / METRICS) if (run / METRICS).is_file() else []
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid" and "accuracy" in r]
    steps = finished_step(run)
    seconds = max((r.get("elapsed", 0.0) for r in train), default=0.0)
    last = valid[-1] if valid else {}
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    return {"steps": steps, "seconds": seconds, "seconds_per_update": seconds / max(steps, 1),
            "audio_hours": sum(r.get("audio_seconds", 0.0) for r in train) / 3600,
            "dev_accuracy": last.get("accuracy"), "dev_reference": last.get("baseline_accuracy"),
            "reference": "chance" if cfg.get("objective") == "wav2vec2" else "most frequent code",
            "curve": [{k: r[k] for k in ("step", "split", "accuracy", "baseline_accuracy", "chance_accuracy",
                                         "loss", "elapsed") if k in r} for r in records]}


def gather(cfg, out: Path) -> tuple[dict, dict]:
    """Per study task: each model's estimate; and the differences between the pairs probed."""
    from ..probes.results import read_result, result_path
    from . import probe_folder

    tasks, differences, sheets_of = {}, {}, {}
    for task, (probe_task, metric) in TASKS.items():
        if probe_task not in cfg.probe.tasks:
            continue
        entry = {"metric": metric, "higher_is_better": metric not in LOWER_IS_BETTER, "n_test": 0, "models": {}}
        for name in cfg.probe.models:
            results = [read_result(result_path(probe_folder(out, name, s), probe_task), probe_task)
                       for s in range(cfg.probe.seeds)]
            sheets = [r["sheets"][metric] for r in results if metric in r.get("sheets", {})]
            if not sheets:  # e.g. no verification trials in this corpus
                continue
            e = estimate(metric, sheets, cfg.probe.replicates)
            sheets_of[task, name] = sheets
            entry["n_test"] = e.n
            entry["unit"] = "speaker" if "unit" in sheets[0] else "trial" if metric == "eer" else "utterance"
            entry["models"][name] = {"value": e.value, "ci": list(e.ci), "seeds": e.seeds,
                                     "epochs": [r["epochs"] for r in results],
                                     "best_epochs": [r["best_epoch"] for r in results],
                                     "stopped": [r.get("stopped", "?") for r in results],
                                     "layer_weights": np.mean([r["layer_weights"] for r in results], axis=0).tolist()}
        if entry["models"]:
            tasks[task] = entry
        for a, b in PAIRS:
            if (task, a) in sheets_of and (task, b) in sheets_of:
                d = difference(metric, sheets_of[task, a], sheets_of[task, b], cfg.probe.replicates)
                margin = getattr(cfg.probe.margins, metric)
                differences.setdefault(task, {})[f"{a}-{b}"] = {
                    "value": d.value, "ci": list(d.ci), "ci90": list(d.ci90), "margin": margin,
                    "verdict": verdict(d, metric, margin)}
    return tasks, differences


def write_results(cfg, out: Path, runs: dict, pre_data: Path, probe_data: Path, session) -> dict:
    from . import machine

    tasks, differences = gather(cfg, out)
    commits = list(dict.fromkeys(s["commit"] for s in session.sessions))
    results = {
        "commit": commits[-1], "commits": commits, "machine": machine(),
        "command": session.sessions[0]["command"], "seconds": session.seconds,
        "sessions": [{k: s[k] for k in ("started", "seconds", "commit")} for s in session.sessions],
        "corpora": {"pretrain": _summary(pre_data), "probe": _summary(probe_data)},
        "pretraining": {name: {**pretraining_summary(out / "pretrain" / name), "config": runs[name][0],
                               "role": role(cfg, name)} for name in runs},
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


def role(cfg, name: str) -> str:
    p = cfg.pretrain
    return "timing" if name == p.timing_name else "ablation" if name == p.ablation_name else "compared"


def _summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.is_file():
        return {"folder": str(folder)}
    s = json.loads(path.read_text())
    return {"folder": str(folder), "hours": s.get("hours"), "utterances": s.get("utterances"),
            "speakers": s.get("speakers"), "sv_trials": s.get("sv_trials"),
            "splits": {k: {"utterances": v["utterances"], "hours": v["hours"], "speakers": v["speakers"]}
                       for k, v in s.get("splits", {}).items()}}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(r: dict) -> str:
    pre = r["pretraining"]
    lines = ["# BEST-RQ against wav2vec 2.0: the study", "",
             f"- command: `{r['command']}`", f"- commit: {', '.join(r['commits'])}", f"- machine: {r['machine']}",
             f"- total time: {r['seconds'] / 3600:.2f} h over {len(r['sessions'])} session(s)", "",
             "## Pre-training at equal updates", "",
             "| run | updates | time (min) | s / update | audio seen (h) | dev accuracy | reference | x reference |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for name, p in pre.items():
        acc, ref = p["dev_accuracy"], p["dev_reference"]
        ratio = f"{acc / ref:.2f}" if acc is not None and ref else "–"
        lines.append(f"| {name} | {p['steps']} | {p['seconds'] / 60:.1f} | {p['seconds_per_update']:.3f} | "
                     f"{p['audio_hours']:.2f} | {_pct(acc)}% | {p['reference']} {_pct(ref)}% | {ratio} |")
    if "bestrq" in pre and "wav2vec2" in pre and pre["bestrq"]["seconds"]:
        b = pre["bestrq"]["seconds_per_update"]
        lines += ["", (f"wav2vec 2.0 (`{pre['wav2vec2']['config']}`) took **{pre['wav2vec2']['seconds_per_update'] / b:.2f}x**"
                       " BEST-RQ's time per update, on the same batches (the paper: 2.4x, on GPUs at BASE size).")]
        for name, p in pre.items():
            if p["role"] == "timing" and p["steps"]:
                lines.append(f"`{p['config']}` ({name}, {p['steps']} updates, timed only) took "
                             f"**{p['seconds_per_update'] / b:.2f}x** BEST-RQ's time per update.")
    lines += ["", "![pre-training curves](pretraining.png)", "", "## Downstream tasks (frozen encoders)", "",
              ("Each value is the mean over the probe seeds, with the 95% interval of that mean: a bootstrap "
               "over the task's unit (speakers for the speaker tasks, with all their utterances or trials; "
               "else test utterances) combined with the seeds' spread (see `src/bestrq/probes/stats.py`). "
               "Percent."), ""]
    models = list(dict.fromkeys(m for t in r["tasks"].values() for m in t["models"]))
    lines += ["| task (metric, test items) | " + " | ".join(LABELS.get(m, m) for m in models) + " |",
              "|---|" + "---:|" * len(models)]
    for task, t in r["tasks"].items():
        cells = []
        for m in models:
            e = t["models"].get(m)
            cells.append("–" if e is None else f"{_pct(e['value'])} [{_pct(e['ci'][0])}, {_pct(e['ci'][1])}]")
        arrow = "higher" if t["higher_is_better"] else "lower"
        lines.append(f"| {task} ({t['metric']}, {arrow} is better, n={t['n_test']}) | " + " | ".join(cells) + " |")
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
        said = {task: pairs[pair]["verdict"] for task, pairs in r["differences"].items() if pair in pairs}
        if said:
            a, b = pair.split("-")
            lines += ["", f"{LABELS[a]} against {LABELS[b]}: " + "; ".join(
                f"{word} on {', '.join(t for t, v in said.items() if v == word)}"
                for word in VERDICTS if word in said.values()) + "."]
    cut = [(task, m) for task, t in r["tasks"].items() for m, e in t["models"].items() if "epochs" in e["stopped"]]
    lines += ["", "## Probe convergence", "",
              "Every probe trains until its dev score has not improved for the patience; "
              + (f"these reached the epoch limit instead: {', '.join(f'{t}/{m}' for t, m in cut)}." if cut
                 else "none reached the epoch limit."),
              "", "| task | model | epochs (per seed) | best epoch |", "|---|---|---|---|"]
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
    for name, p in r["pretraining"].items():
        valid = [c for c in p["curve"] if c["split"] == "valid" and c.get("baseline_accuracy")]
        train = [c for c in p["curve"] if c["split"] == "train" and "elapsed" in c]
        if not valid or not train:
            continue
        ratio = [c["accuracy"] / c["baseline_accuracy"] for c in valid]
        minutes = np.interp([c["step"] for c in valid], [c["step"] for c in train], [c["elapsed"] for c in train]) / 60
        axes[0].plot([c["step"] for c in valid], ratio, marker=".", label=name)
        axes[1].plot(minutes, ratio, marker=".", label=name)
        axes[2].plot([c["step"] for c in train], [c["loss"] for c in train], label=name)
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
        err = [[100 * (t["models"][m]["value"] - t["models"][m]["ci"][0]) for m in names],
               [100 * (t["models"][m]["ci"][1] - t["models"][m]["value"]) for m in names]]
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
