"""Downstream probes on frozen encoders (the SUPERB / MP3S protocol): ``run_probes`` is the entry point.

encoders.py what --checkpoint names; cache.py hidden states extracted once; heads.py the
weighted layer sum and the heads; tasks.py labels, training and metrics; metrics.py scoring.
"""

from .run import run_probes
from .tasks import TASKS, ProbeConfig

__all__ = ["TASKS", "ProbeConfig", "run_probes"]
