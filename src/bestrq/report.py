"""``bestrq report``: one markdown table (models x tasks) and PNG plots from runs and their probes.

    report.md            the table, with each model's pre-training time and audio seen
    layer_weights.png    per task, the learned weight of every layer, per model
    pretraining.png      training loss and validation accuracy against wall time
    probe_curves.png     per task, the dev score after every epoch, per model
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .probes.encoders import same_encoder
from .probes.results import ENCODER, RESULTS, read_encoder, read_result, result_path
from .probes.tasks import MAIN_METRIC, TASKS
from .runtime.checkpoint import run_of
from .runtime.metrics import METRICS, read_metrics

log = logging.getLogger(__name__)
COLUMNS = [("asr", "wer", "ASR WER %", True), ("asr", "cer", "ASR CER %", True),
           ("speaker", "accuracy", "Speaker ID acc %", False), ("speaker", "eer", "SV EER %", True),
           ("emotion", "accuracy", "Emotion acc %", False), ("emotion", "macro_f1", "Emotion F1 %", False),
           ("intent", "accuracy", "Intent acc %", False), ("language", "accuracy", "Language acc %", False)]
OPTIONAL = {"language"}  # columns shown only where some model was probed on them


@dataclass
class Model:
    name: str
    folder: Path  # where the probe results are
    encoder: dict
    results: dict[str, dict] = field(default_factory=dict)
    pretraining: list[dict] = field(default_factory=list)  # metrics.jsonl records


def collect(paths: list[str | os.PathLike]) -> list[Model]:
    models = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: {'not a folder' if p.exists() else 'no such folder'} "
                                    "(give run or probe result folders)")
        folder = p if list(p.glob(RESULTS)) else p / "probes"
        if not list(folder.glob(RESULTS)):
            raise FileNotFoundError(f"{p}: no probe results ({RESULTS}) here or in {p / 'probes'}")
        path = folder / ENCODER
        encoder = read_encoder(path) if path.is_file() else {}
        results = {}
        for task in TASKS:
            f = result_path(folder, task)
            if f.is_file():
                results[task] = read_result(f, task)
        checkpoint, source = encoder.get("checkpoint"), encoder.get("exported_from")
        run = next(filter(None, (run_of(f) for f in (checkpoint, source) if isinstance(f, str))), None)
        pretraining = read_metrics(run / METRICS) if run else []
        models.append(Model(encoder.get("name", p.name), folder, encoder, results, pretraining))
    return models


def _scored(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _cell(value: float | None) -> str:
    return f"{100 * value:.1f}" if _scored(value) else "–"


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def table(models: list[Model]) -> str:
    """Models x tasks in markdown; the best of each column in bold.

    A column whose scored models all tie (every WER 100% after a short probe, say) has no best,
    and nothing in it is bold; a missing or NaN score is never bold, nor is any score of a task
    whose models were tested on different test sets.
    """
    columns = [c for c in COLUMNS if c[0] not in OPTIONAL or any(c[0] in m.results for m in models)]
    header = ["model", "objective", "pre-training", "audio seen"] + [c[2] for c in columns]
    values = [[m.results.get(t, {}).get("test", {}).get(k) for t, k, _, _ in columns] for m in models]
    apart = incomparable(models)
    best = []
    for j, (task, _, _, lower) in enumerate(columns):
        col = [v[j] for v in values if _scored(v[j])]
        best.append((min(col) if lower else max(col)) if len(set(col)) > 1 and task not in apart else None)
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * len(columns)]
    for m, vals in zip(models, values):
        audio = m.encoder.get("pretrain_audio_hours")
        cells = [m.name, m.encoder.get("objective", "?"), _hours(m.encoder.get("pretrain_seconds")),
                 "–" if audio is None else f"{audio:.2f} h"]
        for v, b in zip(vals, best):
            cells.append(f"**{_cell(v)}**" if b is not None and v == b else _cell(v))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def format_probe_results(results: dict[str, dict]) -> str:
    """A few lines for the terminal after ``bestrq probe``."""
    lines = []
    for task, r in results.items():
        metrics = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["test"].items())
        weights = " ".join(f"{w:.2f}" for w in r["layer_weights"])
        lines.append(f"{task}: test {metrics} (best dev epoch {r['best_epoch']} of {r['epochs']}; "
                     f"layer weights {weights})")
    return "\n".join(lines)


def _plots(models: list[Model], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    tasks = [t for t in TASKS if any(t in m.results for m in models)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for m in models:  # lines, not bars: the weights stay near 1/L and bars from 0 hide their shape
            w = m.results.get(task, {}).get("layer_weights", [])
            if len(w) > 1:
                ax.plot(range(len(w)), w, marker="o", label=m.name)
                ax.axhline(1 / len(w), color="grey", lw=0.6, ls=":")
        ax.set(title=f"{task}: layer weights", xlabel="layer (0 = front-end output)", ylabel="softmax weight")
        if ax.lines:
            ax.legend(fontsize=7)
        else:  # every model here has one layer (the fbank, say): no weights to compare
            ax.text(0.5, 0.5, "no model with more than one layer", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="grey")
    fig.tight_layout()
    fig.savefig(out / "layer_weights.png", dpi=110)
    plt.close(fig)
    written.append("layer_weights.png")

    runs = [m for m in models if m.pretraining]
    if runs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for m in runs:
            train = [r for r in m.pretraining if r.get("split") == "train" and {"elapsed", "loss", "step"} <= r.keys()]
            if not train:
                continue
            ax1.plot([r["elapsed"] / 60 for r in train], [r["loss"] for r in train], label=m.name)
            steps, elapsed = [r["step"] for r in train], [r["elapsed"] for r in train]
            valid = [r for r in m.pretraining if r.get("split") == "valid" and {"step", "accuracy"} <= r.keys()]
            ax2.plot([np.interp(r["step"], steps, elapsed) / 60 for r in valid],
                     [r["accuracy"] / max(r.get("baseline_accuracy", 0) or 1e-9, 1e-9) for r in valid],
                     marker="o", label=m.name)
        ax1.set(title="pre-training loss (each objective its own)", xlabel="wall time (min)", ylabel="train loss")
        ax2.set(title="masked accuracy / its baseline", xlabel="wall time (min)", ylabel="x baseline")
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "pretraining.png", dpi=110)
        plt.close(fig)
        written.append("pretraining.png")

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = MAIN_METRIC[task]
        for m in models:
            if task in m.results:
                curve = m.results[task]["curve"]
                ax.plot([c["epoch"] for c in curve], [100 * c[f"dev_{metric}"] for c in curve], marker=".",
                        label=m.name)
        ax.set(title=f"{task}: dev {metric}", xlabel="epoch", ylabel=f"{metric} %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "probe_curves.png", dpi=110)
    plt.close(fig)
    written.append("probe_curves.png")
    return written


def incomparable(models: list[Model]) -> dict[str, str]:
    """Task -> why, for each task whose models were tested on different test sets (other data, or
    other utterances left out), from the ``data`` each probe result records (older ones have none)."""
    lines = {}
    for task in TASKS:
        groups: dict[str, list[tuple[str, dict]]] = {}
        for m in models:
            data = m.results.get(task, {}).get("data")
            if isinstance(data, dict) and data.get("test_ids"):
                groups.setdefault(str(data["test_ids"]), []).append((m.name, data))
        if len(groups) > 1:
            sets = "; ".join(f"{', '.join(name for name, _ in group)}: {group[0][1].get('test_items')} items of "
                             f"{group[0][1].get('folder')}" for group in groups.values())
            lines[task] = f"{task}: the models were tested on different test sets ({sets}); its scores do not compare"
    return lines


def mixed(models: list[Model]) -> list[str]:
    """One line per probe result made with another encoder than its folder's ``encoder.json``
    (a folder probed again, at a later checkpoint, for some tasks only)."""
    lines = []
    for m in models:
        for task, result in m.results.items():
            other = result.get("encoder")
            if m.encoder and isinstance(other, dict) and other and not same_encoder(other, m.encoder):
                lines.append(f"{m.name}: its {task} result was made with another encoder ({other.get('name')}), "
                             f"so its {task} scores are not this model's")
    return lines


def write_report(paths: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    models = collect(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(models, out)
    text = ["# Downstream probes on frozen encoders", "",
            "Test-set scores; each probe keeps its best dev epoch. Bold: the best of each column (none where every model ties).", "",
            table(models), ""]
    for line in incomparable(models).values():
        log.warning("%s", line)
        text += [f"> **Not comparable.** {line}", ""]
    for line in mixed(models):
        log.warning("%s", line)
        text += [f"> **Mixed encoders.** {line}", ""]
    text += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path
