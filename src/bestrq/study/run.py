"""Running the study: its stages in order, resumed from what is made, stopped cleanly by SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from ..files import atomic_path
from .config import CorpusConfig, StudyConfig
from .sessions import MACHINE, SESSIONS, Session, machine

log = logging.getLogger(__name__)


def corpus(c: CorpusConfig, folder: Path, progress: bool, avoid: tuple[Path, ...] = ()) -> Path:
    """The corpus folder: the one given, or synthesised into ``folder`` (kept, and resumed, across runs), its
    dev and test transcripts none of those in the corpora ``avoid``."""
    if c.folder:
        return Path(c.folder)
    from dataclasses import fields

    from ..synth.corpus import SynthConfig, SynthSettings, synthesize

    settings = {f.name: getattr(c, f.name) for f in fields(SynthSettings)}
    synthesize(folder, SynthConfig(**settings, avoid=tuple(str(a) for a in avoid)), progress=progress)
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
    session = Session(out / SESSIONS, command, asdict(cfg))
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
    machine); then for each pre-training run R: BEST-RQ's run R and at once its probes, then the probes of
    run R's random init and of fbank (no trained weights), then wav2vec 2.0's run R and its probes (a run's
    weights are needed only until its probes are made: what a session ends in the middle of is lost with
    its machine, so the long block comes last); the ablation with run 0. Each run and probe is done once: a
    resumed study skips what it finds made."""

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
            # BEST-RQ's run first: the random init and fbank probes follow it (they need no trained weights, and
            # the random init is built from its config); each other run follows, its probes at once
            for run in sorted(trained, key=lambda run: run.model != "bestrq"):
                stage(f"4/5 run {r + 1} of {cfg.pretrain.runs}: {run.name}", self.session)
                probes = (run.model, r) if run.model in probed else None
                if (stopped := self.train(run, probes, units)) is not None:
                    return stopped
                if probes:
                    probe_model(cfg, out, probe_data, run.model, r, self.saved, progress, units)
                for name in ("random", "fbank") if run.model == "bestrq" else ():
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

    path = folder / MACHINE
    if path.is_file() and path.read_text().strip() != machine():
        print(f"  the timing runs in {folder} were made on {path.read_text().strip()}: timed again on this machine")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(machine() + "\n")
