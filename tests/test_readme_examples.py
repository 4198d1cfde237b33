"""Every command of the README runs, as written, apart from shorter settings.

Each fenced block of the README carries a marker on the line before it:

- ``<!-- tested -->``: its lines run one after the other (a Python block as one script);
- ``<!-- tested: together -->``: its lines run at the same time (the nodes of a multi-node job);
- ``<!-- make -->``: ``make`` targets, which CI (``make test``) and ``make demo`` run; here only
  checked to exist and to expand.

The blocks run in README order in one scratch folder, where ``data/demo`` is the demo corpus (a fifth of its training split) and
``/data/...`` corpora are small look-alikes. ``shorter()`` and ``SHORTER`` are the only changes:
fewer steps and epochs, smaller batches, 2 of bestrq_base's 12 layers, 2 processes for 8, the
local machine for ``node0``. A line whose comment says ``exits N`` must exit with status N; every
other line with 0.

A plain ``bestrq`` line runs through ``bestrq.cli.main`` in this process, as the console script
calls it (``tests/test_cli.py`` runs the script itself): each subprocess would spend 2-3 s importing
torch and lhotse again. Lines under ``timeout`` or ``torchrun``, ``bestrq bench`` (it may put a
stand-in torchaudio in its process's modules), ``python`` scripts and blocks, and lines that run
together stay subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet

from bestrq.cli import main
from bestrq.data.manifest import load_split, save_split
from bestrq.export.onnx import torch_exports_onnx
from bestrq.runtime import checkpoint

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(?:<!-- (tested|tested: together|make) -->\n)?```(\w*)\n(.*?)```", re.DOTALL)

# `--to onnx` needs torch >= 2.6; on an older torch it must exit 2 saying so, and what reads the file is skipped
ONNX = torch_exports_onnx()
PRETRAIN = ["--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "data.num_workers=0"]
BASE_ON_CPU = ["--set", "train.precision=fp32", "--set", "data.max_batch_duration=8", "--set", "data.max_duration=4",
               "--set", "encoder.num_layers=2"]  # its checkpoint 0.2 GB, not 1.1 GB, written 4 times
# appended to the commands that start with (or, under torchrun or timeout, contain) the key;
# argparse keeps the last value of an option, and --set the last value of a key
SHORTER = {
    "bestrq pretrain": PRETRAIN,
    "bestrq probe": ["--epochs", "1", "--max-minutes", "0.05", "--asr-hidden", "16", "--quiet"],
    "bestrq bench": ["--rounds", "1", "--warmup", "0", "--batch-seconds", "8", "--no-memory"],
    "python examples/finetune_ctc.py": ["--steps", "3", "--eval-clips", "3", "--batch-seconds", "10"],
}


def blocks(doc: Path = README) -> list[tuple[str | None, str, str]]:
    """(marker, language, code) of every fenced block of ``doc`` (the README), in order."""
    return BLOCK.findall(doc.read_text())


def test_every_block_of_the_readme_is_marked_and_there_are_no_indented_ones():
    found = blocks()
    assert len(found) >= 12
    unmarked = [code.splitlines()[0] for marker, _, code in found if not marker]
    assert not unmarked, f"README blocks with no <!-- tested --> or <!-- make --> marker: {unmarked}"
    prose = BLOCK.sub("", README.read_text())
    indented = re.findall(r"\n\n( {4}\S.*)", prose)
    assert not indented, f"indented code in the README runs in no test: {indented}"


def test_the_readmes_make_targets_exist_and_expand():
    lines = [line.split("  #")[0].strip() for marker, _, code in blocks() if marker == "make" for line in commands(code)]
    assert lines == ["make demo", "make test", "make study", "make study STUDY=study_quick",
                     "make study STUDY=study_recorded"]
    for line in lines:
        done = subprocess.run(["make", "-n", *line.split()[1:]], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr


def commands(code: str) -> list[str]:
    return [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def shorter(line: str, free_port: int) -> tuple[list[str], int]:
    """The command to run for a README line, and the exit status its comment promises (else 0)."""
    code, _, comment = line.partition("  #")
    expect = int(m.group(1)) if (m := re.search(r"\bexits (\d+)", comment)) else 0
    if "--to onnx" in code and not ONNX:
        expect = 2
    code = code.replace("/data/", "fixtures/")
    code = re.sub(r"--nproc_per_node 8", "--nproc_per_node 1" if "--nnodes" in code else "--nproc_per_node 2", code)
    code = code.replace("node0", "127.0.0.1").replace("29500", str(free_port)).replace("--jobs 16", "--jobs 2")
    code = code.replace("--shard-size 1000", "--shard-size 4")  # several shards of the look-alike's windows
    code = re.sub(r"^timeout (.*?) 60 ", r"timeout \1 15 ", code)  # the pre-emption comes sooner
    words = code.split()
    for key, extra in SHORTER.items():
        if key in code:
            words += extra
    if "bestrq pretrain" in code:
        if not code.startswith("timeout"):  # a run that is not to be pre-empted stops by itself
            words += ["--set", "train.max_minutes=0.02"]
        if "bestrq_base" in code:
            words += BASE_ON_CPU
    if words[0] == "python":
        words[0] = sys.executable
    return words, expect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(cut) -> np.ndarray:
    return sf.read(cut.recording.sources[0].source, dtype="float32")[0]


def smaller_demo(corpus: Path, out: Path) -> None:
    """The demo corpus with every fifth training cut (the same speakers and labels): quicker probes."""
    save_split(out, "train", CutSet.from_cuts(list(load_split(corpus, "train"))[::5]))
    for split in ("dev", "test", "sv"):
        save_split(out, split, load_split(corpus, split))
    shutil.copy(corpus / "sv_trials.txt", out / "sv_trials.txt")


def look_alike_corpora(corpus: Path, fixtures: Path) -> None:
    """/data/LibriSpeech, /data/librilight and /data/my_audio, from the demo corpus's audio."""
    train = list(load_split(corpus, "train").subset(first=48))
    for i, cut in enumerate(train[:24]):  # LibriSpeech: part/speaker/chapter/*.flac + *.trans.txt
        part = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean")[i % 4]
        speaker = cut.supervisions[0].speaker.removeprefix("spk")
        folder = fixtures / "LibriSpeech" / part / speaker / "7"
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{speaker}-7-{i:04d}"
        shutil.copy(cut.recording.sources[0].source, folder / f"{utt}.flac")
        with open(folder / f"{speaker}-7.trans.txt", "a") as f:
            f.write(f"{utt} {cut.supervisions[0].text.upper()}\n")
    for i, cut in enumerate(train[24:]):  # a folder of one's own: flac and wav, nested
        suffix = ".wav" if i % 3 == 0 else ".flac"
        target = fixtures / "my_audio" / f"session{i % 2}" / f"clip{i:02d}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, read(cut), 16000)
    rng = np.random.default_rng(0)
    for i in range(12):  # Libri-Light: speaker/book/*.flac, long files
        audio = np.concatenate([read(train[j]) for j in rng.choice(len(train), 8, replace=False)])
        target = fixtures / "librilight" / "small" / f"{100 + i % 3}" / f"book{i}" / f"chapter{i}.flac"
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, audio, 16000)


def in_process(command: list[str]) -> bool:
    """Whether a README line runs through ``bestrq.cli.main`` here rather than as a subprocess."""
    return command[0] == "bestrq" and command[1:2] != ["bench"]


def run_main(command: list[str], cwd: Path) -> tuple[int, str, str]:
    """``bestrq ARGS`` as the console script runs it, in ``cwd``: its exit status, stdout and stderr
    (the log records of its run included, in the CLI's format). What a run sets for its process (the
    working directory, the fp32 matmul precision, the thread count, the global random generators) is
    put back after it, so that the tests after this one see this process as it was."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # pytest's handlers keep the CLI's basicConfig from adding one
    before = os.getcwd(), torch.get_float32_matmul_precision(), torch.get_num_threads()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), torch.random.fork_rng():
            try:
                status = main(command[1:])
            except SystemExit as e:  # argparse's errors and --help; a message exits 1, as the interpreter says
                if isinstance(e.code, int) or e.code is None:
                    status = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    status = 1
    finally:
        os.chdir(before[0])
        torch.set_float32_matmul_precision(before[1])
        torch.set_num_threads(before[2])
        logging.getLogger().removeHandler(handler)
    return status, out.getvalue(), err.getvalue()


def run_blocks(doc: Path, cwd: Path) -> str:
    """Run the tested blocks of ``doc`` in ``cwd`` as the module's docstring says; their output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONWARNINGS": "ignore"}
    outputs = []

    def check(done: subprocess.CompletedProcess | subprocess.Popen, command: list[str], expect: int, out: str,
              err: str) -> None:
        assert done.returncode == expect, (f"{' '.join(command)}\nexited {done.returncode}, not {expect}:\n"
                                           f"{out[-2000:]}\n{err[-4000:]}")
        outputs.append(out + err)

    for marker, language, code in blocks(doc):
        if marker not in ("tested", "tested: together"):
            continue
        if language == "python":
            if "onnxruntime" in code and not ONNX:
                continue
            done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=600, check=False)
            check(done, ["python", code[:60]], 0, done.stdout, done.stderr)
            continue
        port = free_port()
        lines = [shorter(line, port) for line in commands(code)]
        if marker == "tested: together":
            procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for c, _ in lines]
            for proc, (command, expect) in zip(procs, lines, strict=True):
                out, err = proc.communicate(timeout=600)
                check(proc, command, expect, out, err)
            continue
        for command, expect in lines:
            if in_process(command):
                status, out, err = run_main(command, cwd)
                check(subprocess.CompletedProcess(command, status), command, expect, out, err)
                continue
            done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                                  check=False)
            check(done, command, expect, done.stdout, done.stderr)
    return "\n".join(outputs)


@pytest.mark.slow
def test_every_command_of_the_readme_runs(corpus, tmp_path):
    smaller_demo(corpus, tmp_path / "data" / "demo")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    look_alike_corpora(corpus, tmp_path / "fixtures")
    text = run_blocks(README, tmp_path)
    # own audio: a dev split held out, trained on
    assert (tmp_path / "data" / "mine" / "cuts_dev.jsonl.gz").exists()
    assert (tmp_path / "runs" / "mine" / "checkpoints").is_dir()
    # LibriSpeech and Libri-Light: every part, then bestrq_base on one, two and 1 + 1 processes
    assert {p.name for p in (tmp_path / "data" / "librispeech").glob("cuts_*")} == {
        f"cuts_{p}.jsonl.gz" for p in ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean")}
    assert (tmp_path / "data" / "librilight" / "train" / "cuts.000001.jsonl.gz").exists()  # as shards
    assert "written by 1 process(es), this run has 2" in text  # the torchrun run went on from the 1-GPU run
    assert (tmp_path / "runs" / "librilight" / "checkpoints").is_dir()
    # pre-emption: a checkpoint saved on SIGTERM, then the same command resumed from it
    assert "stopped by SIGTERM" in text and "resuming from" in text
    # probes and the report
    assert (tmp_path / "runs" / "report" / "report.md").exists()
    assert all((tmp_path / "runs" / name / "probe_emotion.json").exists() for name in ("tiny/probes", "random", "fbank"))
    # what the README's comments say the Python examples print
    assert "5 (1, 74, 144) [74]" in text and "640 5" in text
    diff = float(re.search(r"^(\d\.\d+e-\d+|\d\.\d+)$", text, flags=re.MULTILINE).group(1))
    assert diff <= 1e-4
    if ONNX:
        assert "(5, 1, 74, 144) [74]" in text
    else:
        assert "exporting to ONNX needs torch >= 2.6" in text
    assert "after: dev CER" in text and (tmp_path / "runs" / "continued" / "checkpoints").is_dir()
    assert "BEST-RQ (ours)" in text  # the benchmark's table


@pytest.mark.slow
def test_the_libri_light_recipe_of_reproduce_md_runs_on_a_look_alike(corpus, tmp_path):
    """docs/reproduce.md's tested block: Libri-Light as shards, then bestrq_base on 2 processes."""
    look_alike_corpora(corpus, tmp_path / "fixtures")
    text = run_blocks(ROOT / "docs" / "reproduce.md", tmp_path)
    shards = sorted((tmp_path / "data" / "librilight" / "train").glob("recording.*.tar"))
    assert len(shards) >= 4 and (tmp_path / "data" / "librilight" / "dev" / "cuts.000000.jsonl.gz").is_file()
    assert "shards for" not in text  # no warning that the processes share them
    saved = checkpoint.load(checkpoint.latest(tmp_path / "runs" / "librilight"))
    assert [s["rank"] for s in saved.state["loader"]] == [0, 1]  # each process's own position
