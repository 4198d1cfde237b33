"""The README's examples run as written: every fenced block after a ``<!-- tested -->`` marker.

They run in a scratch folder where ``runs/bestrq_tiny`` is a briefly trained bestrq_tiny run,
``data/demo`` the demo corpus and ``examples`` the repository's examples. Shell lines get a
few arguments appended to keep them short (fewer steps); nothing else is changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_export_formats import trained  # noqa: F401 - the module fixture

ROOT = Path(__file__).resolve().parents[1]
# appended to the README's commands so that they finish in seconds (argparse keeps the last value)
FASTER = {
    "bestrq pretrain": ["--set", "train.steps=2", "--set", "train.progress=false", "--set", "data.num_workers=0",
                        "--set", "train.tensorboard=false", "--set", "train.valid_every=0"],
    "python examples/finetune_ctc.py": ["--steps", "3", "--eval-clips", "3", "--batch-seconds", "10"],
}


def readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"<!-- tested -->\n```(\w+)\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_marks_its_examples():
    kinds = [kind for kind, _ in readme_blocks()]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 3


@pytest.mark.slow
def test_readme_examples_run_as_written(trained, corpus, tmp_path):  # noqa: F811
    (tmp_path / "runs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "runs" / "bestrq_tiny").symlink_to(trained)
    (tmp_path / "data" / "demo").symlink_to(corpus)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONWARNINGS": "ignore"}
    outputs = []
    for kind, code in readme_blocks():
        if kind == "python":
            commands = [[sys.executable, "-c", code]]
        else:
            commands = []
            for line in code.splitlines():
                line = line.split("  #")[0].strip()
                if line:
                    words = line.split()
                    words += next((extra for prefix, extra in FASTER.items() if line.startswith(prefix)), [])
                    commands.append([sys.executable if words[0] == "python" else words[0], *words[1:]])
        for command in commands:
            done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, f"{command[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            outputs.append(done.stdout)
    text = "\n".join(outputs)
    assert "5 (1, 74, 144) [74]" in text and "640 5" in text  # what the README's comments say
    assert "(5, 1, 74, 144) [74]" in text
    diff = float(re.search(r"^(\d\.\d+e-\d+|\d\.\d+)$", text, flags=re.MULTILINE).group(1))
    assert diff <= 1e-4
    assert "after: dev CER" in text and (tmp_path / "runs" / "continued" / "checkpoints").is_dir()
