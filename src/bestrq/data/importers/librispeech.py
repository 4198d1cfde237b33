"""LibriSpeech, through lhotse's own recipe: one split per part found."""

from __future__ import annotations

import logging
from pathlib import Path

from lhotse import CutSet

from ..manifest import ManifestError
from .common import (
    ImportReport,
    from_manifests,
)

log = logging.getLogger("bestrq.data")


def from_librispeech(src: Path, report: ImportReport, jobs: int = 4, **_) -> dict[str, CutSet]:
    from lhotse.recipes import prepare_librispeech

    parts = prepare_librispeech(src, dataset_parts="auto", num_jobs=jobs)
    if not parts:
        raise ManifestError(f"{src}: no LibriSpeech part found (expected e.g. {src}/train-clean-100/)")
    return {part: from_manifests(m["recordings"], m["supervisions"]) for part, m in parts.items()}
