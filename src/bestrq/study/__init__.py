"""``bestrq study``: BEST-RQ against wav2vec 2.0 at equal updates, from corpora to a report with intervals.

One command runs the comparison end to end; every stage keeps its outputs, so running the
same command again after an interruption (Ctrl-C, SIGTERM, a kill, the end of a session)
resumes where it stopped. The stages, in order (``Stages``):

1. the corpora: synthesised, unless a folder is given (``OUT/data/``);
2. the learning-rate sweep, a short run per peak rate (``study/pretraining.py``);
3. the timing stage, short runs of every model in turn on one machine (redone whole on another);
4. for each pre-training run R: BEST-RQ's run R and its probes, the probes of run R's random init
   and of fbank, then wav2vec 2.0's run R and its probes (``study/probing.py``); the ablation, if
   any, with run 0;
5. the results: ``OUT/results.json``, ``OUT/report.md`` and plots (``study/report.py``).

``OUT/sessions.json`` notes each invocation: start, seconds, commit, command, stages finished.
With ``record``, the small files the results come from are mirrored into a folder of their own
as each stage finishes, and restored from it first (``study/record.py``): kept in git, it carries
a study across machines, as a session's machine may not be the next one's.

The scale is a preset (``configs/study*.yaml``) plus ``--set`` overrides. The modules: ``config.py``
(settings), ``sessions.py`` (``sessions.json``), ``run.py`` (the stages), ``pretraining.py``,
``probing.py``, ``record.py`` and ``report.py``.
"""

from .config import StudyConfig, load_study_config
from .run import run_study

__all__ = ["StudyConfig", "load_study_config", "run_study"]
