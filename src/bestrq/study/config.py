"""The study's settings: its corpora, pre-training, probes and margins (``configs/study*.yaml`` and
``--set``), checked on loading."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, check_bounds, load_config, setting
from .probing import MODELS


@dataclass
class CorpusConfig:
    folder: str = setting("", "an existing manifest folder to use instead of synthesising one")
    hours: float = setting(1.0, "synth: hours of audio", gt=0)
    seed: int = setting(0, "synth: seed of the corpus")
    speakers: int = setting(0, "synth: speakers (0: synth's default)", ge=0)
    sv_speakers: int = setting(0, "synth: unseen verification speakers (0: synth's default)", ge=0)
    commands: float = setting(0.2, "synth: fraction of utterances that are spoken commands", ge=0, le=1)
    heldout: float = setting(0.1, "synth: fraction of the seen speakers' utterances in dev, and in test", gt=0,
                             lt=0.5)
    trials: int = setting(1, "synth: verification trials per sv utterance, of each kind", ge=1)


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
class ProbeSection:
    models: list = setting(list(MODELS), "encoders to probe: bestrq, wav2vec2, random (BEST-RQ's "  # noqa: RUF009
                           "initial weights), fbank, or the ablation's name; each of the first four once per "
                           "pre-training run (fbank: a replicate of its probes), the ablation once")
    tasks: list = setting(["asr", "speaker", "emotion", "intent"], "downstream tasks")  # noqa: RUF009
    seeds: int = setting(1, "probe seeds per pre-training run, encoder and task (seeds vary with the run too)",
                         ge=1)
    epochs: int = setting(200, "at most; each probe stops when its dev score has not improved for patience epochs",
                          ge=1)
    patience: int = setting(5, "epochs without a better dev score before a probe stops", ge=1)
    lr: float = setting(3e-3, "learning rate of the heads", gt=0)
    batch_seconds: float = setting(40.0, "audio per probe batch", gt=0)
    asr_hidden: int = setting(256, "BiLSTM width of the ASR head", ge=1)
    asr_layers: int = setting(2, "BiLSTM layers of the ASR head", ge=1)
    asr_train_hours: float = setting(0.0, "ASR trains on the first this many hours of train (0: all)", ge=0)
    intent_head: str = setting("mlp", "mlp or lstm (a BiLSTM before the pooling)")
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
        if self.probe.intent_head not in ("mlp", "lstm"):
            raise ConfigError(f"probe.intent_head: must be mlp or lstm, not {self.probe.intent_head!r}")
        return self


def load_study_config(name: str, overrides: list[str]) -> StudyConfig:
    return load_config(name, overrides, cls=StudyConfig)
