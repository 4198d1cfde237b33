"""``bestrq study``: BEST-RQ against wav2vec 2.0 at equal updates, from corpora to a report with intervals.

One command runs the comparison end to end; every stage keeps its outputs, so running the
same command again after an interruption (Ctrl-C, SIGTERM, a kill, the end of a session)
resumes where it stopped. The stages, in order (``Stages``):

1. the corpora: synthesised, unless a folder is given (``OUT/data/``);
2. the learning-rate sweep, a short run per peak rate (``study/pretraining.py``);
3. the timing stage, short runs of every model in turn on one machine (redone whole on another);
4. for each pre-training run R: BEST-RQ's run R and its probes, wav2vec 2.0's and its probes, then
   the probes of run R's random init and of fbank (``study/probing.py``); the ablation, if any,
   with run 0;
5. the results: ``OUT/results.json``, ``OUT/report.md`` and plots (``study/report.py``).

``OUT/sessions.json`` notes each invocation: start, seconds, commit, command, stages finished.
With ``record``, the small files the results come from are mirrored into a folder of their own
as each stage finishes, and restored from it first (``study/record.py``): kept in git, it carries
a study across machines, as a session's machine may not be the next one's.

The scale is a preset (``configs/study*.yaml``) plus ``--set`` overrides.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, check_bounds, load_config, setting
from ..files import atomic_path
from .probing import MODELS

log = logging.getLogger(__name__)


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


@dataclass
class Session:
    """This invocation's record in ``OUT/sessions.json``: the study's time is the sum over its sessions."""

    path: Path
    command: str
    config: dict = field(default_factory=dict)  # the study's settings in this invocation
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.sessions = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": 0.0,
                              "commit": commit(), "command": self.command, "config": self.config, "stages": []})

    def check_margins(self) -> None:
        """The equivalence margins are fixed before the run: a session that changes them is refused."""
        margins = [s["config"]["probe"]["margins"] for s in self.sessions if s.get("config")]
        if any(m != margins[-1] for m in margins[:-1]):
            raise ConfigError(f"{self.path.parent}: probe.margins were {margins[0]} when this study began; a "
                              f"verdict's margin is fixed before the run, not changed to {margins[-1]} (start "
                              "another study folder to use other margins)")

    def save(self, stage: str | None = None) -> None:
        now = self.sessions[-1]
        now["seconds"] = round(time.monotonic() - self.started, 1)
        if stage:  # what was finished, and when (seconds into this session)
            now["stages"].append({"stage": stage, "at": now["seconds"]})
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.sessions, indent=1))

    @property
    def seconds(self) -> float:
        return sum(s["seconds"] for s in self.sessions)


def commit() -> str:
    """The source tree's git commit (with ``+changes`` if it has uncommitted ones), or ``unknown``."""
    src = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores{gpu}; torch {torch.__version__}, {platform.system()}"


def corpus(c: CorpusConfig, folder: Path, progress: bool, avoid: tuple[Path, ...] = ()) -> Path:
    """The corpus folder: the one given, or synthesised into ``folder`` (kept, and resumed, across runs), its
    dev and test transcripts none of those in the corpora ``avoid``."""
    if c.folder:
        return Path(c.folder)
    from ..synth.corpus import SynthConfig, synthesize

    synthesize(folder, SynthConfig(hours=c.hours, seed=c.seed, speakers=c.speakers or None,
                                   sv_speakers=c.sv_speakers or None, commands=c.commands, heldout=c.heldout,
                                   trials=c.trials, avoid=tuple(str(a) for a in avoid)), progress=progress)
    return folder



class Stopped(BaseException):
    """SIGTERM outside pre-training (which handles it itself, saving a checkpoint). A BaseException, as
    KeyboardInterrupt is: code that skips what fails with an Exception (a clip that will not decode,
    which lhotse and our loader count as bad audio) must not swallow it."""


_OWNER = [0]  # the pid that installed the handler: processes forked from it (synth's pool) die as by default


def _stop(signum: int, frame) -> None:
    if os.getpid() != _OWNER[0]:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Stopped(signum)

def run_study(cfg: StudyConfig, command: str = "", progress: bool = True) -> int:
    """Run (or resume) every stage; 0 when the results are written, 128 + signal when stopped by SIGTERM
    (pre-training saves a checkpoint first; a probe under way is redone by the next run)."""
    from dataclasses import asdict

    from .record import Record
    from .report import write_results

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record = Record(cfg.record or None, out)
    restored = record.restore()  # first: sessions.json may be among them
    if restored:
        print(f"  {restored} files restored from the study's record in {cfg.record}")
    session = Session(out / "sessions.json", command, asdict(cfg))
    session.check_margins()
    main = threading.current_thread() is threading.main_thread()  # handlers live in the main thread only
    _OWNER[0] = os.getpid()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None

    try:
        stage("1/5 corpora", session)
        pre_data = corpus(cfg.pretrain_corpus, out / "data" / "pretrain", progress)
        # the probe corpus's dev and test say nothing the pre-training corpus said (results.json counts it)
        probe_data = corpus(cfg.probe_corpus, out / "data" / "probe", progress, avoid=(pre_data,))
        stages = Stages(cfg, pre_data, out, session, record)
        stages.saved("corpora")
        stopped = stages.run(probe_data, progress)
        if stopped is not None:
            return stopped
        stage("5/5 results", session)
        session.save()  # the time so far, which results.json reports
        results = write_results(cfg, out, pre_data, probe_data, session, stages.compared, stages.timing)
        stages.saved("results")
        print((out / "report.md").read_text())
        print(f"study folder: {out.resolve()} ({results['seconds'] / 3600:.2f} h over {len(session.sessions)} "
              "session(s))")
        return 0
    except Stopped as e:
        print(f"stopped by {signal.Signals(e.args[0]).name}: the same command resumes")
        return 128 + e.args[0]
    finally:
        session.save()  # this session's time, whatever ended it
        record.keep()
        if main:
            signal.signal(signal.SIGTERM, previous)


class Stages:
    """The study's stages after its corpora, in order: the learning-rate sweep; the timing stage (on one
    machine); then for each pre-training run R, each objective's run R followed at once by its probes
    (its weights are needed only until they are made), and run R's random init and fbank probes; last,
    the ablation. Each run and probe is done once: a resumed study skips what it finds made."""

    def __init__(self, cfg: StudyConfig, data: Path, out: Path, session: Session, record) -> None:
        self.cfg, self.data, self.out, self.session, self.record = cfg, data, out, session, record
        self.compared: list = []  # planned once the sweep has finished
        self.timing: list = []

    def saved(self, name: str) -> None:
        """A stage finished: the session's time noted, the record brought up to date."""
        self.session.save(name)
        self.record.keep()

    def run(self, probe_data: Path, progress: bool) -> int | None:
        """None when every stage is done, else 128 + the signal that stopped pre-training."""
        from .pretraining import chosen_rates, compared_runs, sweep_runs, timing_runs
        from .probing import names_speakers, probe_model

        cfg, out = self.cfg, self.out
        sweep = sweep_runs(cfg, self.data, out)
        for i, run in enumerate(sweep):
            stage(f"2/5 learning-rate sweep: {run.name} ({i + 1} of {len(sweep)}, {run.steps} updates)", self.session)
            if (stopped := self.train(run)) is not None:
                return stopped
        lrs = chosen_rates(cfg, out)
        self.compared = compared_runs(cfg, self.data, out, lrs)
        self.timing = timing_runs(cfg, self.data, out, lrs)
        if self.timing:
            same_machine(out / "pretrain" / "timing")
        for i, run in enumerate(self.timing):
            stage(f"3/5 timing: {run.name} ({i + 1} of {len(self.timing)}, {run.steps} updates)", self.session)
            if (stopped := self.train(run)) is not None:
                return stopped

        units = names_speakers(probe_data)
        probed = set(cfg.probe.models)
        for r in range(cfg.pretrain.runs):
            trained = [run for run in self.compared if run.seed == r and run.role == "compared"]
            if r == 0:
                trained += [run for run in self.compared if run.role == "ablation"]
            for run in trained:  # each objective's run R, then its probes at once
                stage(f"4/5 run {r + 1} of {cfg.pretrain.runs}: {run.name}", self.session)
                probes = (run.model, r) if run.model in probed else None
                if (stopped := self.train(run, probes, units)) is not None:
                    return stopped
                if probes:
                    probe_model(cfg, out, probe_data, run.model, r, self.saved, progress, units)
            for name in ("random", "fbank"):
                if name in probed:
                    stage(f"4/5 run {r + 1} of {cfg.pretrain.runs}: {name}", self.session)
                    probe_model(cfg, out, probe_data, name, r, self.saved, progress, units)
        return None

    def train(self, run, probes: tuple[str, int] | None = None, units: bool = True) -> int | None:
        """Train a run unless it has finished; a finished run whose weights are gone (a record carried to
        another machine) is trained again only if ``probes`` (its model and run) are still to be made."""
        from ..config import load_config
        from ..train.loop import pretrain
        from .pretraining import FINISHED, check_planned, finished_step, has_weights, mark_finished
        from .probing import todo, trained_record

        folder = self.out / "pretrain" / run.name
        check_planned(run, folder)
        if finished_step(folder) >= run.steps:
            mark_finished(folder)
            left = probes is not None and todo(self.cfg, self.out, *probes, trained_record(self.out, *probes), units)
            if has_weights(folder) or not left:
                print(f"  done before: {folder}")
                return None
            print(f"  {folder} finished on another machine and its weights were left there, but its probes are "
                  "not all made: trained again")
            (folder / FINISHED).unlink()
        result = pretrain(load_config(run.config, list(run.sets)))
        if result.signal is not None:
            print(f"stopped during the pre-training of {run.name}: the same command resumes")
            return 128 + int(result.signal)
        mark_finished(folder)
        self.saved(f"pretrain {run.name}")
        return None


def stage(title: str, session: Session) -> None:
    print(f"\n== study {title} (this session: {time.monotonic() - session.started:.0f} s)", flush=True)


def same_machine(folder: Path) -> None:
    """The timing stage's runs are of one machine: those of another (a session on another CPU) are removed,
    to be made again on this one; the machine is written down."""
    import shutil

    path = folder / "machine.txt"
    if path.is_file() and path.read_text().strip() != machine():
        print(f"  the timing runs in {folder} were made on {path.read_text().strip()}: timed again on this machine")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(machine() + "\n")


def load_study_config(name: str, overrides: list[str]) -> StudyConfig:
    return load_config(name, overrides, cls=StudyConfig)
