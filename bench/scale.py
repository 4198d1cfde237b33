"""Start-up time and peak memory against the size of the corpus: ``python bench/scale.py``.

For corpora of 10k, 100k and 1M cuts (the demo corpus's training clips under new ids, so
the audio is the same and only the manifest grows), one ``bestrq pretrain`` of one step
(``bestrq_tiny``, one loader worker, no validation): its wall time from start to end and the
peak resident memory of its main process and of its loader worker. The same for sharded
corpora of those sizes (lhotse Shar, 1000 cuts per shard, as ``bestrq prepare --shards``
writes them): the first shard is written from 1000 demo clips, the others are copies of it
(the tar hard-linked, the same cuts), so that 1M cuts need no 1M clips of audio. Then
``bestrq prepare folder`` on a folder of small audio files, plain and ``--shards``: its time
and peak memory.

Nothing else should run beside it: the times are wall-clock. Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def peak_rss(pid: int) -> dict[int, int]:
    """VmHWM (peak resident KiB) of ``pid`` and each of its descendants, as /proc has it now."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                out[p] = int(line.split()[1])
        todo += [int(c) for c in children]
    return out


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, int, int, str]:
    """(seconds, peak MiB of the main process, the largest peak MiB of its descendants, stderr tail)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for p, kib in peak_rss(proc.pid).items():
                peaks[p] = max(peaks.get(p, 0), kib)
            time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    _, err = proc.communicate()
    seconds = time.monotonic() - start
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    main = peaks.pop(proc.pid, 0)
    return seconds, main // 1024, max(peaks.values(), default=0) // 1024, err


def grow(demo: Path, out: Path, n: int) -> Path:
    """A corpus folder whose train split holds ``n`` cuts: the demo's, again and again, renamed."""
    target = out / f"cuts_{n}"
    manifest = target / "cuts_train.jsonl.gz"
    if manifest.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with gzip.open(demo / "cuts_train.jsonl.gz", "rt") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    tmp = manifest.with_name(".tmp-" + manifest.name)
    with gzip.open(tmp, "wt", compresslevel=1) as f:
        for i in range(n):
            cut = dict(lines[i % len(lines)])
            cut["id"] = f"{cut['id']}-{i // len(lines)}"
            f.write(json.dumps(cut) + "\n")
    tmp.rename(manifest)
    return target


def grow_shards(demo: Path, out: Path, n: int, shard_size: int = 1000) -> Path:
    """A corpus folder whose train split is ``n`` cuts in shards of ``shard_size``: one written
    from the demo's clips, renamed, then copies of it (cut ids repeat from shard to shard)."""
    from lhotse.utils import fastcopy

    from bestrq.data.manifest import SHARD_AUDIO, SHARD_CUTS, load_split
    from bestrq.data.shards import write_shards

    target = out / f"shards_{n}"
    split = target / "train"
    if (target / "done").is_file():
        return target
    subprocess.run(["rm", "-rf", str(target)], check=True)
    clips = list(load_split(demo, "train"))
    cuts = (fastcopy(clips[i % len(clips)], id=f"{clips[i % len(clips)].id}-{i // len(clips)}")
            for i in range(min(n, shard_size)))
    write_shards(target, "train", cuts, shard_size=shard_size, jobs=2)
    first_cuts, first_tar = split / SHARD_CUTS.format(0), split / SHARD_AUDIO.format(0)
    for k in range(1, -(-n // shard_size)):
        os.link(first_tar, split / SHARD_AUDIO.format(k))
        os.link(first_cuts, split / SHARD_CUTS.format(k))
    (target / "done").write_text(str(n))
    return target


def pretrain(corpus: Path, out: Path) -> list[str]:
    sets = [f"data.corpus={corpus}", "data.valid_split=", "train.steps=1", "train.progress=false",
            "train.tensorboard=false", "data.num_workers=1", "train.log_every=1"]
    return [sys.executable, "-m", "bestrq", "pretrain", "--config", "bestrq_tiny", "--out", str(out),
            *(a for s in sets for a in ("--set", s))]


def small_files(folder: Path, n: int) -> Path:
    """``n`` audio files of 0.2 s (noise), in folders of 1000."""
    if (folder / "done").is_file():
        return folder
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(3200)).astype(np.float32)
    for i in range(n):
        path = folder / f"d{i // 1000:04d}" / f"f{i:07d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, clip, 16000, subtype="PCM_16")
    (folder / "done").write_text(str(n))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="data/demo", help="a corpus folder made by `bestrq synth` (its train split)")
    ap.add_argument("--out", default="build/scale", help="where the grown corpora and runs go")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--files", type=int, nargs="*", default=[10_000, 100_000],
                    help="folders of this many files for `bestrq prepare folder`")
    args = ap.parse_args()
    demo, out = Path(args.demo), Path(args.out)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    rows = ["| input | cuts | seconds, start to end | peak main (MiB) | peak worker (MiB) |",
            "|---|---:|---:|---:|---:|"]
    for label, make, runs in (("plain folder", grow, "run"), ("Shar shards", grow_shards, "run_shards")):
        for n in args.sizes:
            corpus = make(demo, out, n)
            run = out / f"{runs}_{n}"
            subprocess.run(["rm", "-rf", str(run)], check=True)
            seconds, main_mib, worker_mib, _ = measure(pretrain(corpus, run), env)
            rows.append(f"| {label} | {n:,} | {seconds:.1f} | {main_mib} | {worker_mib} |")
            print(rows[-1], flush=True)
    for n in args.files:
        src = small_files(out / f"files_{n}", n)
        for extra in ([], ["--shards"]):
            subprocess.run(["rm", "-rf", str(out / "prepared")], check=True)
            seconds, main_mib, _, _ = measure([sys.executable, "-m", "bestrq", "prepare", "folder", str(src), "--out",
                                               str(out / "prepared"), *extra], env)
            rows.append(f"| `{' '.join(['bestrq prepare folder', *extra])}` | {n:,} files | {seconds:.1f} | {main_mib} | – |")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
