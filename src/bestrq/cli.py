"""The ``bestrq`` command: parses arguments and dispatches; the work lives in the modules."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _synth(args: argparse.Namespace) -> int:
    from .synth.corpus import SynthConfig, format_summary, synthesize

    cfg = SynthConfig(hours=args.hours, seed=args.seed, speakers=args.speakers, sv_speakers=args.sv_speakers)
    summary = synthesize(args.out, cfg, jobs=args.jobs, progress=not args.quiet)
    print(format_summary(summary))
    print(f"manifests and audio in {Path(args.out).resolve()} (summary.json has the details)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .data.importers import prepare

    options = {"jobs": args.jobs}
    if args.format == "folder":
        options["max_duration"] = args.max_duration
    if args.format == "speechbrain" and args.data_root:
        options["data_root"] = args.data_root
    report = prepare(args.format, args.src, args.out, **options)
    for split, n in report.splits.items():
        print(f"{split}: {n} cuts, {report.hours[split]:.3f} h")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable files (listed in the warnings above)")
    print(f"manifests in {Path(args.out).resolve()}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train.loop import pretrain

    overrides = list(args.set)
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    result = pretrain(cfg)
    if result.valid:
        v = result.valid
        print(f"step {result.step}: valid masked accuracy {v['accuracy']:.4f} "
              f"({v['accuracy'] / max(v['baseline_accuracy'], 1e-9):.1f}x the {result.model.baseline_name} "
              f"baseline, {v['baseline_accuracy']:.4f}), loss {v['loss']:.3f}")
    print(f"run folder: {result.out_dir.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="bestrq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bestrq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="synthesise the offline multi-speaker, multi-task speech corpus")
    p.add_argument("--out", required=True, help="output folder (audio, manifests, summary)")
    p.add_argument("--hours", type=float, default=1.0, help="hours of audio to make (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same corpus")
    p.add_argument("--speakers", type=int, default=None,
                   help="number of pseudo-speakers (default max(40, 125 per hour))")
    p.add_argument("--sv-speakers", type=int, default=None,
                   help="speakers held out for verification (default max(20, 20%% of speakers))")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)

    from .data.importers import IMPORTERS

    p = sub.add_parser("prepare", help="import an existing corpus into bestrq manifests")
    p.add_argument("format", choices=sorted(IMPORTERS), help="layout of SRC")
    p.add_argument("src", help="corpus folder or manifest file")
    p.add_argument("--out", required=True, help="output folder for the manifests")
    p.add_argument("--jobs", type=int, default=4, help="threads reading audio headers")
    p.add_argument("--max-duration", type=float, default=30.0,
                   help="folder: cut longer files into windows of this many seconds (0: never)")
    p.add_argument("--data-root", default=None, help="speechbrain: value of $data_root in paths")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("pretrain", help="BEST-RQ pre-training (multi-GPU: torchrun ... -m bestrq pretrain)")
    p.add_argument("--config", default="bestrq_tiny",
                   help="YAML file or preset name (bestrq_tiny, bestrq_base; default bestrq_tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--out", default=None, help="run folder (same as --set train.out_dir=...)")
    p.set_defaults(func=_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"bestrq {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
