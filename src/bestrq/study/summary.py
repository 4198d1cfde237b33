"""The study's verdicts as a block of markdown, kept in the docs that quote them.

A doc quotes a study between two markers::

    <!-- verdicts: docs/study/results.json -->
    ...                      (written by `bestrq report --fill DOC`)
    <!-- /verdicts -->

:func:`block` renders what goes between them from the ``results.json`` it names (a path from the
repository root, or from the doc's folder), and :func:`fill` rewrites every such block of a doc. The
docs' test checks each block against its results, so a figure or verdict the docs quote cannot drift
from the run that made it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .report import LABELS, NAMES, pct, sentence

BLOCK = re.compile(r"(<!-- verdicts: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /verdicts -->)", re.DOTALL)
PAIRS = ("bestrq-wav2vec2", "bestrq-random")
TIMED = {"wav2vec2": "wav2vec 2.0", "wav2vec2_conv": "wav2vec 2.0 with its conv waveform encoder"}


def _speed(t: dict) -> str:
    """BEST-RQ's verdict from a ratio of the other model's time per update over its own."""
    return "better" if t["ci"][0] > 1 else "worse" if t["ci"][1] < 1 else "inconclusive"


def block(r: dict) -> str:
    """The scores of every model with their 95% intervals, each comparison of BEST-RQ with its verdict, and
    the timing stage's ratios: markdown, ending in a newline."""
    models = list(dict.fromkeys(m for t in r["tasks"].values() for m in t["models"]))
    pairs = [p for p in PAIRS if any(p in d for d in r["differences"].values())]
    lines = ["| task (metric, unit) | " + " | ".join(LABELS.get(m, m) for m in models) + " | "
             + " | ".join(f"{LABELS[p.split('-')[0]]} − {LABELS[p.split('-')[1]]}: verdict" for p in pairs) + " |",
             "|---|" + "---:|" * len(models) + "---|" * len(pairs)]
    for task, t in r["tasks"].items():
        cells = [f"{pct(e['value'])} [{pct(e['ci'][0])}, {pct(e['ci'][1])}]" if (e := t["models"].get(m))
                 else "–" for m in models]
        for p in pairs:
            d = r["differences"].get(task, {}).get(p)
            cells.append("–" if d is None else f"{100 * d['value']:+.1f} [{100 * d['ci'][0]:+.1f}, "
                         f"{100 * d['ci'][1]:+.1f}] (90%: [{100 * d['ci90'][0]:+.1f}, {100 * d['ci90'][1]:+.1f}]), "
                         f"±{pct(d['margin'])}: **{d['verdict']}**")
        arrow = "higher" if t["higher_is_better"] else "lower"
        metric = "accuracy" if t["metric"] == "accuracy" else t["metric"].upper()
        lines.append(f"| {NAMES.get(task, task)} ({metric} %, "
                     f"{arrow} is better; {t.get('units', '?')} {t['unit']}s) | " + " | ".join(cells) + " |")
    runs = {m: len(p["runs"]) for m, p in r["pretraining"].items() if m in ("bestrq", "wav2vec2")}
    lines += ["", ("Percent; each value the mean over pre-training runs ("
                   + ", ".join(f"{LABELS[m]} {n}" for m, n in runs.items())
                   + ") with its 95% interval; each difference with its 95% and 90% intervals and the margin fixed "
                   "before the run. *Equivalent*: the difference's 90% interval inside the margin; *better* or *worse*: "
                   "its 95% interval leaves 0 on that side; else *inconclusive*."), ""]
    for p in pairs:
        if said := sentence(r, p):
            lines += [said, ""]
    timed = (r.get("timing") or {}).get("vs_bestrq") or {}
    said = [f"against {TIMED.get(m, m)}: *{_speed(t)}*, {t['value']:.2f}x [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]"
            for m, t in timed.items() if t and t.get("value") is not None]
    if said:
        lines += [("Time per update, BEST-RQ " + "; ".join(said) + " (the other model's time per update over "
                       "BEST-RQ's, 95% interval, in the timing stage on one machine).")]
    return "\n".join(lines).rstrip("\n") + "\n"


def _results(doc: Path, path: str) -> Path:
    for base in (doc.parent, *doc.parents):
        if (base / path).is_file():
            return base / path
    raise FileNotFoundError(f"{doc}: its verdicts block names {path}, which is not a file")


def _rendered(doc: Path, m: re.Match) -> str:
    return block(json.loads(_results(doc, m["path"]).read_text(encoding="utf-8")))


def blocks(doc: Path) -> list[tuple[str, str, str]]:
    """Each verdicts block of ``doc``: (the results path it names, its text, what its results render)."""
    return [(m["path"], m["body"], _rendered(doc, m)) for m in BLOCK.finditer(doc.read_text(encoding="utf-8"))]


def fill(doc: str | Path) -> int:
    """Rewrite every verdicts block of ``doc`` from its results; the number of blocks."""
    doc = Path(doc)
    text = doc.read_text(encoding="utf-8")
    found = list(BLOCK.finditer(text))
    if not found and "<!-- verdicts:" in text:
        raise ValueError(f"{doc}: a verdicts block without its end marker <!-- /verdicts -->")

    doc.write_text(BLOCK.sub(lambda m: m.group(1) + _rendered(doc, m) + m.group(4), text), encoding="utf-8")
    return len(found)
