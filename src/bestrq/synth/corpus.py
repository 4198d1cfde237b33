"""``bestrq synth``: an offline, multi-speaker, multi-task English speech corpus.

One seed decides everything: speakers, texts, labels, splits and noise. Utterances are
planned in a fixed order (speakers round-robin, labels and splits drawn per utterance),
rendered in parallel, and taken in that order until the requested hours are reached, so
any corpus is balanced and the same seed gives the same corpus: the same speakers, texts,
labels, splits, prosody and noise. eSpeak NG keeps its pitch-flutter phase in a
function-level static that runs on across utterances and that its API cannot reset, so a
rendering depends slightly on what its process rendered before. Each process renders a
fixed share (utterance i in process i % jobs): with the same number of processes the
waveforms are the same to the sample; with another number they agree within a few samples,
and the cut-off at the requested hours may fall one utterance apart. Finished FLAC files are
written atomically and kept: an interrupted run picks up where it stopped.

Splits: ``train``, ``dev`` and ``test`` hold disjoint utterances of the seen speakers, for
ASR, emotion, intent and speaker identification, and no transcript of dev or test, spoken
command or sentence, occurs in train: a probe then tests what a model hears, not what it
remembers. ``SynthConfig.avoid`` names other corpora (a pre-training corpus) whose
transcripts dev and test leave out too. ``sv`` holds speakers never seen in the other
splits, with ``sv_trials.txt`` (VoxCeleb's format: ``1|0 cut_id cut_id``) for speaker
verification. ``speakers.jsonl`` holds every speaker's recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from tqdm import tqdm

from ..config import check_bounds, setting
from ..data.audio import SAMPLE_RATE
from ..data.manifest import save_split
from ..files import atomic_path
from .leakage import SPEAKERS, corpus_texts
from .text import INTENTS, SentenceGenerator, make_command
from .voices import EMOTIONS, Rendering, Speaker, make_speakers, plan_rendering, render

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test", "sv")
HELDOUT_FRACTION = 0.1  # of the seen speakers' utterances, each for dev and for test
COMMAND_FRACTION = 0.2  # utterances that are spoken commands with an intent
NEWER_DEFAULTS = {"commands": COMMAND_FRACTION, "heldout": HELDOUT_FRACTION, "trials": 1}
# the planner's version, in synth_settings.json: 2 draws commands apart across splits, so an unfinished
# corpus begun by version 1 would get other transcripts for the audio it already holds
PLAN = 2
MAX_DRAWS = 1000  # draws of a transcript the other side (train, or dev and test) lacks, before an error


@dataclass(frozen=True)
class SynthSettings:
    """What corpus to synthesise, declared once: ``bestrq synth``'s flags are made from these fields (cli.py),
    and the study's corpus sections inherit them (study/config.py)."""

    hours: float = setting(1.0, "hours of audio to make", gt=0)
    seed: int = setting(0, "random seed: the same seed gives the same corpus")
    speakers: int | None = setting(None, "number of pseudo-speakers (unset: max(40, 125 per hour))", ge=2)
    sv_speakers: int | None = setting(None, "speakers held out for verification (unset: max(20, 20% of speakers))",
                                      ge=1)
    commands: float = setting(COMMAND_FRACTION, "fraction of utterances that are spoken commands with an intent",
                              ge=0, le=1)
    heldout: float = setting(HELDOUT_FRACTION, "fraction of the seen speakers' utterances held out as dev, and "
                             "again as test", gt=0, lt=0.5)
    trials: int = setting(1, "verification trials per sv utterance, of each kind: same speaker, another", ge=1)


@dataclass(frozen=True)
class SynthConfig(SynthSettings):
    avoid: tuple[str, ...] = ()  # folders of other corpora whose transcripts (all splits) dev and test leave out

    def __post_init__(self) -> None:
        if isinstance(self.avoid, (str, os.PathLike)):
            raise TypeError(f"avoid: a tuple of corpus folders, got one folder {str(self.avoid)!r}")
        check_bounds(self)

    def n_speakers(self) -> int:
        return self.speakers if self.speakers is not None else max(40, math.ceil(125 * self.hours))

    def n_sv_speakers(self) -> int:
        n = self.sv_speakers if self.sv_speakers is not None else max(20, round(0.2 * self.n_speakers()))
        if n >= self.n_speakers():
            raise ValueError(f"{n} verification speakers leave no seen speaker out of {self.n_speakers()}")
        return n


@dataclass(frozen=True)
class Utterance:
    id: str
    speaker: Speaker
    split: str
    text: str
    emotion: str
    intent: str | None
    slots: dict[str, str] = field(default_factory=dict)
    rendering: Rendering | None = None


def plan(cfg: SynthConfig, avoid_texts: Collection[str] | None = None
         ) -> tuple[list[Speaker], Iterator[Utterance]]:
    """The speakers and the endless, deterministic sequence of utterances of a corpus.

    ``avoid_texts``: the transcripts dev and test must not use; default, those of the
    corpora in ``cfg.avoid``."""
    if avoid_texts is None:
        avoid_texts = corpus_texts(cfg.avoid)
    rng = np.random.default_rng(cfg.seed)
    speakers = make_speakers(cfg.n_speakers(), rng)
    sv_ids = {s.id for s in rng.choice(speakers, size=cfg.n_sv_speakers(), replace=False)}
    sentences = SentenceGenerator()

    decks: dict[tuple[str, str], list[str]] = {}

    def deal(split: str, labels: tuple[str, ...]) -> str:
        """Labels dealt from a shuffled deck per split: every split stays balanced."""
        deck = decks.setdefault((split, labels[0]), [])
        if not deck:
            deck.extend(labels[int(i)] for i in rng.permutation(len(labels)))
        return deck.pop()

    def utterances() -> Iterator[Utterance]:
        train_texts: set[str] = set()
        heldout_texts: set[str] = set()
        index = 0
        while True:
            for k in rng.permutation(len(speakers)):
                spk = speakers[int(k)]
                if spk.id in sv_ids:
                    split = "sv"
                else:
                    r = rng.random()
                    split = "dev" if r < cfg.heldout else "test" if r < 2 * cfg.heldout else "train"
                # no transcript, command or sentence, is in both train and dev or test; dev and
                # test also leave out the avoided corpora's. A command is redrawn in its dealt
                # intent, so the decks stay balanced
                taken, held_by = (((heldout_texts,), "dev or test") if split == "train" else
                                  ((train_texts,), "train") if split == "sv" else
                                  ((train_texts, avoid_texts), "train or the avoided corpora"))
                intent = deal(split, INTENTS) if rng.random() < cfg.commands else None
                for _ in range(MAX_DRAWS):
                    if intent is not None:
                        cmd = make_command(rng, intent)
                        text, slots = cmd.text, cmd.slots
                    else:
                        text, slots = sentences(rng), {}
                    if not any(text in texts for texts in taken):
                        break
                else:
                    what = f"{intent} command" if intent else "sentence"
                    raise RuntimeError(f"split {split}: {MAX_DRAWS} draws of a {what} all occur in {held_by} "
                                       "already; its phrasings are too few for this corpus")
                if split == "train":
                    train_texts.add(text)
                elif split in ("dev", "test"):
                    heldout_texts.add(text)
                emotion = deal(split, EMOTIONS)
                yield Utterance(
                    id=f"{spk.id}-{index:06d}", speaker=spk, split=split, text=text,
                    emotion=emotion, intent=intent, slots=slots,
                    rendering=plan_rendering(spk, emotion, text, rng),
                )
                index += 1

    return speakers, utterances()


def audio_path(out: Path, utt: Utterance) -> Path:
    return out / "audio" / utt.speaker.id / f"{utt.id}.flac"


def _render_to_file(job: tuple[Utterance, Path]) -> int:
    """Render one utterance to FLAC (atomically; kept if already there); its sample count."""
    utt, path = job
    if path.exists():
        return sf.info(str(path)).frames
    wav = render(utt.rendering)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return wav.shape[0]


def _cut(utt: Utterance, path: Path, num_samples: int):
    duration = num_samples / SAMPLE_RATE
    rec = Recording(
        id=utt.id, sources=[AudioSource(type="file", channels=[0], source=str(path.resolve()))],
        sampling_rate=SAMPLE_RATE, num_samples=num_samples, duration=duration,
    )
    custom = {"emotion": utt.emotion}
    if utt.intent is not None:
        custom.update(intent=utt.intent, slots=dict(utt.slots))
    sup = SupervisionSegment(
        id=utt.id, recording_id=utt.id, start=0.0, duration=duration, channel=0,
        text=utt.text, speaker=utt.speaker.id, language="English", custom=custom,
    )
    return MonoCut(id=utt.id, start=0.0, duration=duration, channel=0, recording=rec, supervisions=[sup])


def _trials(sv_cuts: list[tuple[str, str]], rng: np.random.Generator, per_utterance: int = 1
            ) -> list[tuple[int, str, str]]:
    """Balanced verification trials: for each utterance, ``per_utterance`` same- and other-speaker pairs."""
    by_spk: dict[str, list[str]] = {}
    for cut_id, spk in sv_cuts:
        by_spk.setdefault(spk, []).append(cut_id)
    trials = []
    for cut_id, spk in sv_cuts:
        same = [c for c in by_spk[spk] if c != cut_id]
        others = [s for s in by_spk if s != spk]
        if not same or not others:
            continue
        for _ in range(per_utterance):
            trials.append((1, cut_id, same[int(rng.integers(len(same)))]))
            other = by_spk[others[int(rng.integers(len(others)))]]
            trials.append((0, cut_id, other[int(rng.integers(len(other)))]))
    return trials


def synthesize(out: str | os.PathLike, cfg: SynthConfig, jobs: int | None = None,
               progress: bool = True) -> dict:
    """Make the corpus in ``out`` and return its summary (also written to summary.json)."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs: must be >= 1, got {jobs}")
    out = Path(out)
    settings = {"hours": cfg.hours, "seed": cfg.seed, "speakers": cfg.n_speakers(),
                "sv_speakers": cfg.n_sv_speakers()}
    # the newer settings are recorded when they differ from their defaults: older corpora stay valid
    settings.update({k: getattr(cfg, k) for k, default in NEWER_DEFAULTS.items() if getattr(cfg, k) != default})
    avoid_texts = corpus_texts(cfg.avoid)
    if cfg.avoid:  # what was avoided, not where it lay: the corpora may move, and a changed one is refused
        digest = hashlib.sha1("\n".join(sorted(avoid_texts)).encode()).hexdigest()[:16]
        settings["avoid"] = {"texts": len(avoid_texts), "sha1": digest}
    settings_file = out / "synth_settings.json"
    if settings_file.exists():
        previous = json.loads(settings_file.read_text())
        if {k: v for k, v in previous.items() if k != "plan"} != settings:
            raise FileExistsError(
                f"{out} holds a corpus made with other settings ({previous}); "
                f"choose another --out or remove it (asked for {settings})")
        if (out / "summary.json").exists():  # finished: kept as made, by whichever planner
            return json.loads((out / "summary.json").read_text())
        if previous.get("plan", 1) != PLAN:
            raise FileExistsError(f"{out} holds an unfinished corpus begun by an older planner, which drew other "
                                  "transcripts for its utterances: remove it to synthesise it again")
    settings["plan"] = PLAN
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(settings_file) as tmp:
        tmp.write_text(json.dumps(settings))

    speakers, utterances = plan(cfg, avoid_texts)
    jobs = jobs or len(os.sched_getaffinity(0))
    target = cfg.hours * 3600.0
    taken: list[tuple[Utterance, int]] = []
    total = 0.0
    start = time.perf_counter()
    bar = tqdm(total=round(target), unit="s audio", disable=not progress, desc="synth")
    # fork where there is one: no re-import of the caller's __main__ (spawn needs a guard
    # there); the engine is per process and the parent never starts one when jobs > 1.
    # One process per pool: utterance i always goes to process i % jobs, which renders its
    # share in plan order. eSpeak's state carries over between a process's renderings, so
    # with whichever process was free taking the next utterance, waveforms moved by a few
    # samples from run to run, and the 1-hour corpus of seed 0 ended 804 or 805 utterances long
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pools = [mp.get_context(method).Pool(1) for _ in range(jobs)] if jobs > 1 else []
    try:
        # a bounded window of jobs in plan order: results are taken in that order, so the
        # corpus is the same whatever the number of processes, up to the few samples above
        pending: deque = deque()
        sent = 0
        while total < target:
            while pools and len(pending) < 8 * jobs:
                utt = next(utterances)
                job = (utt, audio_path(out, utt))
                pending.append((utt, pools[sent % jobs].apply_async(_render_to_file, (job,))))
                sent += 1
            if pools:
                utt, result = pending.popleft()
                num_samples = result.get()
            else:
                utt = next(utterances)
                num_samples = _render_to_file((utt, audio_path(out, utt)))
            taken.append((utt, num_samples))
            total += num_samples / SAMPLE_RATE
            bar.update(min(round(total), bar.total) - bar.n)
    finally:
        bar.close()
        for pool in pools:
            pool.terminate()
            pool.join()
    elapsed = time.perf_counter() - start
    # files rendered ahead of the cut-off by busy workers are not part of the corpus
    keep = {audio_path(out, u) for u, _ in taken}
    for path in (out / "audio").rglob("*.flac"):
        if path not in keep:
            path.unlink()

    by_split: dict[str, list] = {s: [] for s in SPLITS}
    for utt, n in taken:
        by_split[utt.split].append(_cut(utt, audio_path(out, utt), n))
    for split, cuts in by_split.items():
        save_split(out, split, CutSet.from_cuts(cuts))
    sv = [(u.id, u.speaker.id) for u, _ in taken if u.split == "sv"]
    trials = _trials(sv, np.random.default_rng(cfg.seed + 1), cfg.trials)
    with atomic_path(out / "sv_trials.txt") as tmp:
        tmp.write_text("".join(f"{t} {a} {b}\n" for t, a, b in trials))
    with atomic_path(out / SPEAKERS) as tmp:
        tmp.write_text("".join(json.dumps(asdict(s)) + "\n" for s in speakers))

    summary = summarize(taken, trials, elapsed=elapsed, jobs=jobs, settings=settings)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    empty = [split for split, cuts in by_split.items() if not cuts] + ["sv_trials.txt"] * (not trials)
    if empty:  # pre-training needs train and dev, the probes all of them
        names = ", ".join(empty[:-1]) + " and " * (len(empty) > 1) + empty[-1]
        log.warning("%s: %s %s empty: %g h is too little to fill every split (0.2 h or more does)", out, names,
                    "is" if len(empty) == 1 else "are", cfg.hours)
    return summary


def summarize(taken: list[tuple[Utterance, int]], trials, *, elapsed: float, jobs: int, settings: dict) -> dict:
    splits = {}
    for split in SPLITS:
        items = [(u, n) for u, n in taken if u.split == split]
        words = [w for u, _ in items for w in u.text.split()]
        splits[split] = {
            "utterances": len(items),
            "hours": round(sum(n for _, n in items) / SAMPLE_RATE / 3600, 4),
            "speakers": len({u.speaker.id for u, _ in items}),
            "words": len(words),
            "vocabulary": len(set(words)),
            "emotion": dict(sorted(Counter(u.emotion for u, _ in items).items())),
            "intent": dict(sorted(Counter(u.intent for u, _ in items if u.intent).items())),
        }
    audio_s = sum(n for _, n in taken) / SAMPLE_RATE
    return {
        "settings": settings,
        "hours": round(audio_s / 3600, 4),
        "utterances": len(taken),
        "speakers": len({u.speaker.id for u, _ in taken}),
        "mean_duration_s": round(audio_s / max(len(taken), 1), 2),
        "sv_trials": {"target": sum(t for t, _, _ in trials), "nontarget": sum(1 - t for t, _, _ in trials)},
        "splits": splits,
        "generation": {"seconds": round(elapsed, 1), "jobs": jobs,
                       "x_real_time": round(audio_s / max(elapsed, 1e-9), 1)},
    }


def format_summary(summary: dict) -> str:
    rows = [(f"corpus: {summary['hours']:.2f} h, {summary['utterances']} utterances, "
             f"{summary['speakers']} speakers, mean {summary['mean_duration_s']} s"),
            f"{'split':<6} {'utts':>6} {'hours':>7} {'spk':>4} {'vocab':>6}  emotion (n/h/s/a)      intents"]
    for split, s in summary["splits"].items():
        emo = "/".join(str(s["emotion"].get(e, 0)) for e in EMOTIONS)
        rows.append(f"{split:<6} {s['utterances']:>6} {s['hours']:>7.3f} {s['speakers']:>4} "
                    f"{s['vocabulary']:>6}  {emo:<22} {sum(s['intent'].values())} in {len(s['intent'])} classes")
    t = summary["sv_trials"]
    g = summary["generation"]
    rows.append(f"verification trials: {t['target']} target, {t['nontarget']} non-target")
    rows.append(f"generated in {g['seconds']} s with {g['jobs']} processes: {g['x_real_time']}x real time")
    return "\n".join(rows)

