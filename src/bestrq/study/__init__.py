"""``bestrq study``: BEST-RQ against wav2vec 2.0 at equal updates, from corpora to a report with intervals.

One command runs the comparison end to end; every stage keeps its outputs, so running the
same command again after an interruption (Ctrl-C, SIGTERM, a kill, the end of a session)
resumes where it stopped:

    OUT/data/pretrain/, OUT/data/probe/    the corpora: synthesised, unless a folder is given
    OUT/pretrain/sweep/MODEL-lrLR/         the learning-rate sweep: a short run per peak rate
    OUT/pretrain/MODEL/run-R/              the compared pre-training runs (bestrq, wav2vec2), seed R,
                                           the same number of updates on the same batch size
    OUT/pretrain/NAME/                     the ablation, if any
    OUT/pretrain/timing/round-K/MODEL/     the timing stage: short runs of every model in turn, on
                                           one machine (redone whole on another)
    OUT/probes/MODEL/run-R/cache/          each encoder's hidden states, shared by its probe seeds
                                           (fbank: OUT/probes/fbank/cache, one for all)
    OUT/probes/MODEL/run-R/seed-S/probe_TASK.json  one probe: trained until its dev score stops improving
                                           (the ablation: run-0 only)
    OUT/sessions.json                      each invocation: start, seconds, commit, command
    OUT/results.json, OUT/report.md, *.png the comparison (see study/report.py)

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

log = logging.getLogger(__name__)
MODELS = ("bestrq", "wav2vec2", "random", "fbank")


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


def finished_step(run: Path) -> int:
    """The step of a run folder's newest complete checkpoint (0: none)."""
    from ..train.checkpoint import latest

    last = latest(run)
    return int(last.name.split("-")[1]) if last else 0


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
    from ..train.loop import pretrain
    from .report import write_results

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from dataclasses import asdict

    session = Session(out / "sessions.json", command, asdict(cfg))
    session.check_margins()
    main = threading.current_thread() is threading.main_thread()  # handlers live in the main thread only
    _OWNER[0] = os.getpid()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None
    try:
        stage("1/4 corpora", session)
        pre_data = corpus(cfg.pretrain_corpus, out / "data" / "pretrain", progress)
        # the probe corpus's dev and test say nothing the pre-training corpus said (results.json counts it)
        probe_data = corpus(cfg.probe_corpus, out / "data" / "probe", progress, avoid=(pre_data,))
        session.save("corpora")

        for title, runs in pretraining_stages(cfg, pre_data, out):
            if title == "timing":
                same_machine(out / "pretrain" / "timing")
            for i, run in enumerate(runs):
                stage(f"2/4 {title}: {run.name} ({i + 1} of {len(runs)}, {run.steps} updates)", session)
                folder = out / "pretrain" / run.name
                check_planned(run, folder)
                if finished_step(folder) >= run.steps:
                    print(f"  done before: {folder}")
                    continue
                result = pretrain(load_config(run.config, list(run.sets)))
                session.save(f"pretrain {run.name}")
                if result.signal is not None:
                    print(f"stopped during the pre-training of {run.name}: the same command resumes")
                    return 128 + int(result.signal)

        probe_all(cfg, out, probe_data, session, progress)
        stage("4/4 results", session)
        session.save()  # the time so far, which results.json reports
        results = write_results(cfg, out, pre_data, probe_data, session)
        session.save("results")
        print((out / "report.md").read_text())
        print(f"study folder: {out.resolve()} ({results['seconds'] / 3600:.2f} h over {len(session.sessions)} "
              "session(s))")
        return 0
    except Stopped as e:
        print(f"stopped by {signal.Signals(e.args[0]).name}: the same command resumes")
        return 128 + e.args[0]
    finally:
        session.save()  # this session's time, whatever ended it
        if main:
            signal.signal(signal.SIGTERM, previous)


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


def pretraining_stages(cfg: StudyConfig, data: Path, out: Path):
    """(title, runs) of each pre-training stage, in order: the sweep, then the runs with its learning rates
    (planned once the sweep has finished, as they depend on it), then the timing stage."""
    from .pretraining import COMPARED, compared_runs, sweep_result, sweep_runs, timing_runs

    sweep = sweep_runs(cfg, data, out)
    if sweep:
        yield "learning-rate sweep", sweep
    lrs = {}
    for model in COMPARED:
        found = sweep_result(cfg, out, model)
        lrs[model] = found["chosen"] if found else None
        if found:
            print(f"  {model}: peak learning rate {found['chosen']:g} (dev accuracy "
                  + ", ".join(f"{t['lr']:g}: {t['dev_accuracy']:.4f}" for t in found["tried"]) + ")")
    yield "pre-training", compared_runs(cfg, data, out, lrs)
    timing = timing_runs(cfg, data, out, lrs)
    if timing:
        yield "timing", timing


def check_planned(run, folder: Path) -> None:
    """A run folder made by an earlier session has the seed and peak learning rate planned now; else (the
    preset or its sweep changed since) the study stops, rather than mix runs of two plans."""
    path = folder / "config.json"
    if not path.is_file():
        return
    made = json.loads(path.read_text())
    have = {"train.seed": made.get("train", {}).get("seed"), "optim.lr": made.get("optim", {}).get("lr")}
    want = {"train.seed": run.seed, **({"optim.lr": run.lr} if run.lr is not None else {})}
    bad = [k for k, v in want.items() if have[k] != v]
    if bad:
        raise ConfigError(f"{folder}: made with {', '.join(f'{k}={have[k]}' for k in bad)}, but the study now plans "
                          f"{', '.join(f'{k}={want[k]}' for k in bad)}: its preset or sweep changed since; restore "
                          "them, or remove the folder to train that run again")


def replicates(cfg: StudyConfig, name: str) -> int:
    """Pre-training runs of a probed model: the compared objectives' and the random inits' (one per BEST-RQ
    run), and fbank's replicates of its probes; one for the ablation."""
    return cfg.pretrain.runs if name in MODELS else 1


def encoder_spec(name: str, out: Path, run: int = 0) -> str:
    if name == "fbank":
        return "fbank"
    if name == "random":  # exactly the network BEST-RQ's run started from (loaded with seed ``run``)
        return f"random:{out / 'pretrain' / 'bestrq' / f'run-{run}' / 'config.json'}"
    if name in MODELS:
        return str(out / "pretrain" / name / f"run-{run}")
    return str(out / "pretrain" / name)


def probe_folder(out: Path, name: str, run: int, seed: int) -> Path:
    return out / "probes" / name / f"run-{run}" / f"seed-{seed}"


def probe_seed(run: int, seed: int) -> int:
    """The probe's own seed: another for every run, so that runs differ in their probes as well; the same
    whatever ``probe.seeds`` (more seeds add probes, and keep those made)."""
    return run * 1000 + seed


def init_seed(name: str, out: Path, run: int) -> int:
    """The seed ``random:`` builds BEST-RQ's run ``run`` with: its ``train.seed``, as its run folder says."""
    if name != "random":
        return 0
    config = out / "pretrain" / "bestrq" / f"run-{run}" / "config.json"
    return int(json.loads(config.read_text())["train"]["seed"])


def probe_config(cfg: StudyConfig, seed: int):
    from ..probes.tasks import ProbeConfig

    p = cfg.probe
    return ProbeConfig(epochs=p.epochs, patience=p.patience, lr=p.lr, batch_seconds=p.batch_seconds, seed=seed,
                       asr_hidden=p.asr_hidden, asr_layers=p.asr_layers, asr_train_hours=p.asr_train_hours,
                       intent_head=p.intent_head)


def _names_speakers(data: Path) -> bool:
    """Whether the probe corpus's test utterances name their speakers (then every score sheet names them)."""
    from ..data.manifest import open_split

    cut = next(iter(open_split(data, "test")), None)
    return cut is not None and bool(cut.supervisions) and bool(cut.supervisions[0].speaker)


def _done(path: Path, cfg, record: dict, units: bool = True) -> bool:
    """Whether a probe result exists for this encoder and these settings (a resumed study skips it); with
    ``units``, whether its score sheets name each item's speaker too."""
    from dataclasses import asdict

    from ..probes.encoders import same_encoder
    from ..probes.results import read_result

    try:
        result = read_result(path, path.stem.removeprefix("probe_"))
    except ValueError:  # none yet, or unreadable: probed again
        return False
    made = result.get("config")
    # a setting added since the result was written counts as its default: the result is not redone for it
    made = {**asdict(type(cfg)()), **made} if isinstance(made, dict) else None
    sheets = result.get("sheets")
    # a result from before its sheets named each item's speaker cannot be resampled by speaker
    named = isinstance(sheets, dict) and all(isinstance(s, dict) and "unit" in s for s in sheets.values())
    return (made == asdict(cfg) and isinstance(sheets, dict) and (named or not units)
            and isinstance(result.get("encoder"), dict) and same_encoder(result["encoder"], record))


def probe_all(cfg: StudyConfig, out: Path, data: Path, session: Session, progress: bool) -> None:
    from ..probes import run_probes
    from ..probes.encoders import load_encoder
    from ..probes.results import result_path

    p = cfg.probe
    units = _names_speakers(data)
    for i, name in enumerate(p.models):
        runs = replicates(cfg, name)
        stage(f"3/4 probes of {name} ({i + 1} of {len(p.models)}; {runs} run(s) x {p.seeds} seed(s) x "
              f"{', '.join(p.tasks)})", session)
        for run in range(runs):
            encoder = load_encoder(encoder_spec(name, out, run), p.device, seed=init_seed(name, out, run))
            record = {"name": encoder.name, "spec": encoder.spec, **encoder.info}
            cache = out / "probes" / name / ("cache" if name == "fbank" else f"run-{run}/cache")
            for seed in range(p.seeds):
                folder, pcfg = probe_folder(out, name, run, seed), probe_config(cfg, probe_seed(run, seed))
                todo = [t for t in p.tasks if not _done(result_path(folder, t), pcfg, record, units)]
                if not todo:
                    continue
                print(f"  run {run}, seed {seed}: {', '.join(todo)}", flush=True)
                run_probes(encoder, todo, data, folder, pcfg, device=p.device, progress=progress, cache_dir=cache)
                session.save(f"probes {name} run {run} seed {seed}")


def load_study_config(name: str, overrides: list[str]) -> StudyConfig:
    return load_config(name, overrides, cls=StudyConfig)
