"""The ``bestrq`` command: parses arguments and dispatches; the work lives in the modules."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path


def _settings(args: argparse.Namespace, cls: type, **more):
    """The settings dataclass ``cls`` from the flags :func:`_add_settings` made of its fields."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in more}, **more)


def _add_settings(p: argparse.ArgumentParser, cls: type) -> None:
    """A flag for every field of a settings dataclass (``config.setting``), declared there once: its name with
    dashes, its type, choices and help, and its default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # int | None: unset by default
            kind = next(t for t in kind.__args__ if t is not type(None))
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"].replace("%", "%%")
        if kind is bool:
            p.add_argument(flag, action="store_true", default=f.default, help=text)
            continue
        if f.default is not None and f.default != "":
            text += f" (default {f.default:g})" if isinstance(f.default, float) else f" (default {f.default})"
        p.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"), help=text)


def _synth(args: argparse.Namespace) -> int:
    from .synth.corpus import SynthConfig, format_summary, synthesize

    cfg = _settings(args, SynthConfig, avoid=tuple(args.avoid))
    summary = synthesize(args.out, cfg, jobs=args.jobs, progress=not args.quiet)
    print(format_summary(summary))
    print(f"manifests and audio in {Path(args.out).resolve()} (summary.json has the details)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .data.importers import UNUSABLE, prepare

    options = {"jobs": args.jobs}
    if args.format == "folder":
        options["max_duration"] = args.max_duration
        options["dev_fraction"] = args.dev_fraction
    if args.format == "iemocap":
        options["test_session"] = args.test_session
    if args.format == "speechbrain" and args.data_root:
        options["data_root"] = args.data_root
    report = prepare(args.format, args.src, args.out, shard_size=args.shard_size if args.shards else None, **options)
    for split, n in report.splits.items():
        print(f"{split}: {n} cuts, {report.hours[split]:.3f} h")
    if report.skipped:
        print(f"skipped {len(report.skipped)} files that are {UNUSABLE} (see the warnings above)")
    print(f"{'shards' if args.shards else 'manifests'} in {Path(args.out).resolve()}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train.loop import pretrain

    overrides = list(args.set)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    cfg = load_config(args.config, overrides)
    result = pretrain(cfg)
    if result.bad_steps:
        print(f"{result.bad_steps} updates were skipped for a non-finite loss or gradient")
    if result.signal is not None:  # pre-empted: a checkpoint is saved; the exit status says "not finished"
        print(f"run folder: {result.out_dir.resolve()} (stopped at step {result.step}; the same command resumes)")
        return 128 + int(result.signal)
    if result.valid:
        v = result.valid
        print(f"step {result.step}: valid masked accuracy {v['accuracy']:.4f} "
              f"({v['accuracy'] / max(v['baseline_accuracy'], 1e-9):.1f}x the {result.model.baseline_name} "
              f"baseline, {v['baseline_accuracy']:.4f}), loss {v['loss']:.3f}")
    print(f"run folder: {result.out_dir.resolve()}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from .study import load_study_config, run_study

    overrides = list(args.set) + ([f"out={args.out}"] if args.out else [])
    cfg = load_study_config(args.config, overrides)
    command = " ".join(["bestrq", "study", "--config", args.config, *(f"--set {s}" for s in args.set),
                        *(["--out", args.out] if args.out else [])])
    return run_study(cfg, command, progress=not args.quiet)


def _probe_out(checkpoint: str) -> Path:
    """Default probe folder: inside the run for our checkpoints, under runs/probes for exports and baselines."""
    path = Path(checkpoint)
    if checkpoint == "fbank" or checkpoint.startswith("random:"):
        return Path("runs/probes") / checkpoint.replace(":", "-").replace("/", "_")
    from .inference.loading import BESTRQ_CONFIG
    from .runtime.checkpoint import run_of

    if (path / BESTRQ_CONFIG).is_file():  # an export: kept as transformers loads it, no cache inside
        return Path("runs/probes") / path.resolve().name

    return (run_of(path) or path) / "probes"


def _probe(args: argparse.Namespace) -> int:
    from .probes import TASKS, ProbeConfig, run_probes
    from .report import format_probe_results

    tasks = list(TASKS) if args.task == "all" else [args.task]
    cfg = _settings(args, ProbeConfig)
    out = Path(args.out) if args.out else _probe_out(args.checkpoint)
    if args.chunk_ms is not None and not args.out:  # beside the full-context results, not over them
        left = "" if args.left_chunks is None else f"_left{args.left_chunks}"
        out = out.with_name(f"{out.name}_chunks{args.chunk_ms:g}ms{left}")
    results = run_probes(args.checkpoint, tasks, args.data, out, cfg, device=args.device, progress=not args.quiet,
                         skip_unlabelled=args.task == "all", cache_dir=args.cache, precision=args.precision,
                         chunk_ms=args.chunk_ms, left_chunks=args.left_chunks)
    print(format_probe_results(results))
    print(f"results in {out.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    if args.fill:
        from .study.summary import fill

        for doc in args.fill:
            print(f"{doc}: {fill(doc)} verdicts block(s) rewritten from their results")
        if not args.runs:
            return 0
    if not args.runs or not args.out:
        raise ValueError("give run folders and --out, or --fill DOC")
    path = write_report(args.runs, args.out)
    print(path.read_text())
    print(f"report and plots in {Path(args.out).resolve()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .inference.api import load_checkpoint

    loaded = load_checkpoint(args.checkpoint)
    if args.chunk_ms is not None:
        if args.to != "onnx":
            raise ValueError("--chunk-ms exports a streaming step function, to ONNX only: add --to onnx")
        from .export.onnx import export_onnx_stream

        path = export_onnx_stream(loaded, args.out, args.chunk_ms, args.left_chunks, overwrite=args.overwrite)
        print(f"ONNX streaming step (step {loaded.step}, chunks of {args.chunk_ms:g} ms, {args.left_chunks} left) in "
              f"{path.resolve()}; its inputs, outputs and state in {path.with_suffix('.json').name}")
        return 0
    if args.to == "onnx":
        from .export.onnx import export_onnx

        path = export_onnx(loaded, args.out, overwrite=args.overwrite)
        print(f"ONNX encoder (step {loaded.step}) in {path.resolve()}; its inputs and outputs in "
              f"{path.with_suffix('.json').name}")
        return 0
    from .export.hf import export_hf

    path = export_hf(loaded, args.out, overwrite=args.overwrite)
    print(f"transformers Wav2Vec2BertModel (step {loaded.step}) in {path.resolve()}: load it with "
          f"Wav2Vec2BertModel.from_pretrained and AutoFeatureExtractor.from_pretrained, or bestrq.load")
    return 0


def _os_error(e: OSError) -> str:
    """The system's error, said of the path it concerns."""
    path = Path(e.filename)
    if isinstance(e, FileExistsError) and not path.is_dir():
        return f"{path}: exists and is not a folder"
    if isinstance(e, NotADirectoryError):
        blocking = next((p for p in [path, *path.parents] if p.is_file()), None)
        return f"{path}: {blocking} is a file, not a folder" if blocking else f"{path}: {e.strerror}"
    return f"{path}: {e.strerror}"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="bestrq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bestrq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .probes.tasks import ProbeConfig
    from .synth.corpus import SynthSettings

    p = sub.add_parser("synth", help="synthesise the offline multi-speaker, multi-task speech corpus")
    p.add_argument("--out", required=True, help="output folder (audio, manifests, summary)")
    _add_settings(p, SynthSettings)
    p.add_argument("--avoid", action="append", default=[], metavar="FOLDER",
                   help="another corpus (manifest folder) whose transcripts dev and test leave out, "
                        "e.g. the pre-training corpus of a probe corpus; repeatable")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)

    from .data.importers import IMPORTERS
    from .data.shards import DEFAULT_SHARD_SIZE

    p = sub.add_parser("prepare", help="import an existing corpus into bestrq manifests")
    p.add_argument("format", choices=sorted(IMPORTERS), help="layout of SRC")
    p.add_argument("src", help="corpus folder or manifest file (recorded: the folder of the Debian packages, "
                               "fetched into it with apt-get download where missing)")
    p.add_argument("--out", required=True, help="output folder for the manifests")
    p.add_argument("--jobs", type=int, default=4, help="threads reading audio headers")
    p.add_argument("--max-duration", type=float, default=30.0,
                   help="folder: cut longer files into windows of this many seconds (0: never)")
    p.add_argument("--dev-fraction", type=float, default=0.02,
                   help="folder: hold out this fraction of the files (at least one of ten or more) as "
                        "split dev, for validation (default 0.02; 0: none)")
    p.add_argument("--shards", action="store_true",
                   help="write each split as shards (lhotse Shar: tars of FLAC audio with their cuts), read "
                        "in sequence, each process its own: for large corpora on network storage")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                   help=f"with --shards: cuts per shard (default {DEFAULT_SHARD_SIZE}); give every training "
                        "process several shards")
    p.add_argument("--data-root", default=None, help="speechbrain: value of $data_root in paths")
    p.add_argument("--test-session", type=int, default=5,
                   help="iemocap: the session held out as test (1-5, default 5); the one before it is dev")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("pretrain", help="BEST-RQ pre-training (multi-GPU: torchrun ... -m bestrq pretrain)")
    p.add_argument("--config", default="bestrq_tiny",
                   help="YAML file or preset name (bestrq_tiny, bestrq_base; default bestrq_tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (same as --set train.out_dir=...)")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="continue pre-training a run, checkpoint or `bestrq export` folder: its weights, "
                        "quantizer and heads, a fresh optimizer (same as --set train.init_from=...)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("probe", help="downstream probes (ASR, speaker, emotion, intent, language) on a frozen encoder")
    p.add_argument("--checkpoint", required=True,
                   help="a run folder or checkpoint folder of ours, 'fbank' (features alone) or 'random:CONFIG'")
    p.add_argument("--task", default="all", choices=["asr", "speaker", "emotion", "intent", "language", "all"],
                   help="the downstream task to probe (default all four; all leaves out, with a warning, a task whose "
                        "labels the corpus lacks)")
    p.add_argument("--data", required=True, help="manifest folder with train, dev, test (and sv) splits")
    p.add_argument("--out", default=None,
                   help="results folder (default: RUN/probes, or runs/probes/NAME for exports, fbank and random)")
    _add_settings(p, ProbeConfig)  # epochs, patience, heads, ..., seed: probes/tasks.py
    p.add_argument("--cache", default=None,
                   help="hidden-state cache folder (default OUT/cache): reused when it holds this encoder's states "
                        "of these clips, so probes of one encoder in several --out folders extract once")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="run", choices=["run", "fp32", "bf16"],
                   help="precision of the frozen encoder: run (default: what it was trained in, so a bf16 model is "
                        "probed in bf16 autocast), fp32 or bf16 (a CPU without fast bf16 runs it far slower)")
    p.add_argument("--chunk-ms", type=float, default=None, metavar="MS",
                   help="a streaming model: probe the states of chunk-by-chunk inference with chunks of MS "
                        "milliseconds (a multiple of the frame: 40 ms, wav2vec 2.0's 20 ms; default: full "
                        "context); results go to PROBES_chunksMSms")
    p.add_argument("--left-chunks", type=int, default=None, metavar="N",
                   help="with --chunk-ms: chunks of left context each frame sees (default: all the past)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_probe)

    p = sub.add_parser("export", help="write a model for Hugging Face transformers (Wav2Vec2BertModel) or ONNX")
    p.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("out", help="hf: the folder to write; onnx: the .onnx file to write")
    p.add_argument("--to", default="hf", choices=["hf", "onnx"], help="format (default hf)")
    p.add_argument("--chunk-ms", type=float, default=None, metavar="MS",
                   help="onnx, a streaming model: export one chunk of MS milliseconds (a multiple of the frame) "
                        "per call, the state in and out, instead of whole clips")
    p.add_argument("--left-chunks", type=int, default=4, metavar="N",
                   help="with --chunk-ms: chunks of left context kept in the state (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_export)

    p = sub.add_parser("report", help="a markdown table and plots from pre-training runs and their probes")
    p.add_argument("runs", nargs="*", help="run folders (with probes/) or probe folders")
    p.add_argument("--out", help="folder for report.md and the PNG plots")
    p.add_argument("--fill", nargs="+", metavar="DOC",
                   help="rewrite each <!-- verdicts: RESULTS --> block of these markdown docs from the study's "
                        "results.json it names")
    p.set_defaults(func=_report)

    p = sub.add_parser("study", help="BEST-RQ against wav2vec 2.0 end to end: corpora, pre-training at equal "
                       "updates, probes with several seeds, results with intervals (resumes when run again)")
    p.add_argument("--config", default="study",
                   help="study preset or YAML file: study (this 2-core machine, hours), study_quick (minutes), "
                        "study_gpu (default study)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study setting, e.g. --set pretrain.steps=2000 (repeatable)")
    p.add_argument("--out", default=None, help="the study's folder (same as --set out=...)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_study)

    # listed for --help only: main() hands `bestrq bench ...` to the benchmark's own parser
    sub.add_parser("bench", add_help=False,
                   help="pre-training speed and memory against transformers' wav2vec 2.0 and SpeechBrain's "
                        "BEST-RQ (bestrq bench --help for its options)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every option goes to the benchmark's own parser
        from .benchmark import main as bench

        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, ImportError) as e:  # bad input or a path that cannot be used: no traceback
        from_system = isinstance(e, OSError) and e.errno is not None and e.filename is not None
        print(f"bestrq {args.command}: error: {_os_error(e) if from_system else e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .train.loop import TrainingDiverged

        if not isinstance(e, TrainingDiverged):
            raise
        print(f"bestrq {args.command}: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
