"""A run folder's own files, named once for the writer (``train/run.py``) and every reader (loading, the
report, the study): ``config.json``, the run's whole config, beside ``metrics.jsonl`` (metrics.py) and
``checkpoints/`` (checkpoint.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

RUN_CONFIG = "config.json"


def run_config(folder: str | os.PathLike) -> dict:
    """A run folder's config (the nested settings, as ``config.to_dict`` writes them); empty if it has none."""
    path = Path(folder) / RUN_CONFIG
    return json.loads(path.read_text()) if path.is_file() else {}
