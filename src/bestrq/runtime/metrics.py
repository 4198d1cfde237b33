"""A run's ``metrics.jsonl``: one JSON record a line, ``{"step": int, "split": str, NAME: number, ...}``.

:class:`MetricsLog` appends records (the training loop, on the main rank); :func:`read_metrics` reads
them back for every reader (the report, the probes' encoder records, the study).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..files import atomic_path, is_count, is_number

log = logging.getLogger("bestrq.train")
METRICS = "metrics.jsonl"



class MetricsLog:
    """Appends ``{"step", "split", ...}`` records to metrics.jsonl (and TensorBoard), on the main rank only.

    Opening it drops the records after ``step`` that a run which crashed later had written: a
    resume from ``step`` writes them again."""

    def __init__(self, out_dir: Path, step: int, write: bool, tensorboard: bool) -> None:
        self.path, self.write, self.writer = out_dir / METRICS, write, None
        if not write:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=step)

    def record(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.write:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl (none if it is absent). A line that is not a record is
    skipped: the last one cut short by a crash silently, any other (damaged) with a warning that counts them."""
    path = Path(path)
    if not path.is_file():
        return []
    records, damaged = [], 0
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    for n, line in enumerate(lines, 1):
        record = _metrics_record(line)
        if record is not None:
            records.append(record)
        elif line.strip() and (n < len(lines) or line.endswith("\n")):
            damaged += 1
    if damaged:
        log.warning("%s: skipped %d damaged lines (each record needs a whole-number step, a split and numbers)",
                    path, damaged)
    return records


def _metrics_record(line: str) -> dict | None:
    """The record a metrics.jsonl line holds: a whole-number step, a split's name and numbers; else None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not (isinstance(record, dict) and isinstance(record.get("split"), str) and is_count(record.get("step"))
            and all(is_number(v) for k, v in record.items() if k != "split")):
        return None
    return record


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (by a run that crashed later): a resume rewrites them."""
    if not path.exists():
        return
    kept = [rec for rec in read_metrics(path) if rec["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(rec) + "\n" for rec in kept))
