"""The study's settings: its corpora, pre-training, probes and margins (``configs/study*.yaml`` and
``--set``), checked on loading."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, check_bounds, load_config, setting
from ..probes.tasks import ProbeSettings
from ..synth.corpus import SynthSettings
from .probing import MODELS


@dataclass(frozen=True)
class CorpusConfig(SynthSettings):
    """A corpus of the study: the settings of ``bestrq synth`` (``synth.corpus.SynthSettings``), or a folder."""

    folder: str = setting("", "an existing manifest folder to use instead of synthesising one")


@dataclass
class PretrainSection:
    steps: int = setting(4000, "updates of every model: the same for all", ge=1)
    runs: int = setting(3, "pre-training runs of each compared objective, seeds 0.. (train.seed); BEST-RQ's "
                        "initial weights of each are a random-init encoder", ge=1)
    bestrq_lrs: list = setting([], "BEST-RQ's peak learning rates to sweep ([]: the config's)")  # noqa: RUF009
    wav2vec2_lrs: list = setting([], "wav2vec 2.0's peak learning rates to sweep ([]: the config's)")  # noqa: RUF009
    sweep_steps: int = setting(500, "updates of each sweep run; the rate with the best last dev accuracy is used",
                               ge=1)
    train_split: str = setting("train", "the pre-training corpus's splits to train on (a+b joins them)")
    bestrq: str = setting("bestrq_tiny", "BEST-RQ's config (a preset or YAML file)")
    wav2vec2: str = setting("wav2vec2_tiny", "wav2vec 2.0's config (a preset or YAML file)")
    common_set: list = setting([], "--set items for every run: batch size, device, threads, ...")  # noqa: RUF009
    bestrq_set: list = setting([], "--set items for BEST-RQ only")  # noqa: RUF009
    wav2vec2_set: list = setting([], "--set items for wav2vec 2.0 only")  # noqa: RUF009
    timing_rounds: int = setting(3, "rounds of the timing stage, each timing every model in turn on one machine "
                                 "(0: none)", ge=0)
    timing_steps: int = setting(60, "updates of each model in each round; its first sixth (warm-up) is left out",
                                ge=6)
    timing_name: str = setting("", "name of one more config timed beside the compared ones ('' for none)")
    timing_config: str = setting("wav2vec2_tiny", "its config: e.g. wav2vec 2.0 with its conv waveform encoder")
    ablation_name: str = setting("bestrq_paper_masking", "name of one more BEST-RQ run ('' for none)")
    ablation_set: list = setting(["masking.span=0"], "--set items of that run, on top of BEST-RQ's (span=0: "  # noqa: RUF009
                                 "the masking preset's own 4-frame spans)")


@dataclass
class MarginSection:
    """Equivalence margins, fixed before a run, in each metric's units (fractions): a difference whose 90%
    interval lies inside +-margin is *equivalent* (``probes.stats.verdict``). The defaults are about a third
    of what pre-training gained over a random init in the first study (CER 4.7 points, emotion accuracy
    9.9): a difference that much smaller would not change which objective to use."""
    cer: float = setting(0.015, "ASR character error rate: 1.5 points", gt=0)
    accuracy: float = setting(0.03, "speaker identification, emotion and intent accuracy: 3 points", gt=0)
    eer: float = setting(0.01, "speaker verification equal error rate: 1 point (7% of the first study's 14%)",
                         gt=0)


@dataclass
class ProbeSection(ProbeSettings):
    """The probes of the study: how each trains is ``bestrq probe``'s settings (``probes.tasks.ProbeSettings``:
    epochs, patience, heads, ...); which encoders, tasks and seeds, and how results are compared, below."""

    models: list = setting(list(MODELS), "encoders to probe: bestrq, wav2vec2, random (BEST-RQ's "  # noqa: RUF009
                           "initial weights), fbank, or the ablation's name; each of the first four once per "
                           "pre-training run (fbank: a replicate of its probes), the ablation once")
    tasks: list = setting(["asr", "speaker", "emotion", "intent"], "downstream tasks")  # noqa: RUF009
    seeds: int = setting(1, "probe seeds per pre-training run, encoder and task (seeds vary with the run too)",
                         ge=1)
    device: str = setting("cpu", "cpu, cuda or cuda:N")
    replicates: int = setting(1000, "bootstrap replicates of each interval", ge=100)
    margins: MarginSection = field(default_factory=MarginSection)


@dataclass
class StudyConfig:
    out: str = setting("runs/study", "the study's folder: corpora, runs, probes, results")
    publish: str = setting("", "also copy results.json, report.md and the plots here (e.g. docs/study)")
    record: str = setting("", "keep the study's record here too: the small files its results come from (each "
                          "run's metrics, each probe's result; study/record.py); kept in git, it carries the "
                          "study to another machine")
    pretrain_corpus: CorpusConfig = field(default_factory=CorpusConfig)
    probe_corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    probe: ProbeSection = field(default_factory=ProbeSection)

    def validate(self) -> StudyConfig:
        from ..probes.tasks import TASKS

        check_bounds(self)
        names = {*MODELS, self.pretrain.ablation_name} - {""}
        for key in ("bestrq_lrs", "wav2vec2_lrs"):
            lrs = getattr(self.pretrain, key)
            if not all(isinstance(v, (int, float)) and v > 0 for v in lrs) or len(set(lrs)) != len(lrs):
                raise ConfigError(f"pretrain.{key}: give distinct learning rates > 0, not {lrs!r}")
        if {self.pretrain.timing_name, self.pretrain.ablation_name} & {"sweep", "timing"}:
            raise ConfigError("pretrain: 'sweep' and 'timing' name the stages' folders, not a run")
        if self.pretrain.timing_name and self.pretrain.timing_name in (*MODELS, self.pretrain.ablation_name):
            raise ConfigError(f"pretrain.timing_name: {self.pretrain.timing_name!r} is the name of another run")
        for key, values, allowed in (("probe.models", self.probe.models, names),
                                     ("probe.tasks", self.probe.tasks, set(TASKS))):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ConfigError(f"{key}: {bad[0]!r} is not one of {', '.join(sorted(allowed))}" if bad
                                  else f"{key}: give at least one")
        return self


def load_study_config(name: str, overrides: list[str]) -> StudyConfig:
    return load_config(name, overrides, cls=StudyConfig)
