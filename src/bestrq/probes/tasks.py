"""The downstream tasks: labels from the manifest, a head, training with early stopping, metrics.

    asr      characters of ``text``; BiLSTM + CTC; greedy decoding; WER and CER
    speaker  ``speaker``; attentive statistics pooling -> embedding -> classes; identification
             accuracy on held-out utterances of seen speakers, and verification EER on
             ``sv_trials.txt`` (unseen speakers, cosine of embeddings)
    emotion  ``custom["emotion"]``; statistics pooling + linear; accuracy and macro-F1
    intent   ``custom["intent"]`` (utterances without one are left out); statistics pooling +
             MLP (or BiLSTM); accuracy
    language lhotse's ``language`` of the supervision (VoxLingua107, Common Voice, ``bestrq
             prepare recorded``); statistics pooling + linear, as emotion; accuracy

A probe trains on ``train``, keeps the epoch with the best ``dev`` score and reports ``test``
(and ``sv``) with it. The encoder stays frozen unless ASR is fine-tuned (``unfreeze``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import check_bounds, setting
from .cache import by_duration
from .heads import CTCHead, PooledClassifier, SpeakerHead, WeightedLayerSum
from .metrics import accuracy, ctc_greedy, equal_error_rate, error_rates, macro_f1, utterance_errors

TASKS = ("asr", "speaker", "emotion", "intent", "language")
MAIN_METRIC = {"asr": "cer", "speaker": "accuracy", "emotion": "accuracy", "intent": "accuracy",
               "language": "accuracy"}
LOWER_IS_BETTER = {"cer", "wer", "eer"}
ASR_RATE = 50.0  # CTC labels per second, whatever the encoder's frame rate (see CTCHead)
LSTM_RATE = 25.0  # BiLSTM steps per second at most: faster encoders' frames are stacked


@dataclass
class ProbeSettings:
    """How a probe trains, declared once: ``bestrq probe``'s flags are made from these fields (cli.py), and the
    study's ``probe`` section inherits them (study/config.py)."""

    epochs: int = setting(20, "at most this many epochs per task; a probe stops sooner once its dev score has "
                          "not improved for patience epochs", ge=1)
    patience: int = setting(4, "stop after this many epochs without a better dev score", ge=1)
    lr: float = setting(3e-3, "learning rate of the head and layer weights (AdamW)", gt=0)
    unfreeze: bool = setting(False, "ASR only: fine-tune the encoder too")
    encoder_lr: float = setting(5e-5, "encoder learning rate with unfreeze", gt=0)
    batch_seconds: float = setting(40.0, "audio per batch (smaller: more updates; CTC needs them)", gt=0)
    asr_hidden: int = setting(256, "BiLSTM width of the ASR head", ge=1)
    asr_layers: int = setting(2, "BiLSTM layers of the ASR head", ge=1)
    asr_train_hours: float = setting(0.0, "ASR trains on the first this many hours of the train split (0: all), as "
                                     "low-resource ASR benchmarks do", ge=0)
    intent_head: str = setting("mlp", "intent head: an MLP on mean+std pooled states (mlp), or a BiLSTM before the "
                               "pooling (lstm)", choices=("mlp", "lstm"))
    layer: int = setting(-1, "probe hidden state N alone (0: the front-end output, N: layer N) instead of the "
                         "learned weighted sum of all (-1): a layer-by-layer analysis", ge=-1)
    max_minutes: float = setting(0.0, "time limit per task (0: none; the epoch under way is finished)", ge=0)


@dataclass
class ProbeConfig(ProbeSettings):
    seed: int = setting(0, "random seed of the probes (and of a random: encoder)")

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class Item:
    cut_id: str
    duration: float
    label: object  # str for ASR, an int class otherwise
    speaker: str | None = None  # the unit its test outcome is resampled by (stats.py)


@dataclass
class TaskData:
    train: list[Item]
    dev: list[Item]
    test: list[Item]
    classes: list[str] = field(default_factory=list)  # class names, or ASR characters after the blank
    trials: list[tuple[int, str, str]] = field(default_factory=list)  # speaker verification


LABEL_FIELDS = {"asr": "the supervision's text", "speaker": "the supervision's speaker",
                "emotion": 'custom["emotion"]', "intent": 'custom["intent"]', "language": "the supervision's language"}


def _label(cut, task: str) -> str | None:
    sup = cut.supervisions[0] if cut.supervisions else None
    if sup is None:
        return None
    if task == "asr":
        return (sup.text or "").strip().lower() or None
    if task == "speaker":
        return sup.speaker
    if task == "language":
        return sup.language
    return (sup.custom or {}).get(task)


def task_data(task: str, splits: dict[str, list], trials: list[tuple[int, str, str]] | None = None) -> TaskData:
    """Items of each split; classes come from ``train`` and anything else unseen there is left out."""
    labelled = {name: [(c, lab) for c in cuts if (lab := _label(c, task)) is not None]
                for name, cuts in splits.items()}
    if not labelled["train"]:
        raise ValueError(f"{task}: no utterance of the train split has its label ({LABEL_FIELDS[task]})")
    if task == "asr":
        classes = sorted({ch for _, text in labelled["train"] for ch in text})
        keep = set(classes)

        def convert(text: str) -> str | None:
            return "".join(ch for ch in text if ch in keep) or None
    else:
        classes = sorted({lab for _, lab in labelled["train"]})
        if len(classes) < 2:  # e.g. a corpus all in one language
            raise ValueError(f"{task}: every labelled utterance of train is of one class ({classes[0]}): nothing "
                             "to tell apart")
        index = {c: i for i, c in enumerate(classes)}

        def convert(lab: str) -> int | None:
            return index.get(lab)
    items = {name: [Item(c.id, c.duration, y, c.supervisions[0].speaker) for c, lab in pairs
                    if (y := convert(lab)) is not None]
             for name, pairs in labelled.items()}
    for name in ("dev", "test"):
        if not items[name]:
            raise ValueError(f"{task}: no utterance of the {name} split has a label ({LABEL_FIELDS[task]}) "
                             "that the train split has too")
    return TaskData(items["train"], items["dev"], items["test"], classes, list(trials or []))


class Probe(nn.Module):
    """Weighted layer sum + the task's head."""

    def __init__(self, task: str, num_layers: int, dim: int, num_classes: int, cfg: ProbeConfig,
                 frame_rate: float = 50.0) -> None:
        super().__init__()
        self.task = task
        self.layers = WeightedLayerSum(num_layers, only=None if cfg.layer < 0 else cfg.layer)
        if task == "asr":  # + the blank, at 0; LSTM steps at LSTM_RATE, ASR_RATE labels per second
            stack = max(1, round(frame_rate / LSTM_RATE))
            upsample = max(1, round(ASR_RATE * stack / frame_rate))
            self.head = CTCHead(dim, num_classes + 1, cfg.asr_hidden, cfg.asr_layers, stack=stack,
                                upsample=upsample)
        elif task == "speaker":
            self.head = SpeakerHead(dim, num_classes)
        elif task in ("emotion", "language"):
            self.head = PooledClassifier(dim, num_classes)
        elif cfg.intent_head == "lstm":
            self.head = PooledClassifier(dim, num_classes, mlp_hidden=256, lstm_hidden=128)
        else:
            self.head = PooledClassifier(dim, num_classes, mlp_hidden=256)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(hidden), lengths)

    def embed(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head.embed(self.layers(hidden), lengths)


def _targets(items: list[Item], classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    index = {ch: i + 1 for i, ch in enumerate(classes)}
    seqs = [torch.tensor([index[ch] for ch in it.label]) for it in items]
    return torch.cat(seqs), torch.tensor([len(s) for s in seqs])


def loss_of(probe: Probe, hidden: torch.Tensor, lengths: torch.Tensor, items: list[Item], classes: list[str]
            ) -> torch.Tensor:
    out = probe(hidden, lengths)
    if probe.task == "asr":
        log_probs, out_lengths = out
        targets, target_lengths = _targets(items, classes)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=0,
                          zero_infinity=True)
    return F.cross_entropy(out, torch.tensor([it.label for it in items], device=out.device))


GetStates = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def evaluate(probe: Probe, items: list[Item], get: GetStates, classes: list[str], seconds: float,
             device: torch.device, sheets: dict | None = None) -> dict[str, float]:
    """The metrics over ``items``; with ``sheets``, each metric's per-item outcomes go there too (see stats.py)."""
    probe.eval()
    units: list[str | None] = []
    if probe.task == "asr":
        refs, hyps = [], []
        for batch in by_duration(items, seconds):
            hidden, lengths = get([it.cut_id for it in batch])
            decoded = ctc_greedy(*probe(hidden.to(device), lengths.to(device)))
            hyps += ["".join(classes[c - 1] for c in seq) for seq in decoded]
            refs += [it.label for it in batch]
            units += [it.speaker for it in batch]
        if sheets is not None:
            sheets.update(utterance_errors(refs, hyps))
            _name_units(sheets, [u for u, r in zip(units, refs) if r.strip()])  # as utterance_errors keeps them
        return error_rates(refs, hyps)
    preds, targets = [], []
    for batch in by_duration(items, seconds):
        hidden, lengths = get([it.cut_id for it in batch])
        preds += probe(hidden.to(device), lengths.to(device)).argmax(dim=-1).tolist()
        targets += [it.label for it in batch]
        units += [it.speaker for it in batch]
    result = {"accuracy": accuracy(preds, targets)}
    if sheets is not None:
        sheets["accuracy"] = {"correct": [int(p == t) for p, t in zip(preds, targets)]}
    if probe.task == "emotion":
        result["macro_f1"] = macro_f1(preds, targets, len(classes))
        if sheets is not None:
            sheets["macro_f1"] = {"pred": preds, "target": targets}
    if sheets is not None:
        _name_units(sheets, units)
    return result


def _name_units(sheets: dict, units: list[str | None]) -> None:
    """Each outcome's speaker, for the bootstrap to resample speakers (a speaker's utterances are alike);
    none where an item has no speaker."""
    if units and all(u is not None for u in units):
        for sheet in sheets.values():
            sheet["unit"] = list(units)


@torch.no_grad()
def verification_eer(probe: Probe, trials: list[tuple[int, str, str]], get: GetStates, seconds: float,
                     device: torch.device, durations: dict[str, float], sheets: dict | None = None,
                     speakers: dict[str, str] | None = None) -> float:
    """The EER over ``trials``; with ``sheets``, their scores and labels, and with ``speakers`` (cut id ->
    speaker) each trial's units for the bootstrap: the speakers of its two utterances."""
    probe.eval()
    ids = sorted({i for _, a, b in trials for i in (a, b)})
    items = [Item(i, durations[i], None) for i in ids]
    emb = {}
    for batch in by_duration(items, seconds):
        hidden, lengths = get([it.cut_id for it in batch])
        vectors = F.normalize(probe.embed(hidden.to(device), lengths.to(device)), dim=-1)
        emb.update({it.cut_id: v for it, v in zip(batch, vectors)})
    scores = [float(emb[a] @ emb[b]) for _, a, b in trials]
    if sheets is not None:
        sheets["eer"] = {"scores": scores, "labels": [y for y, _, _ in trials]}
        if speakers is not None:
            sheets["eer"]["unit"] = [speakers[a] for _, a, _ in trials]
            sheets["eer"]["unit2"] = [speakers[b] for _, _, b in trials]
    return equal_error_rate(scores, [y for y, _, _ in trials])


def first_hours(items: list[Item], hours: float) -> list[Item]:
    """The first items (in split order) that add up to ``hours`` of audio, at least one."""
    total, out = 0.0, []
    for it in items:
        if out and total + it.duration > 3600 * hours:
            break
        out.append(it)
        total += it.duration
    return out


def _better(metric: str, new: float, old: float | None) -> bool:
    return old is None or (new < old if metric in LOWER_IS_BETTER else new > old)


def train_probe(task: str, data: TaskData, get: GetStates, num_layers: int, dim: int, cfg: ProbeConfig, *,
                device: torch.device, frame_rate: float = 50.0, get_sv: GetStates | None = None, sv_durations: dict[str, float] | None = None,
                sv_speakers: dict[str, str] | None = None, encoder: nn.Module | None = None, progress: bool = True
                ) -> tuple[dict, Probe]:
    """Train on ``data.train``, pick the best dev epoch, report dev and test (and sv) with it.

    ``encoder``: with ``cfg.unfreeze``, the encoder module whose parameters ``get`` reaches;
    they train too, at ``cfg.encoder_lr``.
    """
    if task == "asr" and cfg.asr_train_hours:
        data = replace(data, train=first_hours(data.train, cfg.asr_train_hours))
    torch.manual_seed(cfg.seed)
    probe = Probe(task, num_layers, dim, len(data.classes), cfg, frame_rate).to(device)
    groups = [{"params": [p for p in probe.parameters() if p.requires_grad], "lr": cfg.lr}]
    if cfg.unfreeze and encoder is not None:
        groups.append({"params": [p for p in encoder.parameters() if p.requires_grad], "lr": cfg.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    metric = MAIN_METRIC[task]
    best, best_state, best_epoch, curve, started = None, None, 0, [], time.monotonic()
    stopped = "epochs"  # what ended the training: the epoch limit, patience or the time limit
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"probe {task}", unit="epoch", disable=not progress)
    for epoch in bar:
        probe.train()
        if encoder is not None and cfg.unfreeze:
            encoder.train()
        total, count = 0.0, 0
        for batch in by_duration(data.train, cfg.batch_seconds, generator):
            hidden, lengths = get([it.cut_id for it in batch])
            loss = loss_of(probe, hidden.to(device), lengths.to(device), batch, data.classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 5.0)
            optimizer.step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        if encoder is not None:
            encoder.eval()
        dev = evaluate(probe, data.dev, get, data.classes, cfg.batch_seconds, device)
        curve.append({"epoch": epoch, "train_loss": total / max(count, 1), **{f"dev_{k}": v for k, v in dev.items()},
                      "layer_weights": probe.layers.weights.tolist()})
        bar.set_postfix(loss=f"{total / max(count, 1):.3f}", **{metric: f"{dev[metric]:.4f}"})
        if _better(metric, dev[metric], best):
            best, best_epoch, best_dev = dev[metric], epoch, dev
            best_state = copy.deepcopy(probe.state_dict())
            best_encoder = copy.deepcopy(encoder.state_dict()) if cfg.unfreeze and encoder is not None else None
        elif epoch - best_epoch >= cfg.patience:
            stopped = "patience"
            break
        if cfg.max_minutes and time.monotonic() - started > 60 * cfg.max_minutes:
            stopped = "time" if epoch < cfg.epochs else stopped
            break
    bar.close()
    probe.load_state_dict(best_state)
    if cfg.unfreeze and encoder is not None and best_encoder is not None:
        encoder.load_state_dict(best_encoder)
    sheets: dict = {}  # each test metric's per-item outcomes, for confidence intervals (stats.py)
    result = {
        "task": task, "best_epoch": best_epoch, "epochs": len(curve), "stopped": stopped,
        "dev": best_dev,  # evaluation is deterministic: the restored state scores the same
        "test": evaluate(probe, data.test, get, data.classes, cfg.batch_seconds, device, sheets),
        "test_ids": [it.cut_id for it in data.test], "sheets": sheets,
        "layer_weights": probe.layers.weights.tolist(), "curve": curve, "classes": data.classes,
        "train_items": len(data.train), "seconds": time.monotonic() - started, "config": asdict(cfg),
    }
    if task == "speaker" and data.trials and get_sv is not None:
        result["test"]["eer"] = verification_eer(probe, data.trials, get_sv, cfg.batch_seconds, device,
                                                 sv_durations or {}, sheets, sv_speakers)
        result["trials"] = len(data.trials)
    if math.isnan(result["test"].get(metric, 0.0)):
        raise ValueError(f"{task}: the test metric is undefined (no test items?)")
    return result, probe


def read_trials(path: str | Path) -> list[tuple[int, str, str]]:
    """VoxCeleb's trial list: ``1|0 enrol_id test_id`` per line; a bad line names the file and line."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:  # ids that are not UTF-8 then match no cut: named
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1"):
                raise ValueError(f"{path}:{n}: expected '1|0 cut_id cut_id', got {line.strip()!r}")
            out.append((int(parts[0]), parts[1], parts[2]))
    return out
